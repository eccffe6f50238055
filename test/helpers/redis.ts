/**
 * A private redis-server for the cluster tests: its own folder (AOF, RDB), a free loopback port, a config
 * written by the test, never the machine's own Redis. Stopped (or killed, then restarted on the same port and
 * folder) by its PID.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { findTool } from './cups.js';
import { freePort } from './net.js';

export { freePort };

const START_TIMEOUT_MS = 15_000;
const STOP_TIMEOUT_MS = 5_000;

/** Why a private redis-server cannot be started here, or `undefined` when it can. */
export function redisUnavailableReason(): string | undefined {
  if (findTool('redis-server') === undefined) return 'redis-server not installed (apt-get install redis-server)';
  return undefined;
}

/** Why private sentinels cannot be started here, or `undefined` when they can. */
export function sentinelUnavailableReason(): string | undefined {
  return redisUnavailableReason() ?? (findTool('redis-sentinel') === undefined ? 'redis-sentinel not installed (apt-get install redis-sentinel)' : undefined);
}


export interface PrivateRedisOptions {
  /** `appendonly yes` + `appendfsync always` (what a dropwire cluster requires). Default true. */
  durable?: boolean;
  /** Extra config lines (e.g. `replicaof 127.0.0.1 6380`). */
  extra?: string[];
  /** Run as `redis-sentinel` with this config body instead of a data server. */
  sentinel?: boolean;
}

export interface PrivateRedis {
  readonly host: string;
  readonly port: number;
  /** `redis://127.0.0.1:PORT` */
  readonly url: string;
  readonly dir: string;
  pid(): number | undefined;
  /** SIGKILL, then wait for the process to be gone. */
  kill(): Promise<void>;
  /** Starts again on the same port and folder (after `kill` or `stop`). */
  restart(): Promise<void>;
  /** SIGTERM (Redis writes its AOF and exits); idempotent. */
  stop(): Promise<void>;
  /** Stops and removes the folder; idempotent. */
  dispose(): Promise<void>;
}

async function waitForPort(port: number, child: ChildProcess, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`redis exited early (${child.exitCode ?? child.signalCode})`);
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port });
      s.once('connect', () => {
        // A PING answered +PONG means the server is loading no more (LOADING answers -LOADING).
        s.write('PING\r\n');
        s.once('data', (d) => {
          s.destroy();
          resolve(d.toString().startsWith('+PONG'));
        });
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    await sleep(50);
  }
  throw new Error(`redis did not answer on port ${port} within ${timeoutMs} ms`);
}

async function waitForExit(child: ChildProcess, timeoutMs: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  await Promise.race([new Promise<void>((resolve) => child.once('exit', () => resolve())), sleep(timeoutMs)]);
}

/** Starts a private redis-server (or redis-sentinel) on 127.0.0.1. */
export async function startRedis(o: PrivateRedisOptions = {}): Promise<PrivateRedis> {
  const dir = await mkdtemp(path.join(os.tmpdir(), o.sentinel ? 'dw-sentinel-' : 'dw-redis-'));
  const port = await freePort();
  const durable = o.durable ?? true;
  const conf = path.join(dir, o.sentinel ? 'sentinel.conf' : 'redis.conf');
  const lines = [
    `port ${port}`,
    'bind 127.0.0.1',
    'protected-mode no',
    `dir ${dir}`,
    'daemonize no',
    'save ""',
    'loglevel warning',
    `logfile ${path.join(dir, 'redis.log')}`,
  ];
  if (!o.sentinel) lines.push(durable ? 'appendonly yes' : 'appendonly no', durable ? 'appendfsync always' : 'appendfsync everysec');
  lines.push(...(o.extra ?? []));
  await writeFile(conf, lines.join('\n') + '\n');
  const bin = findTool(o.sentinel ? 'redis-sentinel' : 'redis-server');
  if (!bin) throw new Error(o.sentinel ? 'redis-sentinel not installed' : 'redis-server not installed');
  let child: ChildProcess | undefined;
  const start = async () => {
    child = spawn(bin, [conf], { stdio: 'ignore' });
    await waitForPort(port, child, START_TIMEOUT_MS);
  };
  await start();
  const stopWith = async (signal: NodeJS.Signals) => {
    const c = child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    c.kill(signal);
    await waitForExit(c, STOP_TIMEOUT_MS);
    if (c.exitCode === null && c.signalCode === null) {
      c.kill('SIGKILL');
      await waitForExit(c, STOP_TIMEOUT_MS);
    }
  };
  let disposed = false;
  return {
    host: '127.0.0.1',
    port,
    url: `redis://127.0.0.1:${port}`,
    dir,
    pid: () => (child && child.exitCode === null && child.signalCode === null ? child.pid : undefined),
    kill: () => stopWith('SIGKILL'),
    restart: async () => {
      await stopWith('SIGKILL');
      await start();
    },
    stop: () => stopWith('SIGTERM'),
    dispose: async () => {
      if (disposed) return;
      disposed = true;
      await stopWith('SIGTERM');
      await rm(dir, { recursive: true, force: true });
    },
  };
}
