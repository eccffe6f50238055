/**
 * Mosquitto 2.0 (the Debian package) started by the bench with its own config on 127.0.0.1 and a free
 * port, stopped by its PID. Only the queue limit is raised from the defaults, so that no QoS 1 message of a
 * scenario is dropped (Mosquitto drops beyond `max_queued_messages`, 1000 by default).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { sleep } from './common.js';

export function mosquittoVersion(): string | undefined {
  try {
    const out = execFileSync('mosquitto', ['-h'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    return /mosquitto version (\S+)/.exec(out)?.[1];
  } catch (err) {
    // `mosquitto -h` exits non-zero on some versions but still prints its version.
    const out = String((err as { stdout?: unknown }).stdout ?? '');
    return /mosquitto version (\S+)/.exec(out)?.[1];
  }
}

/** A port that was free a moment ago on 127.0.0.1. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

export class Mosquitto {
  readonly port: number;
  private readonly dir: string;
  private proc: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();

  constructor(dir: string, port: number) {
    this.dir = dir;
    this.port = port;
  }

  get pid(): number {
    return this.proc!.pid!;
  }

  /** Starts it and resolves once it accepts connections. */
  async start(): Promise<void> {
    fs.mkdirSync(this.dir, { recursive: true });
    const conf = path.join(this.dir, 'mosquitto.conf');
    fs.writeFileSync(
      conf,
      [
        `listener ${this.port} 127.0.0.1`,
        'allow_anonymous true',
        'persistence false',
        'max_queued_messages 1000000',
        'connection_messages false',
        'log_dest stderr',
        'log_type error',
        'log_type warning',
        '',
      ].join('\n'),
    );
    const log = fs.openSync(path.join(this.dir, 'mosquitto.log'), 'a');
    const proc = spawn('mosquitto', ['-c', conf], { stdio: ['ignore', log, log] });
    fs.closeSync(log);
    let failed: Error | undefined;
    proc.once('error', (err) => (failed = err));
    this.proc = proc;
    this.exited = new Promise((resolve) => {
      proc.once('exit', () => resolve());
      proc.once('error', () => resolve());
    });
    const until = Date.now() + 10_000;
    while (Date.now() < until) {
      if (failed) throw new Error(`mosquitto could not be started (${failed.message}); install it: apt-get install -y mosquitto`);
      if (proc.exitCode !== null) throw new Error(`mosquitto exited (${proc.exitCode}); see ${this.dir}/mosquitto.log`);
      if (await canConnect(this.port)) return;
      await sleep(20);
    }
    throw new Error('mosquitto did not start listening within 10 s');
  }

  /** SIGTERM to its own PID, SIGKILL after `graceMs`. */
  async stop(graceMs = 10_000): Promise<void> {
    const proc = this.proc;
    if (!proc || proc.pid === undefined || proc.exitCode !== null || proc.signalCode !== null) return;
    proc.kill('SIGTERM');
    const t = setTimeout(() => proc.kill('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(t);
  }
}
