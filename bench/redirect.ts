/**
 * The drain scenario (issue 13, "It must show" 5): N idle agents on one node of a three-node cluster on Redis,
 * `relay drain` of that node — how long until it is empty, how many agents moved, and the bytes sent again at
 * the swaps (goal 0). The agents are light agents in one process (bench/load-agents.ts) that follow REDIRECT
 * with the real agent's code (src/agent/redirect.ts). Everything runs on this machine's loopback.
 *
 *   npm run build && node dist/bench/redirect.js [--agents 2000] [--rate 200 | --rates 200,1000] [--out bench/REDIRECT.md]
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { fromHex, toHex } from '../src/protocol/bytes.js';
import { nodeCrypto } from '../src/protocol/crypto-node.js';
import { openClusterStore } from '../src/relay/cluster/store.js';
import { deviceKeys, deviceName, sampleProc, sleep, waitFor } from './common.js';
import { LoadAgents } from './load-agents.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const BIN = path.join(ROOT, 'bin', 'dropwire.js');

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
}
const AGENTS = arg('agents', 2000);
const RATES = (process.argv.includes('--rates') ? process.argv[process.argv.indexOf('--rates') + 1]! : String(arg('rate', 200))).split(',').map(Number);
const outIdx = process.argv.indexOf('--out');
const OUT = outIdx > 0 ? process.argv[outIdx + 1]! : path.join(ROOT, 'bench', 'REDIRECT.md');

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

function cli(args: string[]): Promise<string> {
  return new Promise((resolve, reject) =>
    execFile(process.execPath, [BIN, ...args], { encoding: 'utf8', cwd: ROOT, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => (err ? reject(new Error(`${args.join(' ')}: ${stderr}`)) : resolve(stdout.trim()))),
  );
}

function spawnCli(args: string[]): ChildProcess {
  const c = spawn(process.execPath, [BIN, ...args], { cwd: ROOT, stdio: 'ignore', env: { ...process.env, DROPWIRE_LOG_LEVEL: 'warn' } });
  children.push(c);
  return c;
}

interface Row {
  agents: number;
  rate: number;
  drainMs: number;
  wallMs: number;
  moved: number;
  handovers: number;
  stayed: number;
  resentBytes: number;
  unacknowledgedBytes: number;
  connectedAfter: number;
  node1CpuMs: number | undefined;
  nodesAfter: Record<string, number>;
}

async function drainOnce(RATE: number): Promise<Row> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dw-bench-redirect-'));
  try {
    const redisPort = await freePort();
    const conf = path.join(dir, 'redis.conf');
    fs.writeFileSync(conf, [`port ${redisPort}`, 'bind 127.0.0.1', `dir ${dir}`, 'appendonly yes', 'appendfsync always', 'save ""', 'daemonize no', `logfile ${dir}/redis.log`].join('\n') + '\n');
    children.push(spawn('redis-server', [conf], { stdio: 'ignore' }));
    const url = `redis://127.0.0.1:${redisPort}`;
    const redisUp = await waitFor(() => new Promise<boolean>((r) => {
      const s = net.connect({ host: '127.0.0.1', port: redisPort }, () => (s.destroy(), r(true)));
      s.on('error', () => r(false));
    }), 15_000, 50);
    if (!redisUp) throw new Error('redis-server did not start');

    const ports = await Promise.all([1, 2, 3].map(() => freePort()));
    await cli(['relay', 'cluster', 'init', '--store', url, '--data', path.join(dir, 'key'), '--public', ports.map((p) => `127.0.0.1:${p}`).join(',')]);
    const nodes: { name: string; proc: ChildProcess; port: number }[] = [];
    for (const [i, port] of ports.entries()) {
      const name = `node${i + 1}`;
      const data = path.join(dir, name);
      const proc = spawnCli(['relay', 'start', '--store', url, '--key', path.join(dir, 'key', 'relay.key'), '--node', name, '--data', data, '--listen', `127.0.0.1:${port}`, '--http', `127.0.0.1:${await freePort()}`]);
      const ok = await waitFor(() => {
        try {
          return (JSON.parse(fs.readFileSync(path.join(data, 'relay.json'), 'utf8')) as { pid: number }).pid === proc.pid;
        } catch {
          return false;
        }
      }, 30_000, 50);
      if (!ok) throw new Error(`${name} did not start`);
      nodes.push({ name, proc, port });
    }

    // The devices, enrolled straight into the store (keys from bench/common.ts).
    const store = await openClusterStore(url, { unsafe: true, replicas: 0 });
    const now = Date.now();
    for (let i = 0; i < AGENTS; i += 200) {
      await Promise.all(Array.from({ length: Math.min(200, AGENTS - i) }, (_, k) => store.createDevice({ name: deviceName(i + k), publicKey: toHex(deviceKeys(nodeCrypto, i + k).publicKey), enrolledAt: now, createdAt: now })));
    }
    await store.close();
    const { openRedis } = await import('../src/relay/cluster/connect.js');
    const redis = await openRedis(url);
    const key = (await redis.hget('dw:cluster', 'publicKey'))!;

    // Every agent on node1.
    const agents = new LoadAgents({ relay: { host: '127.0.0.1', port: nodes[0]!.port }, relayKey: fromHex(key), from: 0, count: AGENTS, redirects: true });
    const up = await agents.start(256, 300_000);
    console.log(`${up.established} of ${AGENTS} agents connected to node1 in ${Math.round(up.ms)} ms`);
    await sleep(3_000); // idle: heartbeats, presence settled
    const before = agents.agents.reduce((n, a) => n + a.handovers, 0);
    const cpu0 = sampleProc(nodes[0]!.proc.pid!);

    const t0 = Date.now();
    const out = await cli(['relay', 'drain', '--node', 'node1', '--rate', String(RATE), '--timeout', '30', '--json', '--store', url]);
    const wall = Date.now() - t0;
    const summary = JSON.parse(out.split('\n').at(-1)!) as { moved: number; refused: string[]; timedOut: string[]; failed: string[]; unsupported: string[]; resentBytes: number; unacknowledgedBytes: number; durationMs: number };
    const cpu1 = sampleProc(nodes[0]!.proc.pid!);
    await waitFor(() => nodes[0]!.proc.exitCode !== null, 30_000, 100);
    const handovers = agents.agents.reduce((n, a) => n + a.handovers, 0) - before;
    await sleep(1_000);
    const connected = agents.connected;
    const counts = Object.fromEntries((JSON.parse(await cli(['relay', 'nodes', '--json', '--store', url])) as { name: string; connected: number }[]).map((n) => [n.name, n.connected]));
    redis.disconnect();
    agents.close();

    const row: Row = {
      agents: AGENTS,
      rate: RATE,
      drainMs: summary.durationMs,
      wallMs: wall,
      moved: summary.moved,
      handovers,
      stayed: summary.refused.length + summary.timedOut.length + summary.failed.length + summary.unsupported.length,
      resentBytes: summary.resentBytes,
      unacknowledgedBytes: summary.unacknowledgedBytes,
      connectedAfter: connected,
      node1CpuMs: cpu0 && cpu1 ? Math.round((cpu1.cpuS - cpu0.cpuS) * 1000) : undefined,
      nodesAfter: counts,
    };
    console.log(JSON.stringify(row));
    return row;
  } finally {
    for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

const rows: Row[] = [];
for (const rate of RATES) rows.push(await drainOnce(rate));
const md = [
  '# Drain of idle agents (bench/redirect.ts)',
  '',
  `Run ${new Date().toISOString()} on ${os.cpus().length} × ${os.cpus()[0]?.model ?? 'CPU'}, Node ${process.version}: three nodes, redis-server and the light agents (one process) on one machine's loopback. \`relay drain --node node1\` with every agent on node1; each row is a fresh cluster.`,
  '',
  '| agents | rate asked (agents/s) | drain (s, node side) | wall (s, CLI) | moved | hand-overs seen by agents | stayed | bytes re-sent | unacknowledged at the swaps | connected after | node1 CPU (ms) |',
  '|---|---|---|---|---|---|---|---|---|---|---|',
  ...rows.map((row) => `| ${row.agents} | ${row.rate} | ${(row.drainMs / 1000).toFixed(1)} | ${(row.wallMs / 1000).toFixed(1)} | ${row.moved} | ${row.handovers} | ${row.stayed} | ${row.resentBytes} | ${row.unacknowledgedBytes} | ${row.connectedAfter} | ${row.node1CpuMs ?? '—'} |`),
  '',
  'Unacknowledged bytes are what the agents had not acknowledged when their node froze the session (idle agents: the REDIRECT itself and a last CONFIRM); bytes re-sent are what the new node sent again after the agent told its count (goal 0).',
  '',
].join('\n');
fs.writeFileSync(OUT, md);
console.log(`written ${OUT}`);
