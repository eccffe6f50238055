import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { onTestFinished } from 'vitest';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const BIN = path.join(ROOT, 'bin', 'dropwire.js');

/**
 * The CLI under test: `node bin/dropwire.js`, or the single executable named by DROPWIRE_CLI_BIN (built by
 * `npm run release`; test/release/ sets it). Against the executable the CLI runs as on a host without
 * Node: no folder holding a `node` on PATH, and from an empty working folder.
 */
function command(args: string[]): [string, string[]] {
  const exe = process.env.DROPWIRE_CLI_BIN;
  return exe ? [exe, args] : [process.execPath, [BIN, ...args]];
}

let emptyCwd: string | undefined;
function defaultCwd(): string {
  if (!process.env.DROPWIRE_CLI_BIN) return ROOT;
  return (emptyCwd ??= fs.mkdtempSync(path.join(os.tmpdir(), 'dw-empty-cwd-')));
}

const NODE_NAMES = new Set(['node', 'nodejs', 'node.exe']);
const shadows = new Map<string, string>();

/**
 * PATH with every `node` taken out: a folder that holds one (here /usr/bin has the machine's Node 20) is
 * replaced by a copy made of symbolic links to everything else in it, so the other tools stay reachable.
 */
export function pathWithoutNode(pathVar = process.env.PATH ?? ''): string {
  return pathVar
    .split(path.delimiter)
    .filter((d) => d !== '' && fs.existsSync(d))
    .map((d) => {
      const entries = fs.readdirSync(d);
      if (!entries.some((e) => NODE_NAMES.has(e))) return d;
      let shadow = shadows.get(d);
      if (!shadow) {
        if (shadows.size === 0) process.once('exit', () => shadows.forEach((dir) => fs.rmSync(dir, { recursive: true, force: true })));
        shadow = fs.mkdtempSync(path.join(os.tmpdir(), 'dw-path-without-node-'));
        for (const e of entries) if (!NODE_NAMES.has(e)) fs.symlinkSync(path.join(d, e), path.join(shadow, e));
        shadows.set(d, shadow);
      }
      return shadow;
    })
    .join(path.delimiter);
}

function childEnv(extra: NodeJS.ProcessEnv | undefined): NodeJS.ProcessEnv {
  const env = { ...process.env, ...extra };
  if (process.env.DROPWIRE_CLI_BIN) env.PATH = pathWithoutNode(env.PATH);
  return env;
}

export function tempDir(prefix = 'dw-'): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  onTestFinished(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
}

/** Runs the CLI to completion. */
export function cli(args: string[], o: { env?: NodeJS.ProcessEnv; cwd?: string } = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const [file, argv] = command(args);
    execFile(file, argv, { env: childEnv(o.env), cwd: o.cwd ?? defaultCwd(), timeout: 60_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

export async function cliOk(args: string[], o: { env?: NodeJS.ProcessEnv; cwd?: string } = {}): Promise<string> {
  const r = await cli(args, o);
  if (r.code !== 0) throw new Error(`dropwire ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return r.stdout.trim();
}

export interface Proc {
  child: ChildProcess;
  pid: number;
  /** Every JSON log line so far. */
  logs: Record<string, unknown>[];
  /** Resolves with the first log line matching, or rejects after `ms`. */
  waitLog(pred: (l: Record<string, unknown>) => boolean, ms?: number): Promise<Record<string, unknown>>;
  kill(signal?: NodeJS.Signals): Promise<void>;
}

/** A long-running CLI process (relay start, agent); killed by PID when the test ends. */
export function spawnCli(args: string[], o: { env?: NodeJS.ProcessEnv; cwd?: string } = {}): Proc {
  const [file, argv] = command(args);
  const child = spawn(file, argv, { env: childEnv(o.env), cwd: o.cwd ?? defaultCwd(), stdio: ['ignore', 'pipe', 'pipe'] });
  const logs: Record<string, unknown>[] = [];
  const waiters: { pred: (l: Record<string, unknown>) => boolean; resolve: (l: Record<string, unknown>) => void }[] = [];
  let buf = '';
  child.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      let l: Record<string, unknown>;
      try {
        l = JSON.parse(line) as Record<string, unknown>;
      } catch {
        l = { msg: line };
      }
      logs.push(l);
      for (const w of [...waiters]) {
        if (w.pred(l)) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(l);
        }
      }
    }
  });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const p: Proc = {
    child,
    pid: child.pid!,
    logs,
    waitLog(pred, ms = 20_000) {
      const found = logs.find(pred);
      if (found) return Promise.resolve(found);
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`no matching log line within ${ms} ms; stderr: ${stderr.slice(-2000)}`)), ms);
        waiters.push({ pred, resolve: (l) => (clearTimeout(t), resolve(l)) });
      });
    },
    async kill(signal = 'SIGTERM') {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill(signal);
      await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))]);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
  onTestFinished(() => p.kill('SIGKILL'));
  return p;
}

export interface RelayInfo {
  agents: string;
  http: string;
  publicKey: string;
  pid: number;
}

export async function waitFor<T>(fn: () => T | undefined | Promise<T | undefined>, ms = 20_000, what = 'condition'): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v !== undefined && v !== false) return v as T;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** `relay start` on loopback with port 0; resolves once relay.json names the ports. */
export async function startRelay(data: string, extra: string[] = [], listen = '127.0.0.1:0', env?: NodeJS.ProcessEnv): Promise<{ proc: Proc; info: RelayInfo }> {
  fs.rmSync(path.join(data, 'relay.json'), { force: true });
  const proc = spawnCli(['relay', 'start', '--data', data, '--listen', listen, '--http', '127.0.0.1:0', ...extra], env ? { env } : {});
  const info = await waitFor(() => {
    try {
      const i = JSON.parse(fs.readFileSync(path.join(data, 'relay.json'), 'utf8')) as RelayInfo;
      return i.pid === proc.pid ? i : undefined;
    } catch {
      return undefined;
    }
  }, 20_000, 'relay.json');
  return { proc, info };
}

/** A relay, one enrolled agent home, and a sender token. */
export async function setup(o: { device?: string; rules?: unknown[]; relayArgs?: string[] } = {}) {
  const dir = tempDir();
  const data = path.join(dir, 'relay');
  const home = path.join(dir, 'agent');
  const device = o.device ?? 'shop';
  const relay = await startRelay(data, o.relayArgs);
  const enrollToken = await cliOk(['relay', 'device', 'add', device, '--data', data]);
  await cliOk(['init', enrollToken, '--home', home]);
  const token = await cliOk(['relay', 'token', 'add', 'web', '--data', data]);
  if (o.rules) {
    const cfg = JSON.parse(fs.readFileSync(path.join(home, 'config.json'), 'utf8')) as Record<string, unknown>;
    cfg.rules = o.rules;
    fs.writeFileSync(path.join(home, 'config.json'), JSON.stringify(cfg, null, 2));
  }
  return { dir, data, home, device, relay, token, api: new Api(relay.info.http, token) };
}

export class Api {
  base: string;
  token: string;
  constructor(http: string, token: string) {
    this.base = `http://${http}`;
    this.token = token;
  }

  async send(to: string, filename: string, body: Uint8Array | string, headers: Record<string, string> = {}, query = ''): Promise<{ status: number; json: Record<string, unknown> }> {
    const res = await fetch(`${this.base}/v1/messages?to=${encodeURIComponent(to)}&filename=${encodeURIComponent(filename)}${query}`, {
      method: 'POST',
      headers: { authorization: `Bearer ${this.token}`, ...headers },
      body: body as unknown as RequestInit['body'],
    });
    return { status: res.status, json: (await res.json()) as Record<string, unknown> };
  }

  async get(pathname: string, token = this.token): Promise<{ status: number; json: Record<string, unknown> }> {
    const res = await fetch(`${this.base}${pathname}`, { headers: token ? { authorization: `Bearer ${token}` } : {} });
    return { status: res.status, json: (await res.json()) as Record<string, unknown> };
  }

  async message(id: string, wait = 0): Promise<Record<string, unknown>> {
    return (await this.get(`/v1/messages/${id}${wait ? `?wait=${wait}` : ''}`)).json;
  }

  /** Polls until the message reaches one of `statuses`. */
  async until(id: string, statuses: string[], ms = 30_000): Promise<Record<string, unknown>> {
    return waitFor(async () => {
      const m = await this.message(id, 5);
      return statuses.includes(m.status as string) ? m : undefined;
    }, ms, `message ${id} to reach ${statuses.join('|')}`);
  }
}

export const sha256 = (b: Uint8Array | string) => createHash('sha256').update(b).digest('hex');
export const randomData = (n: number) => new Uint8Array(randomBytes(n));

/** RSS high-water mark of a process, from /proc (Linux). */
export function peakRssMiB(pid: number): number | undefined {
  try {
    const s = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const m = /VmHWM:\s+(\d+) kB/.exec(s);
    return m ? Number(m[1]) / 1024 : undefined;
  } catch {
    return undefined;
  }
}

/** A handler script that records each run (`id sha256 name`) in `log`, for exactly-once checks. */
export function recordingHandler(dir: string): { rule: unknown; runs: () => { id: string; sha: string; name: string }[] } {
  const script = path.join(dir, 'record.mjs');
  const log = path.join(dir, 'runs.log');
  fs.writeFileSync(
    script,
    `import fs from 'node:fs'; import { createHash } from 'node:crypto';
const [file, id, name] = process.argv.slice(2);
const h = createHash('sha256');
for await (const c of fs.createReadStream(file)) h.update(c);
const sha = h.digest('hex');
fs.appendFileSync(${JSON.stringify(log)}, id + ' ' + sha + ' ' + JSON.stringify(name) + '\\n');\n`,
  );
  return {
    rule: { match: '*', action: { type: 'exec', command: process.execPath, args: [script, '{file}', '{id}', '{name}'], timeoutS: 60 } },
    runs: () =>
      fs.existsSync(log)
        ? fs
            .readFileSync(log, 'utf8')
            .trim()
            .split('\n')
            .filter(Boolean)
            .map((l) => {
              const [id, sha, ...rest] = l.split(' ');
              return { id: id!, sha: sha!, name: JSON.parse(rest.join(' ')) as string };
            })
        : [],
  };
}
