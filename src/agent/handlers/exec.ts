import { stat } from 'node:fs/promises';
import { planCommand, type Action } from '../rules.js';
import type { HandlerContext, Outcome } from './index.js';

/** How much of a command's combined output is reported back. */
export const OUTPUT_TAIL_BYTES = 4096;
/** Used when a rule sets no `timeoutS`: a handler never runs for ever. */
export const DEFAULT_EXEC_TIMEOUT_S = 300;

/**
 * Keeps the last `capacity` bytes written to it, in a fixed buffer: a command that prints gigabytes costs
 * no more memory than one that prints a line.
 */
export class OutputTail {
  readonly #ring: Buffer;
  #pos = 0;
  #full = false;
  #total = 0;

  constructor(capacity = OUTPUT_TAIL_BYTES) {
    this.#ring = Buffer.alloc(capacity);
  }

  /** Bytes written in total (kept or not). */
  get totalBytes(): number {
    return this.#total;
  }

  write(chunk: Uint8Array | string): void {
    const bytes = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    this.#total += bytes.length;
    const cap = this.#ring.length;
    if (bytes.length >= cap) {
      this.#ring.set(bytes.subarray(bytes.length - cap));
      this.#pos = 0;
      this.#full = true;
      return;
    }
    const first = Math.min(bytes.length, cap - this.#pos);
    this.#ring.set(bytes.subarray(0, first), this.#pos);
    this.#ring.set(bytes.subarray(first), 0);
    const end = this.#pos + bytes.length;
    if (end >= cap) this.#full = true;
    this.#pos = end % cap;
  }

  bytes(): Buffer {
    if (!this.#full) return Buffer.from(this.#ring.subarray(0, this.#pos));
    return Buffer.concat([this.#ring.subarray(this.#pos), this.#ring.subarray(0, this.#pos)]);
  }

  /** The kept bytes as text; a UTF-8 sequence cut by the start of the window is dropped, not mangled. */
  text(): string {
    let b = this.bytes();
    if (this.#total > b.length) {
      let skip = 0;
      while (skip < 3 && skip < b.length && (b[skip]! & 0xc0) === 0x80) skip++;
      b = b.subarray(skip);
    }
    return b.toString('utf8');
  }
}

const failed = (code: string, detail: Record<string, unknown>): Outcome => ({ status: 'failed', code, detail });

/** Is `cwd` an existing directory? Checked first so that a missing cwd is not reported as a missing command. */
async function isDirectory(p: string): Promise<boolean> {
  try {
    return (await stat(p)).isDirectory();
  } catch {
    return false;
  }
}

export interface ProcessRun {
  exitCode: number | undefined;
  signal: string | undefined;
  durationMs: number;
  timedOut: boolean;
  cancelled: boolean;
  /** Set when the process never started: `ENOENT` (not found), `EACCES`, ... */
  spawnError: string | undefined;
  output: string;
  outputBytes: number;
  pid: number | undefined;
}

/**
 * Runs a program without a shell, keeping only the tail of its interleaved stdout+stderr. The whole process
 * tree is killed with SIGKILL (process group on POSIX, `taskkill /T /F` on Windows) on timeout or when
 * `signal` aborts. The environment is exactly `env`: nothing of the agent's own leaks in.
 */
export async function runProcess(
  command: string,
  args: readonly string[],
  opts: { env: NodeJS.ProcessEnv; timeoutMs: number; cwd?: string; signal?: AbortSignal },
): Promise<ProcessRun> {
  const tail = new OutputTail();
  // Loaded on first use: an agent that only saves files never pays for it.
  const { execa } = await import('execa');
  const subprocess = execa(command, args, {
    shell: false,
    reject: false,
    buffer: false, // the tail is all we keep
    stdin: 'ignore',
    env: definedOnly(opts.env),
    extendEnv: false,
    ...(opts.cwd !== undefined ? { cwd: opts.cwd } : {}),
    timeout: Math.max(1, Math.round(opts.timeoutMs)),
    killSignal: 'SIGKILL',
    // Spawns the program in its own process group (detached) and signals `-pid`, so that grandchildren
    // (`sh -c 'a & b'`) die with it; taskkill /T /F on Windows.
    killDescendants: true,
    ...(opts.signal ? { cancelSignal: opts.signal } : {}),
    windowsHide: true,
  });
  // Read from stdout and stderr themselves, not from execa's merged `all` stream: execa settles once the
  // process and these two streams have ended, while the merged stream may still hold chunks it has not
  // emitted yet, and a tail read then would lose the last lines.
  const keep = (chunk: Buffer): void => tail.write(chunk);
  subprocess.stdout?.on('data', keep);
  subprocess.stderr?.on('data', keep);
  const result = await subprocess;
  const started = result.exitCode !== undefined || result.signal !== undefined;
  return {
    exitCode: result.exitCode,
    signal: result.signal,
    durationMs: Math.round(result.durationMs),
    timedOut: result.timedOut,
    cancelled: result.isCanceled,
    spawnError:
      started || result.timedOut || result.isCanceled ? undefined : (result.code ?? result.originalMessage ?? 'spawn failed'),
    output: tail.text(),
    outputBytes: tail.totalBytes,
    pid: subprocess.pid,
  };
}

/**
 * Runs the rule's command without a shell (see `runProcess`). The child's environment is exactly `ctx.env`
 * plus DROPWIRE_FILE/NAME/FROM/ID.
 */
export async function runExec(action: Extract<Action, { type: 'exec' }>, ctx: HandlerContext): Promise<Outcome> {
  const plan = planCommand(action, ctx.facts);
  const timeoutS = action.timeoutS ?? DEFAULT_EXEC_TIMEOUT_S;
  const base = { command: plan.command, args: plan.args };
  if (action.cwd !== undefined && !(await isDirectory(action.cwd))) {
    return failed('DW_EXEC_BAD_CWD', { ...base, cwd: action.cwd });
  }
  if (ctx.signal?.aborted) return failed('DW_CANCELLED', { ...base, durationMs: 0 });

  const run = await runProcess(plan.command, plan.args, {
    env: { ...ctx.env, ...plan.env },
    timeoutMs: timeoutS * 1000,
    ...(action.cwd !== undefined ? { cwd: action.cwd } : {}),
    ...(ctx.signal ? { signal: ctx.signal } : {}),
  });
  const { spawnError, cancelled, ...rest } = run;
  const detail: Record<string, unknown> = { ...base, ...rest };
  if (run.timedOut) return failed('DW_EXEC_TIMEOUT', { ...detail, timeoutS });
  if (cancelled) return failed('DW_CANCELLED', detail);
  if (spawnError !== undefined) {
    return failed(spawnError === 'ENOENT' ? 'DW_EXEC_NOT_FOUND' : 'DW_EXEC_FAILED', { ...detail, error: spawnError });
  }
  if (run.exitCode === 0) return { status: 'handled', detail };
  return failed('DW_EXEC_FAILED', detail);
}

/** Drops `undefined` values (NodeJS.ProcessEnv allows them; execa's env does not). */
export function definedOnly(env: NodeJS.ProcessEnv): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) if (v !== undefined) out[k] = v;
  return out;
}

/**
 * Variables a handler's child may need from the agent's own environment (and `LC_*`): README "Agent" lists
 * exactly these, and a test holds the two together. Everything else (tokens, proxies, DROPWIRE_HOME, the
 * agent's config paths) stays out unless the agent passes it in `ctx.env` on purpose.
 */
export const BASE_ENV_KEYS: readonly string[] = [
  'PATH', 'HOME', 'USER', 'LOGNAME', 'SHELL', 'LANG', 'LANGUAGE', 'TZ', 'TMPDIR', 'TERM',
  'DISPLAY', 'WAYLAND_DISPLAY', 'XAUTHORITY', 'XDG_RUNTIME_DIR', 'XDG_DATA_DIRS', 'XDG_CONFIG_DIRS',
  'XDG_CURRENT_DESKTOP', 'XDG_SESSION_TYPE', 'DBUS_SESSION_BUS_ADDRESS', 'CUPS_SERVER',
  // Windows (matched case-insensitively)
  'SYSTEMROOT', 'WINDIR', 'COMSPEC', 'PATHEXT', 'TEMP', 'TMP', 'USERPROFILE', 'USERNAME', 'APPDATA',
  'LOCALAPPDATA', 'PROGRAMDATA', 'PROGRAMFILES', 'PROGRAMFILES(X86)', 'COMMONPROGRAMFILES', 'SYSTEMDRIVE',
  'PSMODULEPATH',
];

/** The allow-listed part of `source` (LC_* included); what handlers use when `ctx.env` is not given. */
export function baseEnv(source: NodeJS.ProcessEnv = process.env): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(source)) {
    if (v === undefined) continue;
    const key = k.toUpperCase();
    if (BASE_ENV_KEYS.includes(key) || key.startsWith('LC_')) out[k] = v;
  }
  return out;
}
