import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { toHex } from '../protocol/bytes.js';
import type { CryptoBackend } from '../protocol/crypto.js';
import { nodeCrypto } from '../protocol/crypto-node.js';
import type { ConnectionTimers, SessionLimits } from '../protocol/limits.js';
import { encodeEnrollmentToken, formatHostPort } from '../shared/enrollment.js';
import { DropwireError } from '../shared/errors.js';
import type { Logger } from '../shared/log.js';
import { writeFileAtomic } from '../shared/files.js';
import { FolderLock } from '../shared/lock.js';
import { loadOrCreateKeyPair } from '../transport/identity.js';
import { Listener } from '../transport/listener.js';
import { CONNECT_PATH, WebSocketAcceptor } from '../transport/websocket.js';
import { Blobs } from './blobs.js';
import { DeadlineSweeper } from './deadlines.js';
import { EventFeed } from './events.js';
import { Webhooks } from './webhooks.js';
import { Downloads } from './downloads.js';
import { HttpApi, messageId } from './http.js';
import { Console } from './console/routes.js';
import { MetricsServer, RelayMetrics } from './metrics.js';
import { Hub } from './hub.js';
import { Uploads } from './uploads.js';
import { SitePush } from './receive/push.js';
import { TlsFiles } from './tls.js';
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
  /** Folder of the executables `GET /download/FILE` serves (default: release/ of the package). */
  downloads?: string;
  log: Logger;
  crypto?: CryptoBackend;
  timers?: Partial<ConnectionTimers>;
  limits?: Partial<SessionLimits>;
  /** PEM files: serve the HTTP port as HTTPS (and agents' wss://); re-read on `reloadTls()` and on change. */
  tls?: { certFile: string; keyFile: string };
  /** Resource caps against stalled or flooding clients (`relay start --body-timeout …`). */
  caps?: RelayCaps;
  /** Also serve GET /metrics without a token on this address (`relay start --metrics HOST:PORT`). */
  metrics?: { host: string; port: number };
}

export interface RelayCaps {
  /** Seconds an upload may send nothing before 408 DW_TIMEOUT (default 30). */
  bodyTimeoutS?: number;
  /** Uploads at once, in total and per token (429 DW_BUSY beyond). */
  maxUploads?: number;
  maxUploadsPerToken?: number;
  /** Connections from one IP address on the agents port (default: no cap). */
  maxConnsPerIp?: number;
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
  /** The URL agents may dial over WebSocket on the HTTP port (wss:// with --tls-cert), PROTOCOL 11. */
  websocket: string;
  public: string;
  publicKey: string;
  pid: number;
  /** The node's name, in a cluster. */
  node?: string;
  /** Where GET /metrics is served without a token (`--metrics`). */
  metrics?: string;
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
  private readonly lock: FolderLock;

  private constructor(o: RelayOptions, lock: FolderLock, info: RelayInfo, store: S, hub: Hub, listener: Listener, http: HttpApi, stopBackground: () => Promise<void>) {
    this.o = o;
    this.lock = lock;
    this.stopBackground = stopBackground;
    this.info = info;
    this.store = store;
    this.hub = hub;
    this.listener = listener;
    this.http = http;
  }

  /**
   * A single relay: SQLite in the data folder, created when it is new. One relay per folder: a second one
   * fails with DW_DATA_LOCKED before it touches anything (the lock goes with the process, see lock.ts).
   */
  static async start(o: RelayOptions): Promise<Relay> {
    const p = relayPaths(o.dataDir);
    fs.mkdirSync(o.dataDir, { recursive: true, mode: 0o700 });
    return Relay.locked(o.dataDir, async (lock) => {
      const keys = loadOrCreateKeyPair(p.key, o.crypto ?? nodeCrypto);
      const store = await openSqliteStore({ path: p.db });
      return Relay.compose(o, lock, store, keys);
    });
  }

  private static async locked<R>(dataDir: string, fn: (lock: FolderLock) => Promise<R>): Promise<R> {
    const lock = FolderLock.acquire(dataDir, { what: 'relay' });
    try {
      return await fn(lock);
    } catch (err) {
      lock.release();
      throw err;
    }
  }

  /**
   * One node of a cluster: refuses to start without an initialised cluster or with another key; then the
   * same parts as a single relay, on the Redis store, with the cluster runtime beside the hub.
   */
  static async startNode(o: NodeOptions): Promise<Relay<RedisStore>> {
    fs.mkdirSync(o.dataDir, { recursive: true, mode: 0o700 });
    return Relay.locked(o.dataDir, async (lock) => {
      const { startClusterNode } = await import('./cluster/start.js');
      const { cluster, store, keys, bodies } = await startClusterNode(o);
      try {
        return await Relay.compose(o, lock, store, keys, { node: cluster, wakeups: store.wakeups, bodies });
      } catch (err) {
        await cluster.close();
        await store.close();
        throw err;
      }
    });
  }

  private static async compose<S extends Store>(o: RelayOptions, lock: FolderLock, store: S, keys: KeyPair, inCluster?: { node: ClusterNode; wakeups: StoreWakeups; bodies: BodyStorage }): Promise<Relay<S>> {
    const cluster = inCluster?.node;
    const p = relayPaths(o.dataDir);
    const crypto = o.crypto ?? nodeCrypto;
    const blobs: BodyStorage = inCluster?.bodies ?? new Blobs(p.blobs);
    const feed = new EventFeed();
    feed.setMaxListeners(0);
    const hub = new Hub({ store, keys, crypto, log: o.log, feed, ...(cluster ? { cluster, bodies: blobs } : {}), ...(o.timers ? { timers: o.timers } : {}), ...(o.limits ? { limits: o.limits } : {}) });
    if (cluster) hub.ready = false; // agents only once the node is registered and heart-beating (below)
    // Files agents send (PROTOCOL 7.14) and their WATCHes.
    hub.sender = new Uploads({ store, hub, blobs, uploadsDir: path.join(o.dataDir, 'uploads'), feed, log: o.log, maxBody: o.maxBody ?? DEFAULT_MAX_BODY, newId: messageId });
    const listener = new Listener({
      host: o.listen.host,
      port: o.listen.port,
      connection: () => hub.connection(),
      events: { onOutput: (out, link) => hub.onOutput(out, link), onClose: (err, link) => hub.onClose(link, err.code) },
      ...(o.caps?.maxConnsPerIp ? { maxConnectionsPerIp: o.caps.maxConnsPerIp, onRefused: (remote: string, open: number, refused: number) => o.log.warn({ remote, open, refused }, 'connection refused: too many from one address') } : {}),
    });
    // In a cluster, webhooks and deadline sweeps run on the one node holding the lease (cluster/lease.ts).
    const background = (gate?: () => boolean) => {
      const webhooks = new Webhooks({ store, feed, log: o.log, ...(gate ? { gate } : {}) });
      const sweeper = new DeadlineSweeper({ store, hub, feed, log: o.log, ...(gate ? { gate } : {}) });
      const pushes = new SitePush({ store, hub, feed, log: o.log, bodies: blobs, ...(gate ? { gate } : {}) });
      webhooks.refresh(); // deliver what is still owed from before a restart
      return {
        refresh: () => {
          webhooks.refresh();
          pushes.refresh();
        },
        close: () => {
          webhooks.close();
          pushes.close();
          sweeper.close();
        },
      };
    };
    let local: ReturnType<typeof background> | undefined;
    const tlsFiles = o.tls ? new TlsFiles({ ...o.tls, log: o.log }) : undefined;
    const metrics = new RelayMetrics({ hub, store, log: o.log, ...(cluster ? { node: cluster.name } : {}) });
    // What enrollment tokens made by the console carry: the cluster's agent addresses, or `public` once listening.
    let publicAddresses: string[] = [];
    const agentAddresses = (): string[] => cluster?.config.agents ?? publicAddresses;
    const operatorConsole = new Console({
      store, hub, blobs, feed, log: o.log, metrics,
      sessionSecret: keys.privateKey,
      secure: tlsFiles !== undefined,
      enrollmentToken: (name, secret, expiresAt) => encodeEnrollmentToken({ relays: agentAddresses(), relayKey: toHex(keys.publicKey), name, secret, expiresAt }),
      dropDevice: (name) => (cluster ? cluster.dropEverywhere(name) : hub.drop(name)),
    });
    const metricsServer = o.metrics ? new MetricsServer(metrics, o.log) : undefined;
    const websockets = new WebSocketAcceptor((stream) => listener.adopt(stream, tlsFiles ? 'wss' : 'ws'));
    const http = new HttpApi({ ...(tlsFiles ? { tls: tlsFiles.read() } : {}), onUpgrade: (req, socket, head) => websockets.upgrade(req, socket, head), onTokensChanged: () => local?.refresh(), host: o.http.host, port: o.http.port, store, hub, blobs, feed, log: o.log, maxBody: o.maxBody ?? DEFAULT_MAX_BODY, adminToken: adminToken(o.dataDir),
      downloads: new Downloads(o.downloads ? { dir: o.downloads } : {}),
      pages: operatorConsole,
      ...(o.caps?.bodyTimeoutS ? { bodyTimeoutMs: o.caps.bodyTimeoutS * 1000 } : {}),
      ...(o.caps?.maxUploads ? { maxUploads: o.caps.maxUploads } : {}),
      ...(o.caps?.maxUploadsPerToken ? { maxUploadsPerToken: o.caps.maxUploadsPerToken } : {}) });
    let agents: { host: string; port: number };
    let api: { host: string; port: number };
    let metricsAt: { host: string; port: number } | undefined;
    try {
      agents = await listener.listen().catch((err: unknown) => {
        throw addressInUse(err, 'agents', o.listen, '--listen');
      });
      api = await http.listen().catch((err: unknown) => {
        throw addressInUse(err, 'HTTP API', o.http, '--http');
      });
      if (metricsServer) {
        metricsAt = await metricsServer.listen(o.metrics!.host, o.metrics!.port).catch((err: unknown) => {
          throw addressInUse(err, 'metrics', o.metrics!, '--metrics');
        });
      }
    } catch (err) {
      hub.close();
      metrics.close();
      await Promise.allSettled([listener.close(), http.close(), metricsServer?.close()]);
      if (!inCluster) await store.close(); // a node's store is closed by startNode
      throw err;
    }
    const info: RelayInfo = {
      agents: formatHostPort(agents.host, agents.port),
      http: formatHostPort(api.host, api.port),
      websocket: `${tlsFiles ? 'wss' : 'ws'}://${formatHostPort(api.host, api.port)}${CONNECT_PATH}`,
      public: o.public ?? formatHostPort(agents.host, agents.port),
      publicKey: toHex(keys.publicKey),
      pid: process.pid,
      ...(cluster ? { node: cluster.name } : {}),
      ...(metricsAt ? { metrics: formatHostPort(metricsAt.host, metricsAt.port) } : {}),
    };
    publicAddresses = info.public.split(',').map((a) => a.trim()).filter(Boolean);
    if (inCluster) {
      await inCluster.node.attach({ hub, feed, store, wakeups: inCluster.wakeups, agents: info.public, http: info.http, background });
      hub.ready = true;
    }
    else local = background();
    writeFileAtomic(p.info, JSON.stringify(info, null, 2) + '\n');
    tlsFiles?.watch((pair) => http.setSecureContext(pair));
    o.log.info(info, cluster ? 'relay node listening' : 'relay listening');
    const relay = new Relay<S>(o, lock, info, store, hub, listener, http, async () => {
      websockets.close();
      metrics.close();
      await metricsServer?.close();
      tlsFiles?.close();
      local?.close();
      await cluster?.close();
    });
    relay.tlsFiles = tlsFiles;
    relay.clusterNode = cluster;
    return relay;
  }

  private tlsFiles: TlsFiles | undefined;
  private clusterNode: ClusterNode | undefined;

  /** Resolves once `relay drain` has moved every agent off this node (never on a single relay). */
  get drained(): Promise<void> {
    return this.clusterNode?.drained ?? new Promise(() => {});
  }

  /** Re-reads the TLS certificate and key (SIGHUP); false when there is no TLS or the new pair is bad. */
  reloadTls(): boolean {
    return this.tlsFiles?.reload('SIGHUP') ?? false;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.stopBackground();
    this.hub.close();
    await Promise.all([this.listener.close(), this.http.close()]);
    await this.store.close();
    fs.rmSync(relayPaths(this.o.dataDir).info, { force: true });
    this.lock.release();
    this.o.log.info('relay stopped');
  }
}

/** EADDRINUSE / EACCES on a listening port: which port, and the flag that changes it (no stack). */
function addressInUse(err: unknown, what: string, at: { host: string; port: number }, flag: string): unknown {
  const code = (err as NodeJS.ErrnoException).code;
  const addr = formatHostPort(at.host, at.port);
  if (code === 'EADDRINUSE') return new DropwireError('DW_ADDRESS_IN_USE', `the ${what} address ${addr} is already in use (another relay or program listens there): choose another with ${flag} HOST:PORT`, { cause: err });
  if (code === 'EACCES') return new DropwireError('DW_ADDRESS_DENIED', `no permission to listen on ${addr} for the ${what} (ports below 1024 need privileges): choose another with ${flag} HOST:PORT`, { cause: err });
  if (code === 'EADDRNOTAVAIL') return new DropwireError('DW_ADDRESS_UNAVAILABLE', `${at.host} is not an address of this machine (${what}): choose another with ${flag} HOST:PORT`, { cause: err });
  return err;
}
