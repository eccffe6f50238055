/**
 * The cluster scenario (issue 12, "It must show" 6): the same paced load through one relay on SQLite, one
 * node on Redis, and three nodes on Redis — messages/s end to end (POST to the file in the host's inbox),
 * relay CPU per message for each node, and redis-server CPU per message, in one run. Everything runs on
 * this machine's loopback: with two cores the nodes, Redis, the agents and the senders share them, so the
 * figures say what costs what, not what a cluster of real machines would carry.
 *
 *   npm run build && node dist/bench/cluster.js [--messages N] [--agents N] [--concurrency N] [--out FILE]
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { sampleProc, sleep, waitFor } from './common.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const BIN = path.join(ROOT, 'bin', 'dropwire.js');

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
}
const MESSAGES = arg('messages', 3000);
const AGENTS = arg('agents', 6);
const CONCURRENCY = arg('concurrency', 32);
const SIZE = 1024;
const outIdx = process.argv.indexOf('--out');
const OUT = outIdx > 0 ? process.argv[outIdx + 1]! : path.join(ROOT, 'bench', 'CLUSTER.md');

const children: ChildProcess[] = [];
process.on('exit', () => {
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
});

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address() as net.AddressInfo;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

function cli(args: string[]): string {
  return execFileSync(process.execPath, [BIN, ...args], { encoding: 'utf8', cwd: ROOT }).trim();
}

function spawnCli(args: string[]): ChildProcess {
  const c = spawn(process.execPath, [BIN, ...args], { cwd: ROOT, stdio: 'ignore', env: { ...process.env, DROPWIRE_LOG_LEVEL: 'warn' } });
  children.push(c);
  return c;
}

async function startRedis(dir: string): Promise<{ url: string; proc: ChildProcess }> {
  const port = await freePort();
  const conf = path.join(dir, 'redis.conf');
  fs.writeFileSync(conf, [`port ${port}`, 'bind 127.0.0.1', `dir ${dir}`, 'appendonly yes', 'appendfsync always', 'save ""', 'daemonize no', `logfile ${dir}/redis.log`].join('\n') + '\n');
  const proc = spawn('redis-server', [conf], { stdio: 'ignore' });
  children.push(proc);
  const url = `redis://127.0.0.1:${port}`;
  const up = await waitFor(() => new Promise<boolean>((r) => {
    const s = net.connect({ host: '127.0.0.1', port }, () => (s.destroy(), r(true)));
    s.on('error', () => r(false));
  }), 15_000, 50);
  if (!up) throw new Error('redis-server did not start');
  return { url, proc };
}

interface Node {
  proc: ChildProcess;
  agents: string;
  http: string;
}

async function startNode(args: string[], data: string): Promise<Node> {
  const agentsPort = await freePort();
  const httpPort = await freePort();
  const proc = spawnCli(['relay', 'start', '--data', data, '--listen', `127.0.0.1:${agentsPort}`, '--http', `127.0.0.1:${httpPort}`, ...args]);
  const info = path.join(data, 'relay.json');
  const ok = await waitFor(() => {
    try {
      return (JSON.parse(fs.readFileSync(info, 'utf8')) as { pid: number }).pid === proc.pid;
    } catch {
      return false;
    }
  }, 30_000, 50);
  if (!ok) throw new Error(`relay in ${data} did not start`);
  return { proc, agents: `127.0.0.1:${agentsPort}`, http: `127.0.0.1:${httpPort}` };
}

interface Result {
  scenario: string;
  messagesPerS: number;
  relayCpuMsPerMsg: number[];
  redisCpuMsPerMsg?: number;
}

async function scenario(name: string, kind: 'sqlite' | 'redis', nodes: number): Promise<Result> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dw-bench-cluster-'));
  try {
    let redis: { url: string; proc: ChildProcess } | undefined;
    const running: Node[] = [];
    const admin: string[] = [];
    if (kind === 'sqlite') {
      running.push(await startNode([], path.join(dir, 'relay')));
      admin.push('--data', path.join(dir, 'relay'));
    } else {
      redis = await startRedis(dir);
      const ports = await Promise.all(Array.from({ length: nodes }, () => freePort()));
      cli(['relay', 'cluster', 'init', '--store', redis.url, '--data', path.join(dir, 'key'), '--public', ports.map((p) => `127.0.0.1:${p}`).join(',')]);
      for (let i = 0; i < nodes; i++) {
        running.push(await startNode(['--store', redis.url, '--key', path.join(dir, 'key', 'relay.key'), '--node', `node${i + 1}`], path.join(dir, `node${i + 1}`)));
      }
      admin.push('--store', redis.url);
    }
    const token = cli(['relay', 'token', 'add', 'bench', ...admin]);
    const inboxes: string[] = [];
    for (let i = 0; i < AGENTS; i++) {
      const home = path.join(dir, `agent${i}`);
      const enroll = cli(['relay', 'device', 'add', `host${i}`, ...admin, ...(kind === 'sqlite' ? ['--public', running[0]!.agents] : [])]);
      cli(['init', enroll, '--home', home, '--relay', running[i % running.length]!.agents]);
      spawnCli(['agent', '--home', home]);
      inboxes.push(path.join(home, 'inbox'));
    }
    await sleep(2_000);
    const count = () => inboxes.reduce((n, d) => n + (fs.existsSync(d) ? fs.readdirSync(d).length : 0), 0);
    const body = new Uint8Array(SIZE).fill(7);
    const cpu0 = running.map((n) => sampleProc(n.proc.pid!)!.cpuS);
    const redis0 = redis ? sampleProc(redis.proc.pid!)!.cpuS : 0;
    const t0 = Date.now();
    let next = 0;
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        for (let k = next++; k < MESSAGES; k = next++) {
          const node = running[k % running.length]!;
          for (let attempt = 0; attempt < 20; attempt++) {
            const res = await fetch(`http://${node.http}/v1/messages?to=host${k % AGENTS}&filename=m${k}.bin`, {
              method: 'POST',
              headers: { authorization: `Bearer ${token}`, 'idempotency-key': `m${k}` },
              body,
            });
            await res.arrayBuffer();
            if (res.status === 202 || res.status === 200) break;
            await sleep(100);
          }
        }
      }),
    );
    const done = await waitFor(() => count() >= MESSAGES, 600_000, 100);
    const seconds = (Date.now() - t0) / 1000;
    if (!done) throw new Error(`${name}: only ${count()} of ${MESSAGES} arrived`);
    const cpu1 = running.map((n) => sampleProc(n.proc.pid!)!.cpuS);
    const redis1 = redis ? sampleProc(redis.proc.pid!)!.cpuS : 0;
    return {
      scenario: name,
      messagesPerS: MESSAGES / seconds,
      relayCpuMsPerMsg: cpu1.map((c, i) => ((c - cpu0[i]!) * 1000) / MESSAGES),
      ...(redis ? { redisCpuMsPerMsg: ((redis1 - redis0) * 1000) / MESSAGES } : {}),
    };
  } finally {
    for (const c of children.splice(0)) {
      c.kill('SIGTERM');
      await new Promise((r) => (c.exitCode !== null ? r(undefined) : c.once('exit', r)));
    }
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

const results: Result[] = [];
results.push(await scenario('one relay, SQLite', 'sqlite', 1));
results.push(await scenario('one node, Redis', 'redis', 1));
results.push(await scenario('three nodes, Redis', 'redis', 3));

const lines = [
  '# Cluster bench (bench/cluster.ts)',
  '',
  `${MESSAGES} messages of ${SIZE} B, ${CONCURRENCY} concurrent senders round-robin over the nodes' HTTP ports, ${AGENTS} agents`,
  `(save rule) spread over the nodes; from the first POST to the last file in an inbox. ${os.cpus().length} cores shared by`,
  'everything (nodes, redis-server with appendfsync always, agents, senders); CPU from /proc/PID/stat.',
  '',
  '| scenario | messages/s | relay CPU ms per message (each node) | redis-server CPU ms per message |',
  '|---|---:|---|---:|',
  ...results.map((r) => `| ${r.scenario} | ${r.messagesPerS.toFixed(0)} | ${r.relayCpuMsPerMsg.map((c) => c.toFixed(3)).join(' / ')} | ${r.redisCpuMsPerMsg === undefined ? '—' : r.redisCpuMsPerMsg.toFixed(3)} |`),
  '',
];
fs.writeFileSync(OUT, lines.join('\n'));
console.log(lines.join('\n'));
