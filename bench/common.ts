/**
 * Small helpers shared by the bench runner and its child processes: a system-wide monotonic clock, /proc
 * sampling, deterministic device keys, a request/answer protocol over the fork() IPC channel, bounded
 * waits. Nothing here touches dropwire's state.
 */
import { execFileSync, fork, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import type { CryptoBackend, KeyPair } from '../src/protocol/crypto.js';

/**
 * Milliseconds on CLOCK_MONOTONIC (what process.hrtime reads): the same clock in every process of the
 * machine, so a publish time taken in one process and a receipt time taken in another can be subtracted.
 */
export function hrNow(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `check` every `intervalMs` until it returns true or `timeoutMs` passes; resolves to whether it did. */
export async function waitFor(check: () => boolean | Promise<boolean>, timeoutMs: number, intervalMs = 20): Promise<boolean> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return true;
    if (Date.now() >= until) return false;
    await sleep(intervalMs);
  }
}

export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

// --- /proc ------------------------------------------------------------------------------------------

let clockTicks: number | undefined;

/** Clock ticks per second of /proc/PID/stat's utime and stime. */
export function clkTck(): number {
  if (clockTicks === undefined) {
    try {
      clockTicks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      clockTicks = 100;
    }
  }
  return clockTicks;
}

export interface ProcSample {
  /** Resident set size (VmRSS) in KiB. */
  rssKiB: number;
  /** User + system CPU seconds used so far. */
  cpuS: number;
  at: number;
}

/** RSS and CPU time of a process from /proc; undefined when it is gone. */
export function sampleProc(pid: number): ProcSample | undefined {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const rss = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name (which may contain spaces) start after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const utime = Number(fields[11]);
    const stime = Number(fields[12]);
    return { rssKiB: rss ? Number(rss[1]) : 0, cpuS: (utime + stime) / clkTck(), at: hrNow() };
  } catch {
    return undefined;
  }
}

/** CPU use of a process between two samples, in percent of one core. */
export function cpuPercent(a: ProcSample | undefined, b: ProcSample | undefined): number {
  if (!a || !b || b.at <= a.at) return Number.NaN;
  return (100 * (b.cpuS - a.cpuS)) / ((b.at - a.at) / 1000);
}

/**
 * CPU seconds used by the whole machine and by this bench (every process in this process group: the
 * runner, its children, Mosquitto). The difference is someone else's load, which skews every figure on a
 * 2-core machine, so it is reported with them.
 */
export function sampleMachine(): { busyS: number; oursS: number; at: number } {
  const at = hrNow();
  let busyS = Number.NaN;
  try {
    const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal: busy is all but idle and iowait.
    const total = f.slice(0, 8).reduce((a, b) => a + b, 0);
    busyS = (total - f[3]! - f[4]!) / clkTck();
  } catch {
    // not Linux
  }
  let oursS = 0;
  const pgrp = ownProcessGroup();
  for (const name of safeReaddir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[2]) !== pgrp) continue;
      oursS += (Number(fields[11]) + Number(fields[12])) / clkTck();
    } catch {
      // gone meanwhile
    }
  }
  return { busyS, oursS, at };
}

let pgrpCache: number | undefined;
function ownProcessGroup(): number {
  if (pgrpCache === undefined) {
    const stat = readFileSync(`/proc/${process.pid}/stat`, 'utf8');
    pgrpCache = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[2]);
  }
  return pgrpCache;
}

function safeReaddir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

/** Measures the CPU of several processes over one interval. */
export class CpuMeter {
  private readonly start = new Map<number, ProcSample | undefined>();
  private readonly self0 = process.cpuUsage();
  private readonly machine0 = sampleMachine();
  private readonly t0 = hrNow();

  constructor(pids: readonly number[]) {
    for (const pid of pids) this.start.set(pid, sampleProc(pid));
  }

  /**
   * Percent of one core per pid, 'self' for this process, and 'others': what processes outside this bench
   * used meanwhile (a process that ended during the interval is counted there too).
   */
  stop(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [pid, s] of this.start) out[String(pid)] = cpuPercent(s, sampleProc(pid));
    const used = process.cpuUsage(this.self0);
    const seconds = (hrNow() - this.t0) / 1000;
    out.self = ((used.user + used.system) / 1000 / 1000 / seconds) * 100;
    const m = sampleMachine();
    out.others = Math.max(0, ((m.busyS - this.machine0.busyS - (m.oursS - this.machine0.oursS)) / seconds) * 100);
    return out;
  }
}

/** Waits (bounded) until processes outside this bench use less than `maxPct` of a core over 2 s. */
export async function waitForQuiet(maxPct: number, timeoutMs: number, log: (s: string) => void): Promise<number> {
  const until = Date.now() + timeoutMs;
  let others = Number.NaN;
  let told = false;
  for (;;) {
    const m = new CpuMeter([]);
    await sleep(2_000);
    others = m.stop().others!;
    if (others < maxPct || Date.now() >= until) return others;
    if (!told) log(`  other processes use ${others.toFixed(0)}% of a core; waiting up to ${Math.round(timeoutMs / 1000)} s for them to finish`);
    told = true;
  }
}

// --- devices ----------------------------------------------------------------------------------------

export const DEVICE_PREFIX = 'dev-';
export const deviceName = (i: number): string => `${DEVICE_PREFIX}${i}`;

/** A device's key pair, derived from its index so that the runner and a load process agree without a file. */
export function deviceKeys(crypto: CryptoBackend, i: number): KeyPair {
  const seed = createHash('sha256').update(`dropwire-bench-device-${i}`).digest();
  return crypto.keyPairFromPrivate(new Uint8Array(seed));
}

/**
 * Source addresses for client sockets (loopback only). Each has its own ephemeral port range, so tens of
 * thousands of connections to one listener do not run out of ports.
 */
export const LOCAL_ADDRESSES: readonly string[] = Array.from({ length: 8 }, (_, i) => `127.0.0.${i + 2}`);

// --- IPC --------------------------------------------------------------------------------------------

interface Request {
  rpc: number;
  cmd: string;
  args?: unknown;
}
interface Answer {
  rpc: number;
  ok: boolean;
  result?: unknown;
  error?: string;
}
export interface ChildEvent {
  event: string;
  [k: string]: unknown;
}

/**
 * A child process started with fork(), spoken to by request/answer over IPC; `onEvent` gets what the
 * child pushes by itself. Every request has a time limit.
 */
export class Child {
  readonly proc: ChildProcess;
  readonly exited: Promise<number | null>;
  private next = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private readonly listeners = new Set<(e: ChildEvent) => void>();

  constructor(script: string, o: { args?: string[]; execArgv?: string[]; env?: NodeJS.ProcessEnv; stdout?: 'inherit' | 'ignore' } = {}) {
    this.proc = fork(script, o.args ?? [], {
      execArgv: o.execArgv ?? [],
      env: { ...process.env, ...o.env },
      stdio: ['ignore', o.stdout ?? 'inherit', 'inherit', 'ipc'],
      serialization: 'advanced',
    });
    this.exited = new Promise((resolve) => this.proc.once('exit', (code) => resolve(code)));
    this.proc.on('message', (raw: unknown) => {
      const m = raw as Partial<Answer> & Partial<ChildEvent>;
      if (typeof m.rpc === 'number') {
        const p = this.pending.get(m.rpc);
        if (!p) return;
        this.pending.delete(m.rpc);
        if (m.ok) p.resolve(m.result);
        else p.reject(new Error(m.error ?? 'child error'));
      } else if (typeof m.event === 'string') {
        for (const l of this.listeners) l(m as ChildEvent);
      }
    });
    void this.exited.then((code) => {
      for (const p of this.pending.values()) p.reject(new Error(`child ${script} exited (${code})`));
      this.pending.clear();
    });
  }

  get pid(): number {
    return this.proc.pid!;
  }

  onEvent(fn: (e: ChildEvent) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** Waits for the first event named `name` (or the child's exit, which rejects). */
  waitEvent(name: string, timeoutMs: number): Promise<ChildEvent> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        off();
        reject(new Error(`no '${name}' event within ${timeoutMs} ms`));
      }, timeoutMs);
      const off = this.onEvent((e) => {
        if (e.event !== name) return;
        clearTimeout(timer);
        off();
        resolve(e);
      });
      void this.exited.then((code) => {
        clearTimeout(timer);
        off();
        reject(new Error(`child exited (${code}) before '${name}'`));
      });
    });
  }

  call<T = unknown>(cmd: string, args?: unknown, timeoutMs = 120_000): Promise<T> {
    const rpc = this.next++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(rpc);
        reject(new Error(`'${cmd}' got no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(rpc, {
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v as T);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.proc.send({ rpc, cmd, args } satisfies Request);
    });
  }

  /** SIGTERM, then SIGKILL after `graceMs`; only this child's own PID is signalled. */
  async stop(graceMs = 10_000): Promise<void> {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    this.proc.kill('SIGTERM');
    const t = setTimeout(() => this.proc.kill('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(t);
  }
}

/** The child's side: answers requests with `handlers`, pushes events with `emit`. */
export function serveParent(handlers: Record<string, (args: never) => unknown>): { emit: (e: ChildEvent) => void } {
  if (!process.send) throw new Error('this script runs as a child of bench/run.js (fork with IPC)');
  process.on('message', (m: Request) => {
    const h = handlers[m.cmd];
    Promise.resolve()
      .then(() => {
        if (!h) throw new Error(`unknown command '${m.cmd}'`);
        return h(m.args as never);
      })
      .then(
        (result) => process.send!({ rpc: m.rpc, ok: true, result } satisfies Answer),
        (err: unknown) => process.send!({ rpc: m.rpc, ok: false, error: err instanceof Error ? err.stack ?? err.message : String(err) } satisfies Answer),
      );
  });
  // The parent going away ends the child: nothing is left behind.
  process.on('disconnect', () => process.exit(0));
  return { emit: (e) => process.send?.(e) };
}
