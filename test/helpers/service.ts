import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/** A small, strict XML reader for the rendered plist and WinSW files (elements, attributes, text, entities). */
export interface XmlElement {
  name: string;
  attrs: Record<string, string>;
  children: XmlElement[];
  text: string;
}

const ENTITIES: Record<string, string> = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" };

function decode(s: string): string {
  return s.replace(/&(#x[0-9a-f]+|#\d+|\w+);/gi, (m, e: string) => {
    if (e[0] === '#') return String.fromCodePoint(e[1] === 'x' || e[1] === 'X' ? parseInt(e.slice(2), 16) : parseInt(e.slice(1), 10));
    const v = ENTITIES[e];
    if (v === undefined) throw new Error(`unknown entity ${m}`);
    return v;
  });
}

export function parseXml(src: string): XmlElement {
  let i = 0;
  const skipMisc = () => {
    for (;;) {
      while (i < src.length && /\s/.test(src[i]!)) i++;
      if (src.startsWith('<?', i)) i = src.indexOf('?>', i) + 2;
      else if (src.startsWith('<!--', i)) {
        const end = src.indexOf('-->', i);
        if (end < 0) throw new Error('unterminated comment');
        if (src.slice(i + 4, end).includes('--')) throw new Error('"--" inside a comment');
        i = end + 3;
      } else if (src.startsWith('<!DOCTYPE', i)) i = src.indexOf('>', i) + 1;
      else return;
    }
  };
  const element = (): XmlElement => {
    const m = /^<([A-Za-z_][\w.-]*)/.exec(src.slice(i));
    if (!m) throw new Error(`expected an element at ${i}: ${src.slice(i, i + 30)}`);
    const name = m[1]!;
    i += m[0].length;
    const attrs: Record<string, string> = {};
    for (;;) {
      const a = /^\s+([A-Za-z_][\w.-]*)\s*=\s*"([^"<]*)"/.exec(src.slice(i));
      if (!a) break;
      if (a[1]! in attrs) throw new Error(`duplicate attribute ${a[1]}`);
      attrs[a[1]!] = decode(a[2]!);
      i += a[0].length;
    }
    while (/\s/.test(src[i]!)) i++;
    if (src.startsWith('/>', i)) {
      i += 2;
      return { name, attrs, children: [], text: '' };
    }
    if (src[i] !== '>') throw new Error(`bad tag ${name} at ${i}`);
    i++;
    const children: XmlElement[] = [];
    let text = '';
    for (;;) {
      if (i >= src.length) throw new Error(`unclosed <${name}>`);
      if (src.startsWith('<!--', i)) {
        const end = src.indexOf('-->', i);
        i = end + 3;
      } else if (src.startsWith('</', i)) {
        const close = /^<\/([\w.-]+)\s*>/.exec(src.slice(i));
        if (!close || close[1] !== name) throw new Error(`</${close?.[1]}> does not close <${name}>`);
        i += close[0].length;
        return { name, attrs, children, text: decode(text) };
      } else if (src[i] === '<') children.push(element());
      else {
        const next = src.indexOf('<', i);
        text += src.slice(i, next);
        i = next;
      }
    }
  };
  skipMisc();
  const root = element();
  skipMisc();
  if (i !== src.length) throw new Error(`content after the root element: ${src.slice(i, i + 30)}`);
  return root;
}

export type PlistValue = string | number | boolean | PlistValue[] | { [k: string]: PlistValue };

/** A plist document (Apple's XML format) as a plain value; rejects what launchd would reject. */
export function parsePlist(src: string): PlistValue {
  const root = parseXml(src);
  if (root.name !== 'plist' || root.attrs.version !== '1.0' || root.children.length !== 1) throw new Error('not a plist 1.0 document');
  const value = (e: XmlElement): PlistValue => {
    switch (e.name) {
      case 'string':
        return e.text;
      case 'integer':
        if (!/^-?\d+$/.test(e.text.trim())) throw new Error(`bad integer ${e.text}`);
        return Number(e.text);
      case 'true':
        return true;
      case 'false':
        return false;
      case 'array':
        return e.children.map(value);
      case 'dict': {
        const out: Record<string, PlistValue> = {};
        const c = e.children;
        if (c.length % 2) throw new Error('dict with an odd number of children');
        for (let k = 0; k < c.length; k += 2) {
          if (c[k]!.name !== 'key') throw new Error(`dict: expected <key>, got <${c[k]!.name}>`);
          if (c[k]!.text in out) throw new Error(`dict: duplicate key ${c[k]!.text}`);
          out[c[k]!.text] = value(c[k + 1]!);
        }
        return out;
      }
      default:
        throw new Error(`unknown plist element <${e.name}>`);
    }
  };
  return value(root.children[0]!);
}

export function child(e: XmlElement, name: string): XmlElement {
  const found = e.children.filter((c) => c.name === name);
  if (found.length !== 1) throw new Error(`<${e.name}> has ${found.length} <${name}>`);
  return found[0]!;
}

/** Why `systemd-analyze` tests cannot run here, or undefined when they can. */
export function systemdAnalyzeUnavailable(): string | undefined {
  if (process.platform !== 'linux') return 'systemd-analyze exists only on Linux';
  const r = spawnSync('systemd-analyze', ['--version'], { encoding: 'utf8' });
  if (r.error || r.status !== 0) return 'systemd-analyze is not installed (apt-get install systemd; .ci/run does)';
  return undefined;
}

/** `systemd-analyze [--user] verify FILE`: exit code and everything it printed (warnings come with exit 0). */
export function systemdVerify(file: string, user = false): { code: number; output: string } {
  const env = { ...process.env, ...(user ? { XDG_RUNTIME_DIR: runtimeDir() } : {}) };
  const r = spawnSync('systemd-analyze', [...(user ? ['--user'] : []), 'verify', file], { encoding: 'utf8', env, timeout: 60_000 });
  return { code: r.status ?? 1, output: `${r.stdout ?? ''}${r.stderr ?? ''}`.trim() };
}

/** The overall exposure score of `systemd-analyze security --offline=yes FILE`. */
export function systemdExposure(file: string, user = false): { score: number; verdict: string; output: string } {
  const env = { ...process.env, ...(user ? { XDG_RUNTIME_DIR: runtimeDir() } : {}) };
  const r = spawnSync('systemd-analyze', [...(user ? ['--user'] : []), 'security', '--offline=yes', '--no-pager', file], { encoding: 'utf8', env, timeout: 60_000 });
  const out = `${r.stdout ?? ''}${r.stderr ?? ''}`;
  const m = /Overall exposure level for \S+: ([\d.]+) (\w+)/.exec(out);
  if (!m) throw new Error(`no exposure score in: ${out.slice(-2000)}`);
  return { score: Number(m[1]), verdict: m[2]!, output: out };
}

let runtime: string | undefined;
function runtimeDir(): string {
  // `--user` mode wants an XDG_RUNTIME_DIR even offline.
  runtime ??= fs.mkdtempSync(path.join(os.tmpdir(), 'dw-xdg-'));
  fs.chmodSync(runtime, 0o700);
  return runtime;
}

/** Every file and folder under `root`, as sorted relative paths (folders end with '/'). */
export function listTree(root: string): string[] {
  const out: string[] = [];
  const walk = (dir: string) => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const rel = path.relative(root, path.join(dir, e.name));
      if (e.isDirectory()) {
        out.push(rel + '/');
        walk(path.join(dir, e.name));
      } else out.push(rel);
    }
  };
  walk(root);
  return out.sort();
}

/** The `write PATH … <<EOF … EOF` blocks of a --dry-run output, by path. */
export function dryRunFiles(out: string): Map<string, string> {
  const files = new Map<string, string>();
  const lines = out.split('\n');
  for (let k = 0; k < lines.length; k++) {
    const m = /^write (.+?)(?: \(mode \d+\))? <<(EOF_*)$/.exec(lines[k]!);
    if (!m) continue;
    const end = lines.indexOf(m[2]!, k + 1);
    files.set(m[1]!, lines.slice(k + 1, end).join('\n') + '\n');
    k = end;
  }
  return files;
}

/** The `run: …` lines of a --dry-run output, without their `# why` comments. */
export function dryRunCommands(out: string): string[] {
  return out
    .split('\n')
    .filter((l) => l.startsWith('run: '))
    .map((l) => l.slice(5).replace(/ {3}# .*$/, ''));
}
