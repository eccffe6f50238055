import type { Redis } from 'ioredis';
import type { Logger } from '../../shared/log.js';
import type { Bus } from './bus.js';
import { channels, keys } from './keys.js';

/** Marks a device online at a node; 1 when it was not online anywhere (then it is an event). */
const ONLINE = `
local prev = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
if prev then return 0 end
return 1`;

/**
 * Marks a device offline, but only if it is still online at `node` and no other node holds its session
 * now (it moved: no event); 1 when it was marked (then it is an event).
 */
const OFFLINE = `
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
local owner = redis.call('HGET', KEYS[2], 'node')
if owner and owner ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1`;

/**
 * Presence across the cluster: `device.online` / `device.offline` are decided in Redis, so each is told
 * once per cluster whichever node the agent is on, and not at all when an agent only moves between nodes.
 * Every node keeps a copy of who is online where, kept current through the bus, for `GET /v1/devices`.
 */
export class ClusterPresence {
  private readonly where = new Map<string, string>();

  private readonly o: { redis: Redis; bus: Bus; node: string; log: Logger };

  constructor(o: { redis: Redis; bus: Bus; node: string; log: Logger }) {
    this.o = o;
    o.bus.on((m) => {
      if (m.t !== 'presence') return;
      if (m.node) this.where.set(m.device, m.node);
      else this.where.delete(m.device);
    });
    o.bus.onResync(() => void this.load().catch(() => {}));
  }

  /** (Re)reads who is online where. */
  async load(): Promise<void> {
    const all = await this.o.redis.hgetall(keys.presence);
    this.where.clear();
    for (const [d, n] of Object.entries(all)) this.where.set(d, n);
  }

  /** The node a device is online at, as last heard. */
  nodeOf(device: string): string | undefined {
    return this.where.get(device);
  }

  /** Devices last heard online at `node`. */
  devicesAt(node: string): string[] {
    return [...this.where].filter(([, n]) => n === node).map(([d]) => d);
  }

  /** Announces the change for the cluster; true when it is an event (first online, or really offline). */
  async change(device: string, online: boolean, node = this.o.node): Promise<boolean> {
    const { redis, bus } = this.o;
    if (online) {
      const first = (await redis.eval(ONLINE, 1, keys.presence, device, node, channels.all, bus.envelope({ t: 'presence', device, node }))) as number;
      this.where.set(device, node);
      return first === 1;
    }
    const done = (await redis.eval(OFFLINE, 2, keys.presence, keys.owner(device), device, node, channels.all, bus.envelope({ t: 'presence', device }))) as number;
    if (done === 1) this.where.delete(device);
    return done === 1;
  }
}
