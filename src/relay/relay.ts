import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { toHex } from '../protocol/bytes.js';
import type { CryptoBackend } from '../protocol/crypto.js';
import { nodeCrypto } from '../protocol/crypto-node.js';
import type { ConnectionTimers, SessionLimits } from '../protocol/limits.js';
import { formatHostPort } from '../shared/enrollment.js';
import type { Logger } from '../shared/log.js';
import { writeFileAtomic } from '../shared/files.js';
import { loadOrCreateKeyPair } from '../transport/identity.js';
import { Listener } from '../transport/listener.js';
import { Blobs } from './blobs.js';
import { DeadlineSweeper } from './deadlines.js';
import { EventFeed } from './events.js';
import { Webhooks } from './webhooks.js';
import { HttpApi } from './http.js';
import { Hub } from './hub.js';
import { openSqliteStore, type SqliteStore } from './store/sqlite.js';
import type { Store } from './store/types.js';
import type { ClusterNode } from './cluster/node.js';
import type { RedisStore } from './store/redis/index.js';
import type { StoreWakeups } from './store/redis/wakeups.js';
import type { BodyStorage } from './body-storage.js';
import type { KeyPair } from '../protocol/crypto.js';

export const DEFAULT_MAX_BODY = 2 * 1024 * 1024 * 1024;

export interface RelayOptions {
  dataDir: string;
  listen: { host: string; port: number };
  http: { host: string; port: number };
  /** The address agents dial, written into enrollment tokens. */
  public?: string;
  maxBody?: number;
  log: Logger;
  crypto?: CryptoBackend;
  timers?: Partial<ConnectionTimers>;
  limits?: Partial<SessionLimits>;
}

/** One node of a cluster (`relay start --store`): state in Redis, the cluster's key from `keyFile`. */
export interface NodeOptions extends RelayOptions {
  store: string;
  keyFile: string;
  node: string;
  /** Run on a Redis that does not fsync every write (a warning is logged). */
  unsafeRedis?: boolean;
  /** Each 202 waits until this many replicas hold the message (WAIT N). */
  redisReplicas?: number;
}

export interface RelayInfo {
  agents: string;
  http: string;
  public: string;
  publicKey: string;
  pid: number;
  /** The node's name, in a cluster. */
  node?: string;
}

export const relayPaths = (dataDir: string) => ({
  key: path.join(dataDir, 'relay.key'),
  db: path.join(dataDir, 'relay.db'),
  blobs: path.join(dataDir, 'blobs'),
  info: path.join(dataDir, 'relay.json'),
  admin: path.join(dataDir, 'admin.token'),
});

/** The admin secret the CLI uses to reach a running relay; created once, readable only by its owner. */
export function adminToken(dataDir: string): string {
  const file = relayPaths(dataDir).admin;
  try {
    return fs.readFileSync(file, 'utf8').trim();
  } catch {
    const t = randomBytes(24).toString('hex');
    writeFileAtomic(file, t + '\n', 0o600);
    return t;
  }
}

export class Relay<S extends Store = SqliteStore> {
  readonly info: RelayInfo;
  readonly store: S;
  readonly hub: Hub;
  private readonly listener: Listener;
  private readonly http: HttpApi;
  private readonly o: RelayOptions;
  private closed = false;

  private readonly stopBackground: () => Promise<void>;

  private constructor(o: RelayOptions, info: RelayInfo, store: S, hub: Hub, listener: Listener, http: HttpApi, stopBackground: () => Promise<void>) {
    this.o = o;
    this.stopBackground = stopBackground;
    this.info = info;
    this.store = store;
    this.hub = hub;
    this.listener = listener;
    this.http = http;
  }

  /** A single relay: SQLite in the data folder. */
  static async start(o: RelayOptions): Promise<Relay> {
    const p = relayPaths(o.dataDir);
    fs.mkdirSync(o.dataDir, { recursive: true, mode: 0o700 });
    const keys = loadOrCreateKeyPair(p.key, o.crypto ?? nodeCrypto);
    const store = await openSqliteStore({ path: p.db });
    return Relay.compose(o, store, keys);
  }

  /**
   * One node of a cluster: refuses to start without an initialised cluster or with another key; then the
   * same parts as a single relay, on the Redis store, with the cluster runtime beside the hub.
   */
  static async startNode(o: NodeOptions): Promise<Relay<RedisStore>> {
    fs.mkdirSync(o.dataDir, { recursive: true, mode: 0o700 });
    const { startClusterNode } = await import('./cluster/start.js');
    const { cluster, store, keys, bodies } = await startClusterNode(o);
    try {
      return await Relay.compose(o, store, keys, { node: cluster, wakeups: store.wakeups, bodies });
    } catch (err) {
      await cluster.close();
      await store.close();
      throw err;
    }
  }

  private static async compose<S extends Store>(o: RelayOptions, store: S, keys: KeyPair, inCluster?: { node: ClusterNode; wakeups: StoreWakeups; bodies: BodyStorage }): Promise<Relay<S>> {
    const cluster = inCluster?.node;
    const p = relayPaths(o.dataDir);
    const crypto = o.crypto ?? nodeCrypto;
    const blobs: BodyStorage = inCluster?.bodies ?? new Blobs(p.blobs);
    const feed = new EventFeed();
    feed.setMaxListeners(0);
    const hub = new Hub({ store, keys, crypto, log: o.log, feed, ...(cluster ? { cluster, bodies: blobs } : {}), ...(o.timers ? { timers: o.timers } : {}), ...(o.limits ? { limits: o.limits } : {}) });
    const listener = new Listener({
      host: o.listen.host,
      port: o.listen.port,
      connection: () => hub.connection(),
      events: { onOutput: (out, link) => hub.onOutput(out, link), onClose: (err, link) => hub.onClose(link, err.code) },
    });
    // In a cluster, webhooks and deadline sweeps run on the one node holding the lease (cluster/lease.ts).
    const background = (gate?: () => boolean) => {
      const webhooks = new Webhooks({ store, feed, log: o.log, ...(gate ? { gate } : {}) });
      const sweeper = new DeadlineSweeper({ store, hub, feed, log: o.log, ...(gate ? { gate } : {}) });
      webhooks.refresh(); // deliver what is still owed from before a restart
      return {
        refresh: () => webhooks.refresh(),
        close: () => {
          webhooks.close();
          sweeper.close();
        },
      };
    };
    let local: ReturnType<typeof background> | undefined;
    const http = new HttpApi({ onTokensChanged: () => local?.refresh(), host: o.http.host, port: o.http.port, store, hub, blobs, feed, log: o.log, maxBody: o.maxBody ?? DEFAULT_MAX_BODY, adminToken: adminToken(o.dataDir) });
    const agents = await listener.listen();
    const api = await http.listen();
    const info: RelayInfo = {
      agents: formatHostPort(agents.host, agents.port),
      http: formatHostPort(api.host, api.port),
      public: o.public ?? formatHostPort(agents.host, agents.port),
      publicKey: toHex(keys.publicKey),
      pid: process.pid,
      ...(cluster ? { node: cluster.name } : {}),
    };
    if (inCluster) await inCluster.node.attach({ hub, feed, store, wakeups: inCluster.wakeups, agents: info.public, http: info.http, background });
    else local = background();
    writeFileAtomic(p.info, JSON.stringify(info, null, 2) + '\n');
    o.log.info(info, cluster ? 'relay node listening' : 'relay listening');
    return new Relay<S>(o, info, store, hub, listener, http, async () => {
      local?.close();
      await cluster?.close();
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.stopBackground();
    this.hub.close();
    await Promise.all([this.listener.close(), this.http.close()]);
    await this.store.close();
    fs.rmSync(relayPaths(this.o.dataDir).info, { force: true });
    this.o.log.info('relay stopped');
  }
}
