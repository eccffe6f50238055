import fs from 'node:fs';
import path from 'node:path';
import { pino, type Logger } from 'pino';

export type { Logger };

/** Rotate the log file once it would grow past this many bytes (DROPWIRE_LOG_MAX_MB overrides). */
export const LOG_ROTATE_BYTES = 10 * 1024 * 1024;
/** Rotated files kept besides the live one: `agent.log.1` (newest) … `agent.log.5` (DROPWIRE_LOG_KEEP). */
export const LOG_KEEP_FILES = 5;

/** Where log lines go: 1 is stdout; a path is a size-rotated file; or a file with a copy on stdout. */
export type LogDestination = 1 | string | { file: string; stdout?: boolean; maxBytes?: number; keep?: number };

interface LineSink {
  write(line: string): boolean;
}

/**
 * JSON-lines logs (pino). `destination` is 1 for stdout, a file path (size-rotated), or a file with a copy
 * on stdout; level from DROPWIRE_LOG_LEVEL. Stdout becomes the rotated file DROPWIRE_LOG_FILE when
 * DROPWIRE_LOG=file (how a launchd plist gives the relay a rotated log). Every message's life is logged
 * with `id` so that `dropwire logs --id` can follow one message.
 */
export function createLogger(name: string, destination: LogDestination = 1, level = process.env.DROPWIRE_LOG_LEVEL ?? 'info'): Logger {
  if (destination === 1 && process.env.DROPWIRE_LOG === 'file' && process.env.DROPWIRE_LOG_FILE) destination = process.env.DROPWIRE_LOG_FILE;
  return pino({ name, level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime }, sink(destination));
}

function sink(destination: LogDestination): LineSink {
  if (destination === 1) return pino.destination({ dest: 1, sync: true });
  const o = typeof destination === 'string' ? { file: destination } : destination;
  const file = new RotatingFile(o.file, { ...(o.maxBytes ? { maxBytes: o.maxBytes } : {}), ...(o.keep !== undefined ? { keep: o.keep } : {}) });
  if (!o.stdout) return file;
  const out = pino.destination({ dest: 1, sync: true });
  return {
    write(line) {
      file.write(line);
      return out.write(line);
    },
  };
}

/** A logger that drops everything (tests, libraries used without a log). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}

/**
 * An append-only log file rotated by size: when a line would take `file` past `maxBytes`, `file.K-1` →
 * `file.K`, …, `file` → `file.1`, and a new `file` starts. Writes are synchronous so that the last lines
 * before a crash are on disk and in order; `dropwire logs` reads `file.K` … `file.1`, `file` in that order.
 * Written here rather than taken from pino-roll / rotating-file-stream: those run in a worker thread or
 * rotate asynchronously and name files by date or counter that grows, while this is 60 lines with exactly
 * the naming the reader relies on. A write error (disk full) never throws into the agent: the line is
 * dropped, one warning goes to stderr, and the file is reopened on the next write.
 */
export class RotatingFile implements LineSink {
  readonly file: string;
  readonly maxBytes: number;
  readonly keep: number;
  private fd: number | undefined;
  private size = 0;
  private warned = false;

  constructor(file: string, o: { maxBytes?: number; keep?: number } = {}) {
    this.file = path.resolve(file);
    this.maxBytes = Math.max(1024, o.maxBytes ?? envNumber('DROPWIRE_LOG_MAX_MB', LOG_ROTATE_BYTES / 1024 / 1024) * 1024 * 1024);
    this.keep = Math.max(0, Math.floor(o.keep ?? envNumber('DROPWIRE_LOG_KEEP', LOG_KEEP_FILES)));
  }

  write(line: string): boolean {
    try {
      const bytes = Buffer.from(line);
      if (this.fd === undefined) this.open();
      if (this.size > 0 && this.size + bytes.length > this.maxBytes) this.rotate();
      fs.writeSync(this.fd!, bytes);
      this.size += bytes.length;
      this.warned = false;
    } catch (err) {
      this.closeFd();
      if (!this.warned) process.stderr.write(`dropwire: cannot write the log file ${this.file}: ${(err as Error).message}\n`);
      this.warned = true;
    }
    return true;
  }

  /** Shifts the files by one and starts a new, empty `file`. */
  rotate(): void {
    this.closeFd();
    const at = (i: number) => (i === 0 ? this.file : `${this.file}.${i}`);
    if (this.keep === 0) fs.rmSync(this.file, { force: true });
    else {
      fs.rmSync(at(this.keep), { force: true });
      for (let i = this.keep - 1; i >= 0; i--) if (fs.existsSync(at(i))) fs.renameSync(at(i), at(i + 1));
    }
    this.open();
  }

  close(): void {
    this.closeFd();
  }

  private open(): void {
    fs.mkdirSync(path.dirname(this.file), { recursive: true });
    this.fd = fs.openSync(this.file, 'a', 0o600);
    this.size = fs.fstatSync(this.fd).size;
  }

  private closeFd(): void {
    if (this.fd === undefined) return;
    try {
      fs.closeSync(this.fd);
    } catch {
      // already gone
    }
    this.fd = undefined;
  }
}

/** `file.K` … `file.1`, `file`: the rotated log files that exist, oldest first. */
export function logFiles(file: string, keep = 64): string[] {
  const out: string[] = [];
  for (let i = keep; i >= 1; i--) if (fs.existsSync(`${file}.${i}`)) out.push(`${file}.${i}`);
  if (fs.existsSync(file)) out.push(file);
  return out;
}

/**
 * True when stdout goes to systemd: JOURNAL_STREAM names stdout's device:inode (systemd.exec(5): a child
 * whose stdout was redirected inherits the variable, so it must match), or INVOCATION_ID is set and stdout
 * is not a terminal (another StandardOutput= of a unit).
 */
export function underSystemd(env: NodeJS.ProcessEnv = process.env, fd = 1): boolean {
  if (env.JOURNAL_STREAM) {
    try {
      const st = fs.fstatSync(fd, { bigint: true });
      return env.JOURNAL_STREAM === `${st.dev}:${st.ino}`;
    } catch {
      return false;
    }
  }
  return Boolean(env.INVOCATION_ID) && !process.stdout.isTTY;
}

/** The systemd unit this process runs in, from /proc/self/cgroup (`…/dropwire-agent.service`). */
export function systemdUnit(): { unit: string; user: boolean } | undefined {
  try {
    const line = fs.readFileSync('/proc/self/cgroup', 'utf8').split('\n').find((l) => l.startsWith('0::')) ?? '';
    const parts = line.slice(3).split('/');
    const unit = [...parts].reverse().find((p) => p.endsWith('.service'));
    if (!unit || unit.startsWith('user@')) return undefined;
    return { unit, user: parts.some((p) => p.startsWith('user@')) };
  } catch {
    return undefined;
  }
}

/** Where a long-running process logs, as `dropwire status` and `dropwire logs` describe it. */
export type LogTarget = { to: 'journal'; unit?: string; user?: boolean } | { to: 'stdout' } | { to: 'file'; file: string; stdout: boolean };

/**
 * The agent's (or relay's) log destination. DROPWIRE_LOG picks one: `journal`/`stdout` (stdout only),
 * `file` (the rotated file only). Unset: stdout under systemd (the journal keeps it); elsewhere the
 * rotated file (DROPWIRE_LOG_FILE, else `defaultFile`) with a copy on stdout for a foreground run.
 */
export function chooseLogTarget(defaultFile: string, env: NodeJS.ProcessEnv = process.env): LogTarget {
  const file = env.DROPWIRE_LOG_FILE ? path.resolve(env.DROPWIRE_LOG_FILE) : defaultFile;
  const mode = env.DROPWIRE_LOG ?? '';
  if (mode === 'stdout') return { to: 'stdout' };
  if (mode === 'file') return { to: 'file', file, stdout: false };
  if (mode === 'journal' || (mode === '' && underSystemd(env))) {
    const u = systemdUnit();
    return { to: 'journal', ...(u ? { unit: u.unit, user: u.user } : {}) };
  }
  return { to: 'file', file, stdout: true };
}

export function destinationOf(target: LogTarget): LogDestination {
  return target.to === 'file' ? { file: target.file, stdout: target.stdout } : 1;
}

function envNumber(name: string, fallback: number): number {
  const v = Number(process.env[name]);
  return Number.isFinite(v) && v > 0 ? v : fallback;
}
