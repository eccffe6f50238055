import type { Redis } from 'ioredis';
import type { Logger } from '../../shared/log.js';
import { keys } from './keys.js';

/** A lease lives this long without renewal (its holder died): another node takes over after it. */
export const LEASE_TTL_MS = 4_000;
/** How often the holder renews, and the others try to take it. */
export const LEASE_TICK_MS = 1_000;
/** The holder stops its work this long before the lease could expire in Redis (clock and pause margin). */
const SAFETY_MS = 1_000;

/** Takes a free lease with the next fencing token: `node|fence`. */
const ACQUIRE = `
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local fence = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. fence, 'PX', ARGV[2])
return fence`;

const RENEW = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0`;

const RELEASE = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`;

export interface LeaseHolder {
  /** This node now holds the lease; `fence` is higher than every earlier holder's. */
  gained(fence: number): void;
  /** It does not any more (renewal failed or came too late): stop at once. */
  lost(): void;
}

export interface LeaseOptions {
  redis: Redis;
  name: string;
  node: string;
  holder: LeaseHolder;
  log: Logger;
  ttlMs?: number;
  tickMs?: number;
  now?: () => number;
}

/**
 * "Once per cluster" work (webhooks, deadline sweeps, presence of dead nodes) runs on the one node holding
 * this lease: SET NX PX with a fencing token, renewed every LEASE_TICK_MS. The holder counts its lease as
 * valid only until (time the renewal was sent + TTL − margin), so a holder that stalls stops before another
 * can start; a holder that dies is replaced within TTL + one tick.
 */
export class Lease {
  private value: string | undefined;
  private validUntil = 0;
  private readonly timer: NodeJS.Timeout;
  private busy = false;
  private closed = false;
  fence = 0;

  private readonly o: LeaseOptions;

  constructor(o: LeaseOptions) {
    this.o = o;
    this.timer = setInterval(() => void this.tick(), o.tickMs ?? LEASE_TICK_MS);
    this.timer.unref();
    void this.tick();
  }

  private now(): number {
    return (this.o.now ?? Date.now)();
  }

  /** Held, and known to be valid right now. */
  held(): boolean {
    return this.value !== undefined && this.now() < this.validUntil;
  }

  async tick(): Promise<void> {
    if (this.busy || this.closed) return;
    this.busy = true;
    const { redis, name, node, log } = this.o;
    const ttl = this.o.ttlMs ?? LEASE_TTL_MS;
    const sent = this.now();
    try {
      if (this.value !== undefined) {
        const ok = (await redis.eval(RENEW, 1, keys.lease(name), this.value, String(ttl))) as number;
        if (ok === 1 && !this.closed) this.validUntil = sent + ttl - SAFETY_MS;
        else this.drop('taken by another node');
      } else {
        const fence = (await redis.eval(ACQUIRE, 2, keys.lease(name), keys.fence(name), node, String(ttl))) as number;
        if (fence > 0 && !this.closed) {
          this.value = `${node}|${fence}`;
          this.fence = fence;
          this.validUntil = sent + ttl - SAFETY_MS;
          log.info({ lease: name, fence }, 'this node now runs the once-per-cluster work');
          this.o.holder.gained(fence);
        }
      }
    } catch (err) {
      if (this.value !== undefined && this.now() >= this.validUntil) this.drop(`renewal failed: ${(err as Error).message}`);
    } finally {
      this.busy = false;
    }
    // A renewal that could not be confirmed in time: stop before another node may start.
    if (this.value !== undefined && this.now() >= this.validUntil) this.drop('not renewed in time');
  }

  private drop(why: string): void {
    if (this.value === undefined) return;
    this.value = undefined;
    this.o.log.warn({ lease: this.o.name, fence: this.fence, why }, 'this node stopped the once-per-cluster work');
    this.o.holder.lost();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    const v = this.value;
    if (v === undefined) return;
    this.value = undefined;
    this.o.holder.lost();
    await this.o.redis.eval(RELEASE, 1, keys.lease(this.o.name), v).catch(() => undefined);
  }
}
