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
  /** Resource caps against stalled or flooding clients (`relay start --body-timeout …`). */
  caps?: RelayCaps;
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

export interface RelayInfo {
  agents: string;
  http: string;
  public: string;
  publicKey: string;
  pid: number;
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

export class Relay {
  readonly info: RelayInfo;
  readonly store: SqliteStore;
  readonly hub: Hub;
  private readonly listener: Listener;
  private readonly http: HttpApi;
  private readonly o: RelayOptions;
  private closed = false;

  private readonly stopBackground: () => void;

  private constructor(o: RelayOptions, info: RelayInfo, store: SqliteStore, hub: Hub, listener: Listener, http: HttpApi, stopBackground: () => void) {
    this.o = o;
    this.stopBackground = stopBackground;
    this.info = info;
    this.store = store;
    this.hub = hub;
    this.listener = listener;
    this.http = http;
  }

  static async start(o: RelayOptions): Promise<Relay> {
    const p = relayPaths(o.dataDir);
    fs.mkdirSync(o.dataDir, { recursive: true, mode: 0o700 });
    const crypto = o.crypto ?? nodeCrypto;
    const keys = loadOrCreateKeyPair(p.key, crypto);
    const store = await openSqliteStore({ path: p.db });
    const blobs = new Blobs(p.blobs);
    const feed = new EventFeed();
    feed.setMaxListeners(0);
    const hub = new Hub({ store, keys, crypto, log: o.log, feed, ...(o.timers ? { timers: o.timers } : {}), ...(o.limits ? { limits: o.limits } : {}) });
    const listener = new Listener({
      host: o.listen.host,
      port: o.listen.port,
      connection: () => hub.connection(),
      events: { onOutput: (out, link) => hub.onOutput(out, link), onClose: (err, link) => hub.onClose(link, err.code) },
      ...(o.caps?.maxConnsPerIp ? { maxConnectionsPerIp: o.caps.maxConnsPerIp, onRefused: (remote: string, open: number, refused: number) => o.log.warn({ remote, open, refused }, 'connection refused: too many from one address') } : {}),
    });
    const webhooks = new Webhooks({ store, feed, log: o.log });
    const http = new HttpApi({ onTokensChanged: () => webhooks.refresh(), host: o.http.host, port: o.http.port, store, hub, blobs, feed, log: o.log, maxBody: o.maxBody ?? DEFAULT_MAX_BODY, adminToken: adminToken(o.dataDir),
      ...(o.caps?.bodyTimeoutS ? { bodyTimeoutMs: o.caps.bodyTimeoutS * 1000 } : {}),
      ...(o.caps?.maxUploads ? { maxUploads: o.caps.maxUploads } : {}),
      ...(o.caps?.maxUploadsPerToken ? { maxUploadsPerToken: o.caps.maxUploadsPerToken } : {}) });
    const agents = await listener.listen();
    const api = await http.listen();
    const info: RelayInfo = {
      agents: formatHostPort(agents.host, agents.port),
      http: formatHostPort(api.host, api.port),
      public: o.public ?? formatHostPort(agents.host, agents.port),
      publicKey: toHex(keys.publicKey),
      pid: process.pid,
    };
    writeFileAtomic(p.info, JSON.stringify(info, null, 2) + '\n');
    const sweeper = new DeadlineSweeper({ store, hub, feed, log: o.log });
    webhooks.refresh(); // deliver what is still owed from before a restart
    o.log.info(info, 'relay listening');
    return new Relay(o, info, store, hub, listener, http, () => {
      webhooks.close();
      sweeper.close();
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.stopBackground();
    this.hub.close();
    await Promise.all([this.listener.close(), this.http.close()]);
    await this.store.close();
    fs.rmSync(relayPaths(this.o.dataDir).info, { force: true });
    this.o.log.info('relay stopped');
  }
}
