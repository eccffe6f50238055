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
import { CONNECT_PATH, WebSocketAcceptor } from '../transport/websocket.js';
import { Blobs } from './blobs.js';
import { DeadlineSweeper } from './deadlines.js';
import { EventFeed } from './events.js';
import { Webhooks } from './webhooks.js';
import { HttpApi } from './http.js';
import { Hub } from './hub.js';
import { TlsFiles } from './tls.js';
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
  /** PEM files: serve the HTTP port as HTTPS (and agents' wss://); re-read on `reloadTls()` and on change. */
  tls?: { certFile: string; keyFile: string };
}

export interface RelayInfo {
  agents: string;
  http: string;
  /** The URL agents may dial over WebSocket on the HTTP port (wss:// with --tls-cert), PROTOCOL 11. */
  websocket: string;
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
    });
    const webhooks = new Webhooks({ store, feed, log: o.log });
    const tlsFiles = o.tls ? new TlsFiles({ ...o.tls, log: o.log }) : undefined;
    const websockets = new WebSocketAcceptor((stream) => listener.adopt(stream, tlsFiles ? 'wss' : 'ws'));
    const http = new HttpApi({ ...(tlsFiles ? { tls: tlsFiles.read() } : {}), onUpgrade: (req, socket, head) => websockets.upgrade(req, socket, head), onTokensChanged: () => webhooks.refresh(), host: o.http.host, port: o.http.port, store, hub, blobs, feed, log: o.log, maxBody: o.maxBody ?? DEFAULT_MAX_BODY, adminToken: adminToken(o.dataDir) });
    const agents = await listener.listen();
    const api = await http.listen();
    const info: RelayInfo = {
      agents: formatHostPort(agents.host, agents.port),
      http: formatHostPort(api.host, api.port),
      websocket: `${tlsFiles ? 'wss' : 'ws'}://${formatHostPort(api.host, api.port)}${CONNECT_PATH}`,
      public: o.public ?? formatHostPort(agents.host, agents.port),
      publicKey: toHex(keys.publicKey),
      pid: process.pid,
    };
    writeFileAtomic(p.info, JSON.stringify(info, null, 2) + '\n');
    const sweeper = new DeadlineSweeper({ store, hub, feed, log: o.log });
    webhooks.refresh(); // deliver what is still owed from before a restart
    tlsFiles?.watch((pair) => http.setSecureContext(pair));
    o.log.info(info, 'relay listening');
    const relay = new Relay(o, info, store, hub, listener, http, () => {
      websockets.close();
      tlsFiles?.close();
      webhooks.close();
      sweeper.close();
    });
    relay.tlsFiles = tlsFiles;
    return relay;
  }

  private tlsFiles: TlsFiles | undefined;

  /** Re-reads the TLS certificate and key (SIGHUP); false when there is no TLS or the new pair is bad. */
  reloadTls(): boolean {
    return this.tlsFiles?.reload('SIGHUP') ?? false;
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
