import type { Redis } from 'ioredis';
import type { Logger } from '../../shared/log.js';
import { channels } from './keys.js';

/** What nodes tell each other (JSON on Redis pub/sub). Small: the state itself is in Redis. */
export type BusMessage =
  /** Another node took the device's session over with this claim epoch: retire yours if it is older. */
  | { t: 'retire'; device: string; epoch: number; by: string; reason: string; requestId?: string }
  /** The receiving node retired its session after a `retire` (the hand-over point's answer). */
  | { t: 'retired'; device: string; epoch: number; by: string }
  /** Stop sending a message (expired or cancelled). */
  | { t: 'cancel'; device: string; id: string }
  /** A device was announced online at `node` or offline (`node` absent). */
  | { t: 'presence'; device: string; node?: string }
  /** A device was removed: drop its session wherever it is. */
  | { t: 'drop'; device: string }
  /** PROTOCOL 7.16 step 6: the source froze the device's session; its state is at `keys.handoverState(rid)`. */
  | { t: 'handover-state'; rid: string; device: string; ok: boolean }
  /** Step 9: the target carries the session now (the hand-over is complete). */
  | { t: 'redirect-done'; rid: string; device: string }
  /** The source cancelled a pending request (refused by the agent, or timed out). */
  | { t: 'redirect-cancel'; rid: string; device: string; reason: string }
  /** From `relay drain|rebalance|move` on any machine: work for this node; answers go to `reply`. */
  | { t: 'command'; id: string; reply: string; cmd: NodeCommand };

/** What the command channel asks of a node (control.ts). */
export type NodeCommand =
  | { op: 'status' }
  | { op: 'drain'; to?: string; rate: number; timeoutMs: number }
  | { op: 'move'; to: string; count?: number; device?: string; rate: number; timeoutMs: number };

export type BusHandler = (m: BusMessage, from: string) => void;

/** What goes on the wire: the sender's node name and the message (Lua scripts that publish build the same). */
export function envelope(from: string, m: BusMessage): string {
  return JSON.stringify({ f: from, m });
}

/**
 * The cluster's pub/sub: one subscriber connection per node on its own channel and the broadcast channel;
 * publishing goes through the command connection. A message published while Redis is away is lost: the
 * receivers re-read the state they care about when their subscriber reconnects (`onResync`).
 */
export class Bus {
  private readonly handlers = new Set<BusHandler>();
  private readonly resyncs = new Set<() => void>();
  private closed = false;

  private readonly pub: Redis;
  private readonly sub: Redis;
  private readonly node: string;
  private readonly log: Logger;

  private constructor(pub: Redis, sub: Redis, node: string, log: Logger) {
    this.pub = pub;
    this.sub = sub;
    this.node = node;
    this.log = log;
  }

  /** Subscribes `sub` (a connection made for it) to this node's channel and the broadcast channel. */
  static async open(o: { pub: Redis; sub: Redis; node: string; log: Logger }): Promise<Bus> {
    const bus = new Bus(o.pub, o.sub, o.node, o.log);
    o.sub.on('message', (_channel: string, text: string) => bus.receive(text));
    await o.sub.subscribe(channels.node(o.node), channels.all);
    // From here on, 'ready' means a reconnection (ioredis subscribes again by itself): what was published
    // meanwhile is lost, so the receivers re-read what they care about.
    o.sub.on('ready', () => {
      if (bus.closed) return;
      o.log.info('cluster bus reconnected; resynchronising');
      for (const r of bus.resyncs) r();
    });
    return bus;
  }

  on(h: BusHandler): void {
    this.handlers.add(h);
  }

  onResync(fn: () => void): void {
    this.resyncs.add(fn);
  }

  private receive(text: string): void {
    let env: { f: string; m: BusMessage };
    try {
      env = JSON.parse(text) as { f: string; m: BusMessage };
    } catch {
      return;
    }
    if (env.f === this.node && env.m.t === 'presence') return; // our own broadcast
    for (const h of this.handlers) {
      try {
        h(env.m, env.f);
      } catch (err) {
        this.log.error({ err, type: env.m.t }, 'cluster bus handler failed');
      }
    }
  }

  /** The envelope every publisher writes (scripts that publish use the same). */
  envelope(m: BusMessage): string {
    return envelope(this.node, m);
  }

  /** Fire and forget: a lost publish is made up for by the receivers' resync. */
  toNode(node: string, m: BusMessage): void {
    if (this.closed) return;
    this.pub.publish(channels.node(node), this.envelope(m)).catch(() => {});
  }

  /** Fire and forget, to every node (this one included). */
  toAll(m: BusMessage): void {
    if (this.closed) return;
    this.pub.publish(channels.all, this.envelope(m)).catch(() => {});
  }

  async close(): Promise<void> {
    this.closed = true;
    this.sub.disconnect();
  }
}
