import type { Redis } from 'ioredis';
import type { Logger } from '../../shared/log.js';
import type { EventFeed } from '../events.js';
import type { Store } from '../store/types.js';
import type { ClusterPresence } from './presence.js';
import { listNodes } from './registry.js';
import { keys } from './keys.js';

/** The event a device going offline is stored as (the same shape the hub writes). */
export function offlineEvent(device: string, at: number) {
  return { type: 'device.offline' as const, device, at, data: { device: { name: device, online: false, lastSeen: new Date(at).toISOString() } } };
}

/**
 * A node that left the list (stopped cleanly) hands its agents to the others within a second or two: its
 * devices are told offline only if they are still shown at it this long after it left.
 */
export const STOPPED_GRACE_MS = 5_000;

/**
 * Devices shown online at a node that is gone (stopped, or dead: no heartbeat for DEAD_AFTER_MS) and that
 * did not reconnect elsewhere are announced offline — once, by the node holding the background lease.
 */
export class PresenceReaper {
  private readonly o: { redis: Redis; presence: ClusterPresence; store: Store; feed: EventFeed; log: Logger; now?: () => number };

  /** Nodes not on the list any more, and since when this reaper has seen them missing. */
  private readonly missingSince = new Map<string, number>();

  constructor(o: { redis: Redis; presence: ClusterPresence; store: Store; feed: EventFeed; log: Logger; now?: () => number }) {
    this.o = o;
  }

  async sweep(): Promise<number> {
    const { redis, presence, store, feed, log } = this.o;
    const now = (this.o.now ?? Date.now)();
    const nodes = await listNodes(redis, now);
    const listed = new Set(nodes.map((n) => n.name));
    const alive = new Set(nodes.filter((n) => n.alive).map((n) => n.name));
    for (const node of this.missingSince.keys()) if (listed.has(node)) this.missingSince.delete(node);
    const all = await redis.hgetall(keys.presence);
    let n = 0;
    for (const [device, node] of Object.entries(all)) {
      if (alive.has(node)) continue;
      if (!listed.has(node)) {
        // Stopped cleanly (or forgotten): its agents are moving; give them the time to arrive elsewhere.
        const since = this.missingSince.get(node) ?? now;
        this.missingSince.set(node, since);
        if (now - since < STOPPED_GRACE_MS) continue;
      }
      if (!(await presence.change(device, false, node))) continue;
      await store.appendEvents([offlineEvent(device, now)]);
      log.info({ device, node }, 'device offline: its node is gone');
      n++;
    }
    if (n > 0) feed.notify();
    return n;
  }
}
