import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { writeAtomic } from './apply.js';
import { hostPlatform, SYSTEMD_UNIT, type Platform } from './locations.js';
import { dropInFile, renderSaveDirsDropIn, underRoot, unitFile } from './plan.js';

export interface SaveDirsOptions {
  /** Install root the unit was written into (`service install --root`); no command is run then. */
  root?: string;
  /** Default: this machine's. Only Linux has the drop-in. */
  platform?: Platform;
  /** After a change: `systemctl daemon-reload` and `systemctl try-restart` (default true; never with root). */
  reload?: boolean;
}

export interface SaveDirsResult {
  /** The drop-in now differs from before and was written. */
  changed: boolean;
  /** systemd was reloaded and a running agent restarted, so the new folders are writable now. */
  reloaded: boolean;
  /** The drop-in file (target path), when a system unit for this home is installed. */
  file?: string;
  /** Why nothing was done: no unit installed, a unit for another home, not Linux. */
  skipped?: string;
  /** What the operator still has to run (when not root). */
  hint?: string;
}

/**
 * Keeps `dropwire-agent.service.d/save-dirs.conf` (one `ReadWritePaths=-DIR` per save folder) in step with
 * the rules, so that the sandboxed system service (ProtectSystem=strict) may write into them. Call it
 * after every rule change with every `save` rule's folder; it does nothing unless a system unit serving
 * `home` is installed, and nothing when the folders are unchanged. The mount namespace is set up at start,
 * so a change restarts a running agent (`try-restart`: a stopped one stays stopped).
 */
export async function updateSaveDirsDropIn(home: string, dirs: readonly string[], opts: SaveDirsOptions = {}): Promise<SaveDirsResult> {
  const platform = opts.platform ?? hostPlatform();
  if (platform !== 'linux') return { changed: false, reloaded: false, skipped: 'only systemd units have the save-folder drop-in' };
  const t = { scope: 'system' as const, role: 'agent' as const, userHome: '' };
  const unit = underRoot(unitFile(t), opts.root, platform);
  let text: string;
  try {
    text = fs.readFileSync(unit, 'utf8');
  } catch {
    return { changed: false, reloaded: false, skipped: `no system unit installed (${unitFile(t)})` };
  }
  const served = unitHome(text);
  const want = path.posix.resolve(home);
  if (served !== want) return { changed: false, reloaded: false, skipped: `the installed unit serves ${served ?? 'another folder'}, not ${want}` };
  const target = dropInFile(t);
  const file = underRoot(target, opts.root, platform);
  const content = renderSaveDirsDropIn(want, dirs);
  let before: string | undefined;
  try {
    before = fs.readFileSync(file, 'utf8');
  } catch {
    before = undefined;
  }
  if (before === content) return { changed: false, reloaded: false, file: target };
  const hint = `sudo systemctl daemon-reload && sudo systemctl try-restart ${SYSTEMD_UNIT.agent}`;
  try {
    writeAtomic(file, content, 0o644);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'EACCES' && code !== 'EPERM') throw err;
    return { changed: false, reloaded: false, file: target, skipped: `cannot write ${target} (${code})`, hint: `sudo dropwire service install (rewrites ${target})` };
  }
  if (opts.root || opts.reload === false) return { changed: true, reloaded: false, file: target };
  if (process.getuid?.() !== 0) return { changed: true, reloaded: false, file: target, hint };
  for (const argv of [['systemctl', 'daemon-reload'], ['systemctl', 'try-restart', SYSTEMD_UNIT.agent]]) {
    const r = spawnSync(argv[0]!, argv.slice(1), { stdio: 'ignore' });
    if (r.error || r.status !== 0) return { changed: true, reloaded: false, file: target, hint };
  }
  return { changed: true, reloaded: true, file: target };
}

/** The DROPWIRE_HOME a rendered unit sets (`Environment=DROPWIRE_HOME=…`, possibly quoted). */
export function unitHome(unitText: string): string | undefined {
  for (const line of unitText.split('\n')) {
    const m = /^Environment=(.*)$/.exec(line.trim());
    if (!m) continue;
    const v = unquote(m[1]!);
    if (v.startsWith('DROPWIRE_HOME=')) return v.slice('DROPWIRE_HOME='.length).replace(/%%/g, '%');
  }
  return undefined;
}

function unquote(v: string): string {
  if (!v.startsWith('"') || !v.endsWith('"')) return v;
  return v.slice(1, -1).replace(/\\(.)/g, '$1');
}
