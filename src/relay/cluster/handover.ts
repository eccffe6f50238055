import type { Redis } from 'ioredis';
import type { Bus, BusMessage } from './bus.js';
import { channels, keys } from './keys.js';

/**
 * THE HAND-OVER POINT: where a device's session moves from one node to another. Today the only reason is a
 * reconnect (the agent dialled node B while node A still holds its session); issue 13's seamless redirect
 * calls the same `takeOver` with reason `redirect` and its request id, and awaits `retired` (make before
 * break) before it lets the agent swap connections.
 *
 * Ownership lives in Redis (`owner:{device}`: node and a fencing `epoch`). Every claim raises the epoch in
 * the same script that tells the previous holder to retire, so a retire that arrives late (the device came
 * back meanwhile) is recognised by its older epoch and ignored.
 */
export interface HandoverRequest {
  device: string;
  reason: 'reconnect' | 'redirect';
  /** Issue 13: the REDIRECT request id the agent presents in its HANDOVER hello. */
  requestId?: string;
}

export interface Handover {
  device: string;
  /** Fencing token of this claim: higher than every earlier claim of the device. */
  epoch: number;
  /** The node that held the session before, when it was another node. */
  from?: string;
  /** Resolves true once `from` says its session is retired, false if it did not say so in time (dead node). */
  retired: Promise<boolean>;
}

export interface SessionHandover {
  takeOver(r: HandoverRequest): Promise<Handover>;
  /** This node's session of the device ended (and was not taken over): give the claim up. */
  release(device: string): Promise<void>;
  /** The node holding the device's session, if any. */
  holder(device: string): Promise<string | undefined>;
}

/** How long `retired` waits for the previous holder's answer. */
export const RETIRE_ACK_MS = 2_000;

const CLAIM = `
local prev = redis.call('HGET', KEYS[1], 'node')
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'node', ARGV[1], 'at', ARGV[2])
if prev and prev ~= ARGV[1] then
  local m = { t = 'retire', device = ARGV[3], epoch = epoch, by = ARGV[1], reason = ARGV[5] }
  if ARGV[6] ~= '' then m.requestId = ARGV[6] end
  redis.call('PUBLISH', ARGV[4] .. prev, cjson.encode({ f = ARGV[1], m = m }))
end
return { prev or '', epoch }`;

/** Gives a claim up only if it is still this node's, with this epoch (the epoch itself stays: it only grows). */
const RELEASE = `
if redis.call('HGET', KEYS[1], 'node') == ARGV[1] and redis.call('HGET', KEYS[1], 'epoch') == ARGV[2] then
  redis.call('HDEL', KEYS[1], 'node', 'at')
  return 1
end
return 0`;

/** Publishes to the device's holder, unless that is the sender (no loops). */
const ROUTE = `
local o = redis.call('HGET', KEYS[1], 'node')
if o and o ~= ARGV[1] then
  redis.call('PUBLISH', ARGV[2] .. o, ARGV[3])
  return 1
end
return 0`;

/** What a node does with its own session when another node takes the device over. */
export interface SessionRetirer {
  /** Closes this node's session of the device, if any (the agent is elsewhere now). */
  retireSession(device: string, code: string): void;
  /** PROTOCOL 7.16 step 6: the device's session goes to node `by` for redirect `requestId` (redirect.ts). */
  handOut?(device: string, requestId: string, by: string): void;
}

/** Device ownership across the cluster and the hand-over between nodes (one session per device). */
export class DeviceOwnership implements SessionHandover {
  /** Epoch of each claim this node holds. */
  private readonly mine = new Map<string, number>();
  private readonly waiting = new Map<string, { epoch: number; done: (ok: boolean) => void }>();
  private retirer: SessionRetirer | undefined;

  private readonly o: { redis: Redis; bus: Bus; node: string; now?: () => number };

  constructor(o: { redis: Redis; bus: Bus; node: string; now?: () => number }) {
    this.o = o;
    o.bus.on((m) => this.onBus(m));
  }

  attach(retirer: SessionRetirer): void {
    this.retirer = retirer;
  }

  async takeOver(r: HandoverRequest): Promise<Handover> {
    const { redis, node } = this.o;
    const now = (this.o.now ?? Date.now)();
    const [prev, epoch] = (await redis.eval(CLAIM, 1, keys.owner(r.device), node, String(now), r.device, channels.node(''), r.reason, r.requestId ?? '')) as [string, number];
    this.mine.set(r.device, epoch);
    if (!prev || prev === node) return { device: r.device, epoch, retired: Promise.resolve(true) };
    const retired = new Promise<boolean>((resolve) => {
      const key = `${r.device}\n${epoch}`;
      const t = setTimeout(() => {
        this.waiting.delete(key);
        resolve(false);
      }, RETIRE_ACK_MS);
      t.unref();
      this.waiting.set(key, {
        epoch,
        done: (ok) => {
          clearTimeout(t);
          this.waiting.delete(key);
          resolve(ok);
        },
      });
    });
    return { device: r.device, epoch, from: prev, retired };
  }

  async release(device: string): Promise<void> {
    const epoch = this.mine.get(device);
    if (epoch === undefined) return;
    this.mine.delete(device);
    await this.o.redis.eval(RELEASE, 1, keys.owner(device), this.o.node, String(epoch));
  }

  async holder(device: string): Promise<string | undefined> {
    return (await this.o.redis.hget(keys.owner(device), 'node')) ?? undefined;
  }

  /** Devices this node holds claims of. */
  claimed(): string[] {
    return [...this.mine.keys()];
  }

  /** True while this node holds the device's latest claim (as far as it has been told). */
  holds(device: string): boolean {
    return this.mine.has(device);
  }

  /** Sends `m` to the node holding `device` (not to this one); false when no other node holds it. */
  async route(device: string, m: BusMessage): Promise<boolean> {
    const { redis, bus, node } = this.o;
    return ((await redis.eval(ROUTE, 1, keys.owner(device), node, channels.node(''), bus.envelope(m))) as number) === 1;
  }

  private onBus(m: BusMessage): void {
    if (m.t === 'retire') {
      const epoch = this.mine.get(m.device);
      if (epoch !== undefined && epoch > m.epoch) return; // we claimed it again since: that retire is stale
      this.mine.delete(m.device);
      if (m.reason === 'redirect' && m.requestId && this.retirer?.handOut) this.retirer.handOut(m.device, m.requestId, m.by);
      else this.retirer?.retireSession(m.device, m.reason === 'redirect' ? 'DW_REDIRECTED' : 'DW_SESSION_MOVED');
      this.o.bus.toNode(m.by, { t: 'retired', device: m.device, epoch: m.epoch, by: this.o.node });
    } else if (m.t === 'retired') {
      this.waiting.get(`${m.device}\n${m.epoch}`)?.done(true);
    }
  }
}
