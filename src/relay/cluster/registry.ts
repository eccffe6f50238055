import type { Redis } from 'ioredis';
import type { Logger } from '../../shared/log.js';
import { keys } from './keys.js';

/** How often a node tells the cluster it is alive. */
export const HEARTBEAT_MS = 2_000;
/** A node silent this long is shown dead (and its devices are reaped). */
export const DEAD_AFTER_MS = 10_000;
/** A dead node's entry is forgotten after this long. */
const FORGET_AFTER_MS = 3600_000;

/** One node as `relay nodes` shows it. */
export interface NodeInfo {
  name: string;
  /** Where agents dial this node (HOST:PORT). */
  agents: string;
  /** Its HTTP API (HOST:PORT). */
  http: string;
  pid: number;
  startedAt: number;
  /** Agents connected at the last heartbeat. */
  connected: number;
  /** Messages this node delivered per second, over the last heartbeat interval. */
  messagesPerS: number;
  lastHeartbeat: number;
  alive: boolean;
  /** True once `relay drain` runs on it: it takes no new agents, and none is moved to it. */
  draining: boolean;
}

/** Marks a node draining (or ready): `relay nodes` shows it, and no agent is moved to it. */
export async function setNodeState(redis: Redis, name: string, state: 'ready' | 'draining'): Promise<void> {
  await redis.hset(keys.node(name), 'state', state);
}

export interface LocalNode {
  name: string;
  agents: string;
  http: string;
  pid: number;
  startedAt: number;
}

/** Heartbeat at registration, then every HEARTBEAT_MS. */
const BEAT = `
redis.call('HSET', KEYS[2], 'name', ARGV[1], 'agents', ARGV[2], 'http', ARGV[3], 'pid', ARGV[4], 'startedAt', ARGV[5],
  'connected', ARGV[6], 'messagesPerS', ARGV[7], 'lastHeartbeat', ARGV[8])
redis.call('PEXPIRE', KEYS[2], ARGV[9])
redis.call('ZADD', KEYS[1], ARGV[8], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[8] - ARGV[9])
return 1`;

/**
 * Registers this node and keeps its entry fresh: name, addresses, start time, connected agents and its
 * delivery rate. A heartbeat that fails (Redis away) is retried at the next tick; the node keeps serving.
 */
export class NodeRegistry {
  private readonly timer: NodeJS.Timeout;
  private delivered = 0;
  private lastBeat: number;
  private closed = false;

  private readonly o: { redis: Redis; node: LocalNode; connected: () => number; log: Logger; now?: () => number; intervalMs?: number };

  constructor(o: { redis: Redis; node: LocalNode; connected: () => number; log: Logger; now?: () => number; intervalMs?: number }) {
    this.o = o;
    this.lastBeat = this.now();
    this.timer = setInterval(() => void this.beat().catch(() => {}), o.intervalMs ?? HEARTBEAT_MS);
    this.timer.unref();
  }

  private now(): number {
    return (this.o.now ?? Date.now)();
  }

  /** Counts one message delivered by this node (for messages/s). */
  countDelivered(): void {
    this.delivered++;
  }

  async beat(): Promise<void> {
    if (this.closed) return;
    const { redis, node } = this.o;
    const now = this.now();
    const rate = (this.delivered * 1000) / Math.max(1, now - this.lastBeat);
    this.delivered = 0;
    this.lastBeat = now;
    await redis.eval(
      BEAT, 2, keys.nodes, keys.node(node.name),
      node.name, node.agents, node.http, String(node.pid), String(node.startedAt),
      String(this.o.connected()), rate.toFixed(1), String(now), String(FORGET_AFTER_MS),
    );
  }

  /** Stops heart-beating and takes the node off the list (a clean stop is not a death). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    await this.o.redis.multi().zrem(keys.nodes, this.o.node.name).del(keys.node(this.o.node.name)).exec().catch(() => undefined);
  }
}

/** Every node that heart-beat within the last hour, alive ones first, by name. */
export async function listNodes(redis: Redis, now = Date.now()): Promise<NodeInfo[]> {
  const names = await redis.zrange(keys.nodes, 0, -1);
  const pipe = redis.pipeline();
  for (const n of names) pipe.hgetall(keys.node(n));
  const rows = (await pipe.exec()) ?? [];
  const out: NodeInfo[] = [];
  for (const [err, h] of rows) {
    const r = h as Record<string, string> | null;
    if (err || !r || !r.name) continue;
    const lastHeartbeat = Number(r.lastHeartbeat);
    out.push({
      name: r.name,
      agents: r.agents ?? '',
      http: r.http ?? '',
      pid: Number(r.pid),
      startedAt: Number(r.startedAt),
      connected: Number(r.connected),
      messagesPerS: Number(r.messagesPerS),
      lastHeartbeat,
      alive: now - lastHeartbeat <= DEAD_AFTER_MS,
      draining: r.state === 'draining',
    });
  }
  return out.sort((a, b) => Number(b.alive) - Number(a.alive) || a.name.localeCompare(b.name));
}
