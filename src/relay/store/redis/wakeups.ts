/**
 * The per-device wake-ups of the Redis store, for the cluster runtime: every transition script PUBLISHes
 * `{"seq":N,"type":"message.queued","id":"…"}` on the device's channel (keys.ts `wakeChannel`) in the same
 * script as the change, so a node that hears it can read the change at once. A separate small interface
 * beside `Store`: a single-node relay does not need it.
 */
import type { Redis } from 'ioredis';
import { closedError, downError } from '../errors.js';
import type { EventType } from '../types.js';
import type { StoreKeys } from './keys.js';

export interface Wakeup {
  device: string;
  /** The event's seq (as `eventsAfter` gives it). */
  seq: number;
  type: EventType;
  messageId?: string;
}

export interface StoreWakeups {
  /**
   * Calls `listener` for every device's wake-up (from any node) until the returned function is called.
   * Resolves once subscribed; the subscription comes back by itself after Redis was away (wake-ups
   * published meanwhile are missed: read `eventsAfter` from the last seq seen to catch up).
   */
  subscribe(listener: (w: Wakeup) => void): Promise<() => void>;
}

export class RedisWakeups implements StoreWakeups {
  private readonly source: Redis;
  private readonly keys: StoreKeys;
  private sub: Redis | undefined;
  private subscribing: Promise<Redis> | undefined;
  private readonly listeners = new Set<(w: Wakeup) => void>();
  private closed = false;

  constructor(source: Redis, keys: StoreKeys) {
    this.source = source;
    this.keys = keys;
  }

  async subscribe(listener: (w: Wakeup) => void): Promise<() => void> {
    if (this.closed) throw closedError();
    this.subscribing ??= this.open();
    try {
      await this.subscribing;
    } catch (err) {
      this.subscribing = undefined;
      throw err;
    }
    this.listeners.add(listener);
    return () => void this.listeners.delete(listener);
  }

  private async open(): Promise<Redis> {
    // A subscriber connection takes no other command: its own client, same settings as the store's.
    const sub = this.source.duplicate({ lazyConnect: true, enableOfflineQueue: true });
    sub.on('error', () => {}); // reconnection failures: the client keeps trying
    const prefixLength = this.keys.wakeChannel('').length - 1; // `${p}wake:{` (the closing brace follows)
    sub.on('pmessage', (_pattern: string, channel: string, message: string) => {
      const device = channel.slice(prefixLength, -1);
      let w: { seq: number; type: EventType; id?: string };
      try {
        w = JSON.parse(message) as typeof w;
      } catch {
        return;
      }
      const wake: Wakeup = { device, seq: w.seq, type: w.type, ...(w.id !== undefined ? { messageId: w.id } : {}) };
      for (const l of this.listeners) l(wake);
    });
    try {
      await sub.connect();
      await sub.psubscribe(this.keys.wakePattern);
    } catch (err) {
      sub.disconnect();
      throw downError('subscribe to wake-ups', err);
    }
    this.sub = sub;
    return sub;
  }

  async close(): Promise<void> {
    this.closed = true;
    this.listeners.clear();
    const sub = this.sub ?? (await this.subscribing?.catch(() => undefined));
    sub?.disconnect();
  }
}
