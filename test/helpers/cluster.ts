/**
 * A dropwire cluster on loopback for the end-to-end tests: a private redis-server, `relay cluster init`,
 * N nodes (`relay start --store`, real child processes on fixed free ports so that a killed node comes back
 * on the same ones), and a TCP front for the agents that tries the nodes in a random order and takes the
 * first that answers — what an agent given every address of the cluster does.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { Redis } from 'ioredis';
import { openRedis } from '../../src/relay/cluster/connect.js';
import { onTestFinished } from 'vitest';
import { cliOk, randomData, recordingHandler, sha256, spawnCli, tempDir, waitFor, type Proc, type RelayInfo } from './cli.js';
import { freePort, startRedis, type PrivateRedis } from './redis.js';

export interface NodeHandle {
  name: string;
  data: string;
  agentsPort: number;
  httpPort: number;
  proc: Proc | undefined;
  info: RelayInfo | undefined;
  http: string;
}

/** Accepts agents on one port and passes each connection to a live node, tried in a random order. */
export class AgentFront {
  readonly server: net.Server;
  port = 0;
  private readonly sockets = new Set<net.Socket>();
  backends: () => number[];

  constructor(backends: () => number[]) {
    this.backends = backends;
    this.server = net.createServer((client) => this.accept(client));
  }

  async listen(): Promise<void> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    this.port = (this.server.address() as net.AddressInfo).port;
  }

  private accept(client: net.Socket): void {
    this.sockets.add(client);
    client.on('close', () => this.sockets.delete(client));
    client.on('error', () => {});
    client.pause();
    const order = [...this.backends()].sort(() => Math.random() - 0.5);
    const attempt = (i: number): void => {
      if (i >= order.length || client.destroyed) return void client.destroy();
      const up = net.connect({ host: '127.0.0.1', port: order[i]! });
      const fail = () => {
        up.destroy();
        attempt(i + 1);
      };
      up.once('error', fail);
      up.setTimeout(2_000, fail);
      up.once('connect', () => {
        up.off('error', fail);
        up.setTimeout(0);
        this.sockets.add(up);
        up.on('close', () => {
          this.sockets.delete(up);
          client.destroy();
        });
        up.on('error', () => up.destroy());
        client.on('close', () => up.destroy());
        client.pipe(up);
        up.pipe(client);
        client.resume();
      });
    };
    attempt(0);
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

export interface TestCluster {
  dir: string;
  /** The private redis-server, unless the test gave its own store URL (Sentinel). */
  redis: PrivateRedis | undefined;
  url: string;
  keyFile: string;
  nodes: NodeHandle[];
  front: AgentFront;
  /** A plain Redis client for looking at the cluster's state. */
  client: Redis;
  startNode(n: NodeHandle, extra?: string[]): Promise<void>;
  killNode(n: NodeHandle): Promise<void>;
}

/** Redis (a private redis-server, or `url`), `relay cluster init`, and `nodes` nodes started. */
export async function startCluster(o: { nodes: number; nodeArgs?: string[]; url?: string }): Promise<TestCluster> {
  const dir = tempDir('dw-cluster-');
  const redis = o.url ? undefined : await startRedis();
  if (redis) onTestFinished(() => redis.dispose());
  const url = o.url ?? redis!.url;
  const nodes: NodeHandle[] = [];
  for (let i = 1; i <= o.nodes; i++) {
    const agentsPort = await freePort();
    const httpPort = await freePort();
    nodes.push({ name: `node${i}`, data: path.join(dir, `node${i}`), agentsPort, httpPort, proc: undefined, info: undefined, http: `127.0.0.1:${httpPort}` });
  }
  const keyDir = path.join(dir, 'cluster');
  await cliOk(['relay', 'cluster', 'init', '--store', url, '--data', keyDir, '--public', nodes.map((n) => `127.0.0.1:${n.agentsPort}`).join(',')]);
  const keyFile = path.join(keyDir, 'relay.key');
  const startNode = async (n: NodeHandle, extra: string[] = []) => {
    fs.rmSync(path.join(n.data, 'relay.json'), { force: true });
    const proc = spawnCli(['relay', 'start', '--store', url, '--key', keyFile, '--node', n.name, '--data', n.data, '--listen', `127.0.0.1:${n.agentsPort}`, '--http', n.http, ...(o.nodeArgs ?? []), ...extra]);
    n.proc = proc;
    n.info = await waitFor(() => {
      try {
        const i = JSON.parse(fs.readFileSync(path.join(n.data, 'relay.json'), 'utf8')) as RelayInfo;
        return i.pid === proc.pid ? i : undefined;
      } catch {
        return undefined;
      }
    }, 30_000, `${n.name} to listen`);
  };
  const killNode = async (n: NodeHandle) => {
    await n.proc?.kill('SIGKILL');
    n.proc = undefined;
  };
  await Promise.all(nodes.map((n) => startNode(n)));
  const front = new AgentFront(() => nodes.filter((n) => n.proc).map((n) => n.agentsPort));
  await front.listen();
  onTestFinished(() => front.close());
  const client = await openRedis(url, { subscriber: true }); // waits through a failover instead of failing
  onTestFinished(() => void client.disconnect());
  return { dir, redis, url, keyFile, nodes, front, client, startNode, killNode };
}

/** The node holding each device's session, the claim's epoch and when the node made it (cluster/handover.ts). */
export async function owners(client: Redis, devices: string[]): Promise<Map<string, { node: string | undefined; epoch: number; at: number }>> {
  const out = new Map<string, { node: string | undefined; epoch: number; at: number }>();
  for (const d of devices) {
    const h = await client.hgetall(`dw:owner:{${d}}`);
    out.set(d, { node: h.node, epoch: Number(h.epoch ?? 0), at: Number(h.at ?? 0) });
  }
  return out;
}

/** Enrolls `device` through the agents' front with an exec rule that records every run; starts its agent. */
export async function recordingAgent(c: TestCluster, device: string): Promise<{ home: string; runs: () => { id: string; sha: string }[]; proc: Proc }> {
  const enroll = await cliOk(['relay', 'device', 'add', device, '--store', c.url]);
  const dir = tempDir();
  const home = path.join(dir, 'agent');
  await cliOk(['init', enroll, '--home', home, '--relay', `127.0.0.1:${c.front.port}`]);
  const rec = recordingHandler(dir);
  const cfg = JSON.parse(fs.readFileSync(path.join(home, 'config.json'), 'utf8')) as Record<string, unknown>;
  cfg.rules = [rec.rule];
  fs.writeFileSync(path.join(home, 'config.json'), JSON.stringify(cfg, null, 2));
  return { home, runs: rec.runs, proc: spawnCli(['agent', '--home', home]) };
}

export interface PostOutcome {
  status: number | 'hang' | 'error';
  code?: string;
  id?: string;
  sha: string;
  device: string;
  sentAt: number;
  answeredAt: number;
}

/** One poster per device, round-robin over the nodes' HTTP ports, until `stop()`; every answer recorded. */
export function posters(c: TestCluster, token: string, devices: string[]): { outcomes: PostOutcome[]; stop: () => Promise<void> } {
  const outcomes: PostOutcome[] = [];
  let stopped = false;
  let turn = 0;
  const running = devices.map(async (device) => {
    for (let i = 0; !stopped && i < 100_000; i++) {
      const body = randomData(1024 + ((i * 7919) % (256 * 1024)));
      const node = c.nodes[turn++ % c.nodes.length]!;
      const o: PostOutcome = { status: 'error', sha: sha256(body), device, sentAt: Date.now(), answeredAt: 0 };
      try {
        const res = await fetch(`http://${node.http}/v1/messages?to=${device}&filename=f${i}.bin`, {
          method: 'POST',
          headers: { authorization: `Bearer ${token}` },
          body: body as unknown as RequestInit['body'],
          signal: AbortSignal.timeout(15_000),
        });
        const json = (await res.json()) as { id?: string; error?: { code: string } };
        o.status = res.status;
        if (json.id) o.id = json.id;
        if (json.error) o.code = json.error.code;
      } catch (err) {
        o.status = (err as Error).name === 'TimeoutError' ? 'hang' : 'error';
      }
      o.answeredAt = Date.now();
      outcomes.push(o);
      if (o.status !== 202) await new Promise((r) => setTimeout(r, 50));
    }
  });
  return {
    outcomes,
    stop: async () => {
      stopped = true;
      await Promise.all(running);
    },
  };
}
