import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { paths } from '../agent/config.js';
import { askAgent } from '../agent/control.js';
import { DropwireError } from '../shared/errors.js';
import { logFiles, type LogTarget } from '../shared/log.js';
import { unitHome } from './dropin.js';
import { currentUser, hostPlatform, SYSTEMD_UNIT } from './locations.js';
import { unitFile } from './plan.js';

/**
 * `dropwire logs`: the agent's JSON log lines, filtered and shown readable (or as they are with --json),
 * from the rotated file in the agent home or, when the agent runs under systemd, from the journal.
 */

export const LEVELS = { trace: 10, debug: 20, info: 30, warn: 40, error: 50, fatal: 60 } as const;
export type LevelName = keyof typeof LEVELS;
/** How often a followed file is checked for new lines and rotation. */
export const FOLLOW_POLL_MS = 100;

export type LogSource = { kind: 'file'; file: string } | { kind: 'journal'; unit: string; user: boolean };

export interface LogsOptions {
  follow: boolean;
  /** The last N matching lines first (then new ones with follow). */
  lines: number;
  json: boolean;
  level?: LevelName;
  id?: string;
  out: (line: string) => void;
  signal?: AbortSignal;
}

/** Where the agent with this home logs: ask it; else its unit (journal) or the file it left. */
export async function findLogSource(home: string): Promise<LogSource> {
  try {
    const st = await askAgent(home, { op: 'status' }, 1500);
    const log = st.log as LogTarget | undefined;
    if (log?.to === 'file') return { kind: 'file', file: log.file };
    if (log?.to === 'journal') return { kind: 'journal', unit: log.unit ?? SYSTEMD_UNIT.agent, user: log.user ?? false };
    if (log?.to === 'stdout') throw new DropwireError('DW_NO_LOG', `the agent for ${home} logs to its standard output only (DROPWIRE_LOG=stdout)`);
  } catch (err) {
    if (err instanceof DropwireError && err.code === 'DW_NO_LOG') throw err;
    // not running (or not answering): look at what is installed and on disk
  }
  if (hostPlatform() === 'linux') {
    for (const scope of ['system', 'user'] as const) {
      const file = unitFile({ scope, role: 'agent', userHome: currentUser().home });
      try {
        if (unitHome(fs.readFileSync(file, 'utf8')) === path.resolve(home)) return { kind: 'journal', unit: SYSTEMD_UNIT.agent, user: scope === 'user' };
      } catch {
        // not installed in this scope
      }
    }
  }
  const file = paths(home).log;
  if (logFiles(file).length) return { kind: 'file', file };
  throw new DropwireError('DW_NO_LOG', `no log for the agent in ${home}: it has not run there yet (expected ${file})`);
}

export async function showLogs(source: LogSource, o: LogsOptions): Promise<void> {
  if (source.kind === 'file') return tailFile(source.file, o);
  return tailJournal(source, o);
}

// --- lines -------------------------------------------------------------------------------------------

type Line = { raw: string; obj?: Record<string, unknown> };

function parse(raw: string): Line {
  if (!raw.startsWith('{')) return { raw };
  try {
    return { raw, obj: JSON.parse(raw) as Record<string, unknown> };
  } catch {
    return { raw };
  }
}

/** A line passes when it meets --level and --id; a line that is not JSON passes only without filters. */
export function matches(l: Line, o: Pick<LogsOptions, 'level' | 'id'>): boolean {
  if (!o.level && !o.id) return true;
  if (!l.obj) return false;
  if (o.level && !(typeof l.obj.level === 'number' && l.obj.level >= LEVELS[o.level])) return false;
  if (o.id && l.obj.id !== o.id && !(Array.isArray(l.obj.ids) && l.obj.ids.includes(o.id))) return false;
  return true;
}

const LEVEL_NAMES = new Map<number, string>(Object.entries(LEVELS).map(([k, v]) => [v, k.toUpperCase()]));
const HIDDEN = new Set(['level', 'time', 'msg', 'pid', 'hostname', 'v']);
/** pino's logger names; a `name` field with another value is data (a file name) and is shown. */
const LOGGER_NAMES = new Set(['agent', 'relay']);

/** `2025-01-02T03:04:05.678Z INFO  message handled  id=… status=handled savedAs=…` */
export function readable(l: Line): string {
  const o = l.obj;
  if (!o) return l.raw;
  const level = typeof o.level === 'number' ? (LEVEL_NAMES.get(o.level) ?? String(o.level)) : '?';
  const fields: string[] = [];
  for (const [k, v] of Object.entries(o)) {
    if (HIDDEN.has(k) || v === undefined || (k === 'name' && LOGGER_NAMES.has(v as string))) continue;
    if (k === 'err' && v && typeof v === 'object') {
      const e = v as { code?: unknown; message?: unknown; type?: unknown };
      fields.push(`err=${JSON.stringify([e.code, e.message ?? e.type].filter(Boolean).join(': '))}`);
      continue;
    }
    fields.push(`${k}=${typeof v === 'string' && /^[^\s"=]+$/.test(v) ? v : JSON.stringify(v)}`);
  }
  const time = typeof o.time === 'string' ? o.time : typeof o.time === 'number' ? new Date(o.time).toISOString() : '';
  return `${time} ${level.padEnd(5)} ${o.msg ?? ''}${fields.length ? '  ' + fields.join(' ') : ''}`;
}

class Printer {
  private readonly o: LogsOptions;
  private ring: Line[] = [];
  private live = false;
  constructor(o: LogsOptions) {
    this.o = o;
  }
  push(raw: string): void {
    if (raw === '') return;
    const l = parse(raw);
    if (!matches(l, this.o)) return;
    if (this.live) return this.print(l);
    this.ring.push(l);
    if (this.ring.length > this.o.lines) this.ring.shift();
  }
  /** Prints the backlog (last N); later lines print as they come. */
  goLive(): void {
    for (const l of this.ring) this.print(l);
    this.ring = [];
    this.live = true;
  }
  private print(l: Line): void {
    this.o.out(this.o.json ? l.raw : readable(l));
  }
}

// --- file --------------------------------------------------------------------------------------------

async function readLines(file: string, each: (raw: string) => void): Promise<void> {
  let stream: fs.ReadStream;
  try {
    stream = fs.createReadStream(file, { encoding: 'utf8' });
    await new Promise<void>((resolve, reject) => stream.once('open', () => resolve()).once('error', reject));
  } catch {
    return; // rotated away meanwhile
  }
  for await (const raw of readline.createInterface({ input: stream, crlfDelay: Infinity })) each(raw);
}

/** Like `tail -n N [-F]` over `file.K` … `file.1`, `file`, following renames (rotation) and truncation. */
export async function tailFile(file: string, o: LogsOptions): Promise<void> {
  const p = new Printer(o);
  let fd: number | undefined;
  let ino = 0n;
  let pos = 0;
  let partial = '';
  const openCurrent = () => {
    try {
      fd = fs.openSync(file, 'r');
      ino = fs.fstatSync(fd, { bigint: true }).ino;
      pos = 0;
      partial = '';
    } catch {
      fd = undefined;
    }
  };
  const drain = () => {
    if (fd === undefined) return;
    const buf = Buffer.alloc(64 * 1024);
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, pos);
      if (n <= 0) break;
      pos += n;
      partial += buf.toString('utf8', 0, n);
      const lines = partial.split('\n');
      partial = lines.pop()!;
      for (const l of lines) p.push(l.replace(/\r$/, ''));
    }
  };
  // Open the live file first, so that a rotation during the backlog read loses nothing.
  openCurrent();
  for (const f of logFiles(file)) if (f !== file && (fd === undefined || inode(f) !== ino)) await readLines(f, (l) => p.push(l));
  drain();
  if (!o.follow) {
    if (partial) p.push(partial);
    p.goLive();
    if (fd !== undefined) fs.closeSync(fd);
    return;
  }
  p.goLive();
  try {
    while (!o.signal?.aborted) {
      await sleep(FOLLOW_POLL_MS, o.signal);
      drain();
      let st: fs.BigIntStats | undefined;
      try {
        st = fs.statSync(file, { bigint: true });
      } catch {
        st = undefined;
      }
      if (st && (fd === undefined || st.ino !== ino)) {
        // Rotated: finish the old file (now file.1 or older), then the files rotated after it since the
        // last look (several rotations may fall between two polls), then the new file from its start.
        drain();
        if (partial) p.push(partial);
        if (fd !== undefined) {
          fs.closeSync(fd);
          const files = logFiles(file).slice(0, -1);
          const at = files.findIndex((f) => inode(f) === ino);
          if (at >= 0) for (const f of files.slice(at + 1)) for (const l of readSafe(f).split('\n')) p.push(l.replace(/\r$/, ''));
        }
        openCurrent();
        drain();
      } else if (st && fd !== undefined && st.size < BigInt(pos)) {
        pos = 0; // truncated
        partial = '';
        drain();
      }
    }
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

function inode(file: string): bigint | undefined {
  try {
    return fs.statSync(file, { bigint: true }).ino;
  } catch {
    return undefined;
  }
}

function readSafe(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}

// --- journal -----------------------------------------------------------------------------------------

/**
 * The journal of the agent's unit: `journalctl -o json` for the backlog (MESSAGE is the JSON line the agent
 * wrote), then, with follow, `journalctl -f --after-cursor=` from the last entry shown, so nothing is lost
 * or repeated between the two. `command` is replaceable for tests.
 */
export async function tailJournal(source: Extract<LogSource, { kind: 'journal' }>, o: LogsOptions, command = 'journalctl'): Promise<void> {
  const p = new Printer(o);
  const base = [...(source.user ? ['--user'] : []), '-u', source.unit, '-o', 'json', '--no-pager'];
  let cursor: string | undefined;
  const each = (raw: string) => {
    const e = parseJournal(raw);
    if (!e) return;
    if (e.cursor) cursor = e.cursor;
    if (e.message !== undefined) for (const line of e.message.split('\n')) p.push(line);
  };
  const filtered = Boolean(o.level || o.id);
  await runJournal(command, [...base, ...(filtered ? [] : ['-n', String(o.lines)])], each, o.signal);
  p.goLive();
  if (!o.follow || o.signal?.aborted) return;
  await runJournal(command, [...base, '-f', ...(cursor ? [`--after-cursor=${cursor}`] : ['-n', '0'])], each, o.signal);
}

export function parseJournal(raw: string): { cursor?: string; message?: string } | undefined {
  let e: Record<string, unknown>;
  try {
    e = JSON.parse(raw) as Record<string, unknown>;
  } catch {
    return undefined;
  }
  const m = e.MESSAGE;
  // journalctl shows a MESSAGE that is not valid UTF-8 as an array of byte values.
  const message = typeof m === 'string' ? m : Array.isArray(m) ? Buffer.from(m as number[]).toString('utf8') : undefined;
  return { ...(typeof e.__CURSOR === 'string' ? { cursor: e.__CURSOR } : {}), ...(message !== undefined ? { message } : {}) };
}

function runJournal(command: string, args: string[], each: (raw: string) => void, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
    const rl = readline.createInterface({ input: child.stdout!, crlfDelay: Infinity });
    rl.on('line', each);
    const onAbort = () => child.kill('SIGTERM');
    signal?.addEventListener('abort', onAbort, { once: true });
    child.once('error', (err: NodeJS.ErrnoException) => {
      signal?.removeEventListener('abort', onAbort);
      reject(new DropwireError('DW_NO_LOG', err.code === 'ENOENT' ? `the agent logs to the journal, but ${command} is not installed` : `${command}: ${err.message}`, { cause: err }));
    });
    child.once('close', (code, sig) => {
      signal?.removeEventListener('abort', onAbort);
      if (code === 0 || signal?.aborted || sig) resolve();
      else reject(new DropwireError('DW_NO_LOG', `${command} ${args.join(' ')} exited ${code}: ${stderr.trim()}`));
    });
  });
}
