import type { Redis } from 'ioredis';
import type { Logger } from '../../shared/log.js';
import type { EventFeed } from '../events.js';
import { OFFLINE_GRACE_MS, type Hub, type HubCluster, type StatusEvent } from '../hub.js';
import type { StoreWakeups, Wakeup } from '../store/redis/wakeups.js';
import { FINAL_STATUSES, type MessageStatus, type Store } from '../store/types.js';
import { Bus, type BusMessage } from './bus.js';
import { requireClusterConfig, type ClusterConfig } from './config.js';
import { openRedis } from './connect.js';
import { ClusterCode, ClusterError } from './errors.js';
import { DeviceOwnership, type SessionHandover } from './handover.js';
import { Lease } from './lease.js';
import { NodeControl } from './control.js';
import { Redirects } from './redirect.js';
import type { SessionHandoverState } from '../../protocol/handover.js';
import { ClusterPresence } from './presence.js';
import { offlineEvent, PresenceReaper } from './reaper.js';
import { HEARTBEAT_MS, NodeRegistry } from './registry.js';

/** Work that runs on one node of the cluster at a time (webhooks, deadline sweeps). */
export interface Background {
  close(): void;
}

export interface ClusterNodeOptions {
  /** The `--store` URL. */
  url: string;
  /** This node's name (unique in the cluster). */
  node: string;
  log: Logger;
}

export interface AttachOptions {
  hub: Hub;
  feed: EventFeed;
  store: Store;
  /** The store's per-device wake-ups (the Redis store publishes one with every change). */
  wakeups: StoreWakeups;
  /** This node's addresses, for the registry. */
  agents: string;
  http: string;
  /** Starts the once-per-cluster work when this node gets the lease; `gate` says whether it still holds it. */
  background: (gate: () => boolean) => Background;
}

const NODE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/**
 * One relay process as a node of a cluster: registry and heartbeat, the bus between nodes, device
 * ownership (one session per device), presence once per cluster, and the lease for once-per-cluster work.
 * The hub sees it only through `HubCluster`; the hand-over point for issue 13 is `handover`.
 */
export class ClusterNode implements HubCluster {
  readonly config: ClusterConfig;
  readonly handover: SessionHandover;
  private readonly ownership: DeviceOwnership;
  private readonly presenceState: ClusterPresence;
  /** Seamless moves of agents between nodes (PROTOCOL 7.16): drain, rebalance. */
  readonly redirects: Redirects;
  private control: NodeControl | undefined;
  private registry: NodeRegistry | undefined;
  private lease: Lease | undefined;
  private hub: Hub | undefined;
  private feed: EventFeed | undefined;
  private appendedPending = false;
  private unsubscribe: (() => void) | undefined;
  private closed = false;
  private readonly timers: NodeJS.Timeout[] = [];

  private readonly o: ClusterNodeOptions;
  private readonly redis: Redis;
  private readonly bus: Bus;

  private constructor(o: ClusterNodeOptions, redis: Redis, bus: Bus, config: ClusterConfig) {
    this.o = o;
    this.redis = redis;
    this.bus = bus;
    this.config = config;
    this.ownership = new DeviceOwnership({ redis, bus, node: o.node });
    this.handover = this.ownership;
    this.presenceState = new ClusterPresence({ redis, bus, node: o.node, log: o.log });
    this.redirects = new Redirects({ redis, bus, node: o.node, ownership: this.ownership, log: o.log });
    bus.on((m) => this.onBus(m));
    bus.onResync(() => this.resync());
  }

  /** Connects to Redis and reads the cluster's description (DW_CLUSTER_NOT_INITIALISED without one). */
  static async open(o: ClusterNodeOptions): Promise<ClusterNode> {
    if (!NODE_NAME.test(o.node)) throw new ClusterError(ClusterCode.BAD_NODE_NAME, `--node must be 1-64 letters, digits, '.', '_' or '-', got '${o.node}'`);
    const redis = await openRedis(o.url, { name: `dropwire:${o.node}` });
    try {
      const config = await requireClusterConfig(redis);
      const sub = await openRedis(o.url, { subscriber: true, name: `dropwire:${o.node}:bus` });
      const bus = await Bus.open({ pub: redis, sub, node: o.node, log: o.log });
      const node = new ClusterNode(o, redis, bus, config);
      await node.presenceState.load();
      return node;
    } catch (err) {
      redis.disconnect();
      throw err;
    }
  }

  get name(): string {
    return this.o.node;
  }

  /** Starts heart-beating and competing for the lease, once the hub and the listeners exist. */
  async attach(a: AttachOptions): Promise<void> {
    const { log } = this.o;
    this.hub = a.hub;
    this.feed = a.feed;
    this.ownership.attach({
      retireSession: (device, code) => {
        if (a.hub.hasSession(device)) log.info({ device, code }, 'session retired: the device has a session on another node now');
        a.hub.retireSession(device, code);
      },
      handOut: (device, requestId, by) => this.redirects.handOut(device, requestId, by),
    });
    this.redirects.attach(a.hub);
    this.control = new NodeControl({ redis: this.redis, bus: this.bus, node: this.o.node, hub: a.hub, redirects: this.redirects, log });
    this.registry = new NodeRegistry({
      redis: this.redis,
      node: { name: this.o.node, agents: a.agents, http: a.http, pid: process.pid, startedAt: Date.now() },
      connected: () => a.hub.onlineCount(),
      log,
    });
    await this.registry.beat();
    a.hub.on('status', (e: StatusEvent) => {
      if (e.status === 'received') this.registry?.countDelivered(); // messages/s in `relay nodes`
    });
    // Every change in the store publishes its device's wake-up in the same script (store/redis/wakeups.ts):
    // new messages reach the node holding the device, and every node's long-polls and event streams wake.
    this.unsubscribe = await a.wakeups.subscribe((w) => this.onWakeup(w));
    const reaper = new PresenceReaper({ redis: this.redis, presence: this.presenceState, store: a.store, feed: a.feed, log });
    let work: Background | undefined;
    let reaping: NodeJS.Timeout | undefined;
    this.lease = new Lease({
      redis: this.redis,
      name: 'background',
      node: this.o.node,
      log,
      holder: {
        gained: () => {
          work = a.background(() => this.lease?.held() === true);
          // Reaping starts two heartbeats after the lease was taken: after a Redis outage every live node
          // has heart-beaten again by then, and is not taken for dead.
          const since = Date.now();
          reaping = setInterval(() => {
            if (!this.lease?.held() || Date.now() - since < 2 * HEARTBEAT_MS) return;
            reaper.sweep().catch((err: unknown) => log.warn({ err }, 'presence sweep failed'));
          }, HEARTBEAT_MS);
          reaping.unref();
        },
        lost: () => {
          work?.close();
          work = undefined;
          clearInterval(reaping);
        },
      },
    });
    // Devices this node showed online before it restarted and that did not come back to it: offline.
    const stale = setTimeout(() => void this.reapOwnStale(a.store).catch(() => {}), OFFLINE_GRACE_MS + 500);
    stale.unref();
    this.timers.push(stale);
  }

  private async reapOwnStale(store: Store): Promise<void> {
    for (const device of this.presenceState.devicesAt(this.o.node)) {
      if (this.hub?.hasSession(device)) continue;
      const at = Date.now();
      if (await this.presenceState.change(device, false)) {
        await store.appendEvents([offlineEvent(device, at)]);
        this.feed?.notify();
      }
    }
  }

  /** Resolves once `relay drain` emptied this node. */
  get drained(): Promise<void> {
    return this.control?.drained ?? new Promise(() => {});
  }

  // --- HubCluster ------------------------------------------------------------------------------

  takeHandover(device: string, requestId: string, sessionId: Uint8Array): Promise<SessionHandoverState> {
    return this.redirects.take(device, requestId, sessionId);
  }

  async claim(device: string): Promise<void> {
    const h = await this.ownership.takeOver({ device, reason: 'reconnect' });
    if (h.from) this.o.log.info({ device, from: h.from, epoch: h.epoch }, 'session taken over from another node');
  }

  released(device: string): void {
    // A session replaced on this node by a new one of the same device is not a release: look after this turn.
    setImmediate(() => {
      if (this.closed || this.hub?.hasSession(device)) return;
      this.ownership.release(device).catch(() => {});
    });
  }

  cancel(device: string, id: string): void {
    this.ownership.route(device, { t: 'cancel', device, id }).catch((err: unknown) => this.o.log.warn({ err, device, id }, 'could not pass a cancel on'));
  }

  presence(device: string, online: boolean): Promise<boolean> {
    return this.presenceState.change(device, online);
  }

  onlineElsewhere(device: string): boolean {
    const n = this.presenceState.nodeOf(device);
    return n !== undefined && n !== this.o.node;
  }

  /** Tells every node (this one included) that a device was removed. */
  dropEverywhere(device: string): void {
    this.bus.toAll({ t: 'drop', device });
  }

  // --- from other nodes ------------------------------------------------------------------------

  private onWakeup(w: Wakeup): void {
    const hub = this.hub;
    if (!hub) return;
    if (w.type === 'message.queued' && hub.hasSession(w.device)) hub.notify(w.device);
    const status = w.type.startsWith('message.') ? (w.type.slice('message.'.length) as MessageStatus) : undefined;
    if (status && w.messageId && FINAL_STATUSES.has(status)) {
      // Wakes `GET /v1/messages/ID?wait=` here, whichever node applied the status (it re-reads the store).
      const e: StatusEvent = { id: w.messageId, to: w.device, from: '', status, at: Date.now() };
      hub.emit('status', e);
    }
    // One wake-up of the event readers (SSE streams, webhook runner) per turn of the event loop.
    if (this.appendedPending) return;
    this.appendedPending = true;
    setImmediate(() => {
      this.appendedPending = false;
      this.feed?.notify();
    });
  }

  private onBus(m: BusMessage): void {
    const hub = this.hub;
    if (!hub) return;
    switch (m.t) {
      case 'cancel':
        if (hub.hasSession(m.device)) hub.cancel(m.device, m.id);
        return;
      case 'drop':
        hub.drop(m.device);
        return;
    }
  }

  /** After the bus was away: look for work of every local session, and let every reader re-read the log. */
  private resync(): void {
    for (const device of this.ownership.claimed()) if (this.hub?.hasSession(device)) this.hub.notify(device);
    this.feed?.notify();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const t of this.timers) clearTimeout(t);
    this.unsubscribe?.();
    await this.lease?.close();
    await Promise.all(this.ownership.claimed().map((d) => this.ownership.release(d).catch(() => {})));
    await this.registry?.close();
    await this.bus.close();
    this.redis.disconnect();
  }
}
