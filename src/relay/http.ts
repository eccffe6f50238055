import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { Readable } from 'node:stream';
import busboy from 'busboy';
import { DropwireError } from '../shared/errors.js';
import type { Logger } from '../shared/log.js';
import { INLINE_MAX, uploadedMessage, type BodyStorage } from './body-storage.js';
import type { CutThrough } from './cut-through.js';
import { eventBody, scopeAllows, visibleTo, type EventFeed } from './events.js';
import type { Hub, StatusEvent } from './hub.js';
import { cancelMessage, RESERVED_KEY_PREFIX, retryLinks, retryMessage, type MessageActionDeps } from './message-actions.js';
import { plainSize } from '../protocol/seal.js';
import { receiveSmallBody } from './small-body.js';
import { DEFAULT_DEADLINE_S, HttpError, MAX_FILENAME_BYTES, MAX_SECONDS } from './http-error.js';
import { FINAL_STATUSES, type MessageRecord, type Store, type TokenRecord } from './store/types.js';

export interface HttpOptions {
  host: string;
  port: number;
  store: Store;
  hub: Hub;
  blobs: BodyStorage;
  feed: EventFeed;
  log: Logger;
  /** Largest body accepted (413 beyond). */
  maxBody: number;
  /** Secret for /v1/admin (read by the CLI from the data folder). */
  adminToken: string;
  /** Tokens were added or removed by the CLI (webhooks re-read them). */
  onTokensChanged?: () => void;
  /** Serve HTTPS with this certificate and key (PEM); `setSecureContext` replaces them later. */
  tls?: { cert: Buffer; key: Buffer };
  /** HTTP upgrades (the agents' WebSocket at /v1/connect, PROTOCOL 11). Without it, upgrades are refused. */
  onUpgrade?: (req: http.IncomingMessage, socket: Socket, head: Buffer) => void;
  /** Installers and executables for hosts (downloads.ts): answers true for the requests it served. */
  downloads?: { handle(req: http.IncomingMessage, res: http.ServerResponse, url: URL): Promise<boolean> };
  /** The operator console and /metrics (console/routes.ts): answers true for the requests it served. */
  pages?: { handle(req: http.IncomingMessage, res: http.ServerResponse, url: URL): Promise<boolean> };
  now?: () => number;
  /** An upload that sends no byte for this long ends with 408 DW_TIMEOUT, nothing stored (default 30 s). */
  bodyTimeoutMs?: number;
  /** Uploads in progress at once, in total and per token; beyond, 429 DW_BUSY. */
  maxUploads?: number;
  maxUploadsPerToken?: number;
}

export const DEFAULT_BODY_TIMEOUT_S = 30;
export const DEFAULT_MAX_UPLOADS = 1024;
export const DEFAULT_MAX_UPLOADS_PER_TOKEN = 256;

/** Defaults for a message's alert deadline and time to live, in seconds. */
export const MAX_WAIT_S = 60;
/** After an error mid-upload, at most this much more of the body is read (and dropped) before answering. */
const DRAIN_BYTES = 64 * 1024 * 1024;
const DRAIN_MS = 10_000;
const SSE_KEEPALIVE_MS = 15_000;
const TOKEN_CACHE_MS = 2_000;

/** The HTTP status of each coded error the API answers with (besides `HttpError`s, which carry theirs). */
const STATUS_OF_CODE: Record<string, number> = {
  DW_MESSAGE_EXISTS: 409,
  DW_TOO_LATE: 409,
  DW_NOT_RETRYABLE: 409,
  DW_NOT_FOUND: 404,
  DW_UNKNOWN_DEVICE: 404,
  DW_BODY_MISSING: 410,
};

/** The client went away mid-request (an aborted upload): nothing to answer, nothing wrong here. */
class ClientGone extends DropwireError {
  constructor() {
    super('DW_CLIENT_GONE', 'the client closed the connection before the request was complete');
  }
}

/** The endpoints and the methods each takes (405 with `Allow` for the others). */
function endpoint(parts: string[]): { name: string; methods: string[] } | undefined {
  if (parts[0] !== 'v1') return undefined;
  const [, what, arg, sub] = parts;
  const n = parts.length;
  if (what === 'messages' && n === 2) return { name: 'messages', methods: ['POST'] };
  if (what === 'messages' && n === 3 && arg === 'batch') return { name: 'batch', methods: ['POST'] };
  if (what === 'messages' && n === 3) return { name: 'message', methods: ['GET', 'DELETE'] };
  if (what === 'messages' && n === 4 && sub === 'retry' && arg) return { name: 'retry', methods: ['POST'] };
  if (what === 'events' && n === 2) return { name: 'events', methods: ['GET'] };
  if (what === 'devices' && n === 2) return { name: 'devices', methods: ['GET'] };
  if (what === 'devices' && n === 3) return { name: 'device', methods: ['GET'] };
  return undefined;
}

/** Random bytes drawn 4 KiB at a time: one system call per 512 message ids instead of one each. */
let entropy = Buffer.alloc(0);
let entropyAt = 0;

/** Time-ordered and unguessable: base-36 milliseconds, then 16 random hex digits. */
export function messageId(now: number): string {
  if (entropyAt + 8 > entropy.length) {
    entropy = randomBytes(4096);
    entropyAt = 0;
  }
  entropyAt += 8;
  return `${now.toString(36)}${entropy.toString('hex', entropyAt - 8, entropyAt)}`;
}

export function tokenHash(secret: string): string {
  return createHash('sha256').update(secret).digest('hex');
}

/** Hashes of the bearer secrets seen lately: a sender sends the same one with every request. */
const recentHashes = new Map<string, string>();
function cachedTokenHash(secret: string): string {
  let h = recentHashes.get(secret);
  if (h === undefined) {
    if (recentHashes.size >= 1_000) recentHashes.clear();
    h = tokenHash(secret);
    recentHashes.set(secret, h);
  }
  return h;
}


/**
 * What the store answered for a key, kept for `ttlMs`: found entries only (a miss asks again), at most
 * `max` of them (all dropped when full). Used for tokens and device names, read on every request.
 */
class RecentlyFound<V> {
  private readonly entries = new Map<string, { value: V; at: number }>();
  private readonly ttlMs: number;
  private readonly max: number;

  constructor(ttlMs: number, max: number) {
    this.ttlMs = ttlMs;
    this.max = max;
  }

  async get(key: string, now: number, load: (key: string) => Promise<V | undefined>): Promise<V | undefined> {
    const hit = this.entries.get(key);
    if (hit && now - hit.at < this.ttlMs) return hit.value;
    const value = await load(key);
    if (value === undefined) {
      this.entries.delete(key);
      return undefined;
    }
    if (this.entries.size >= this.max) this.entries.clear();
    this.entries.set(key, { value, at: now });
    return value;
  }

  delete(key: string): void {
    this.entries.delete(key);
  }

  clear(): void {
    this.entries.clear();
  }
}

/** Plain HTTP, or HTTPS when a certificate is given (`relay start --tls-cert --tls-key`). */
function createServer(tls: HttpOptions['tls'], handler: http.RequestListener): http.Server | https.Server {
  return tls ? https.createServer({ cert: tls.cert, key: tls.key }, handler) : http.createServer(handler);
}

/** The sender HTTP API (README "HTTP API"). */
export class HttpApi {
  readonly server: http.Server | https.Server;
  private readonly o: HttpOptions;
  private readonly now: () => number;

  constructor(o: HttpOptions) {
    this.o = o;
    this.now = o.now ?? Date.now;
    this.bodyTimeoutMs = o.bodyTimeoutMs ?? DEFAULT_BODY_TIMEOUT_S * 1000;
    o.hub.setMaxListeners(0); // one `status` listener per long poll
    this.server = createServer(o.tls, (req, res) => {
      this.route(req, res).catch((err: unknown) => {
        if (err instanceof ClientGone || (req.destroyed && !req.complete)) {
          this.o.log.info({ method: req.method, path: req.url?.slice(0, 200), remote: req.socket.remoteAddress }, 'request aborted by the client');
          res.destroy();
          return;
        }
        if (err instanceof HttpError && err.status === 408) {
          // An idle upload: answer now and close; waiting for the rest of the body is what it stalls.
          res.shouldKeepAlive = false;
          res.once('finish', () => req.destroy());
          return this.fail(res, err);
        }
        if (req.complete) return this.fail(res, err);
        // Answer only once the client has finished sending (up to a bound), so curl and fetch read the
        // error instead of a reset; the bytes are discarded.
        res.shouldKeepAlive = false;
        let extra = 0;
        const answer = () => {
          clearTimeout(timer);
          req.off('end', answer);
          this.fail(res, err);
        };
        const timer = setTimeout(() => {
          answer();
          req.destroy();
        }, DRAIN_MS);
        req.on('data', (c: Buffer) => {
          extra += c.length;
          if (extra > DRAIN_BYTES) {
            answer();
            req.destroy();
          }
        });
        req.once('end', answer);
        req.resume();
      });
    });
    this.server.requestTimeout = 0; // large uploads take as long as they take (idle ones end: bodyTimeoutMs)
    this.server.headersTimeout = 30_000;
    // What Node's parser refuses (bad request line, oversized headers, not HTTP at all) gets a coded JSON
    // answer too, not Node's empty default one.
    this.server.on('clientError', (err: Error & { code?: string; rawPacket?: Buffer }, socket: Socket) => this.clientError(err, socket));
    if (o.onUpgrade) this.server.on('upgrade', o.onUpgrade);
  }

  /** New certificate and key for connections from now on; open ones keep theirs (HTTPS only). */
  setSecureContext(pair: { cert: Buffer; key: Buffer }): void {
    if (this.server instanceof https.Server) this.server.setSecureContext(pair);
  }

  private readonly bodyTimeoutMs: number;
  /** Uploads being received, in total and by token name (caps: 429 DW_BUSY). */
  private uploading = 0;
  private readonly uploadingBy = new Map<string, number>();

  listen(): Promise<{ host: string; port: number }> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.o.port, this.o.host, () => {
        const a = this.server.address() as AddressInfo;
        resolve({ host: a.address, port: a.port });
      });
    });
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }

  private async route(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    let url: URL;
    try {
      url = new URL(req.url ?? '/', 'http://relay');
    } catch {
      throw new HttpError(400, 'DW_BAD_REQUEST', 'bad request URL');
    }
    // Installers and executables first: their paths are plain file names, never decoded (downloads.ts).
    if (!url.pathname.startsWith('/v1/') && (await this.o.downloads?.handle(req, res, url))) return;
    if (!url.pathname.startsWith('/v1/') && (await this.o.pages?.handle(req, res, url))) return;
    let parts: string[];
    try {
      // Decoded only here, checked before any use: a bad escape is the client's error, not ours.
      parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);
    } catch {
      throw new HttpError(400, 'DW_BAD_REQUEST', 'bad percent-encoding in the request path');
    }
    const method = req.method ?? 'GET';
    if (url.pathname === '/healthz') {
      if (method !== 'GET') throw new HttpError(405, 'DW_METHOD_NOT_ALLOWED', `${method} is not allowed here; use GET`, { allow: 'GET' });
      // A node being drained (`relay drain`) says so with 503, so that a load balancer stops sending it agents.
      if (!this.o.hub.ready) return send(res, 503, { ok: false, ready: false, online: 0, error: { code: 'DW_NODE_NOT_READY', message: 'this relay node is still joining the cluster' } });
      if (this.o.hub.draining) return send(res, 503, { ok: false, draining: true, online: this.o.hub.onlineCount(), error: { code: 'DW_NODE_DRAINING', message: 'this relay node is being drained' } });
      return send(res, 200, { ok: true, online: this.o.hub.onlineCount() });
    }
    if (parts[0] === 'v1' && parts[1] === 'admin') return this.admin(req, res, method, parts.slice(2));
    if (parts[0] === 'v1' && parts[1] === 'inbox') {
      // Sites that receive files from devices and pull them (src/relay/receive/inbox.ts).
      const site = await this.authenticate(req);
      const { inbox, InboxError } = await import('./receive/inbox.js');
      return inbox({ store: this.o.store, hub: this.o.hub, feed: this.o.feed, now: this.now }, req, res, url, site, parts).catch((err: unknown) => {
        throw err instanceof InboxError ? new HttpError(err.status, err.code, err.message) : err;
      });
    }
    const e = endpoint(parts);
    if (!e) throw new HttpError(404, 'DW_NOT_FOUND', 'no such endpoint');
    if (!e.methods.includes(method)) {
      throw new HttpError(405, 'DW_METHOD_NOT_ALLOWED', `${method} is not allowed here; use ${e.methods.join(' or ')}`, { allow: e.methods.join(', ') });
    }
    const token = await this.authenticate(req);
    switch (`${method} ${e.name}`) {
      case 'POST messages':
        return this.postMessage(req, res, url, token);
      case 'POST batch':
        return this.postBatch(req, res, url, token);
      case 'GET message':
        return this.getMessage(res, url, token, parts[2]!);
      case 'DELETE message':
        return this.cancel(res, token, parts[2]!);
      case 'POST retry':
        return this.retry(res, token, parts[2]!);
      case 'GET events':
        return this.events(req, res, url, token);
      case 'GET devices':
        return this.listDevices(res, token);
      default:
        return this.getDevice(res, token, parts[2]!);
    }
  }

  /** A request Node's parser refused: a coded JSON answer, then the connection closes. */
  private clientError(err: Error & { code?: string; rawPacket?: Buffer }, socket: Socket): void {
    const pending = (socket as Socket & { _httpMessage?: http.ServerResponse })._httpMessage;
    if (err.code === 'ECONNRESET' || !socket.writable || pending?.headersSent) {
      socket.destroy();
      return;
    }
    const [status, code, message] = clientErrorAnswer(err);
    this.o.log.info({ code: err.code, status, remote: socket.remoteAddress }, 'malformed request refused');
    const text = JSON.stringify({ error: { code, message } }) + '\n';
    socket.end(
      `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(text)}\r\nconnection: close\r\n\r\n${text}`,
    );
  }

  /** Tokens recently seen, by hash: a removed token stops working within TOKEN_CACHE_MS. */
  private readonly tokens = new RecentlyFound<TokenRecord>(TOKEN_CACHE_MS, 10_000);
  /**
   * Device names recently found in the store, so a POST does not read the device row each time. A removed
   * device is forgotten at once when the relay is told (`devices/NAME/drop`), else within TOKEN_CACHE_MS.
   */
  private readonly devices = new RecentlyFound<true>(TOKEN_CACHE_MS, 100_000);

  private async authenticate(req: http.IncomingMessage): Promise<TokenRecord> {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '');
    if (!m) throw new HttpError(401, 'DW_UNAUTHORIZED', 'missing Authorization: Bearer TOKEN');
    const token = await this.tokens.get(cachedTokenHash(m[1]!), this.now(), (hash) => this.o.store.getTokenByHash(hash));
    if (!token) throw new HttpError(401, 'DW_UNAUTHORIZED', 'unknown token');
    if (token.role === 'metrics') throw new HttpError(403, 'DW_FORBIDDEN', `token '${token.name}' only reads /metrics`);
    return token;
  }

  private async deviceExists(name: string): Promise<boolean> {
    const found = await this.devices.get(name, this.now(), async (n) => ((await this.o.store.getDevice(n)) ? true : undefined));
    return found === true;
  }

  /** Counts an upload against the caps, or refuses it (429 DW_BUSY); the returned function ends it. */
  private startUpload(token: TokenRecord): () => void {
    const mine = this.uploadingBy.get(token.name) ?? 0;
    const max = this.o.maxUploads ?? DEFAULT_MAX_UPLOADS;
    const maxMine = this.o.maxUploadsPerToken ?? DEFAULT_MAX_UPLOADS_PER_TOKEN;
    if (this.uploading >= max || mine >= maxMine) {
      const which = this.uploading >= max ? `the relay already receives ${max} uploads` : `token '${token.name}' already sends ${maxMine} uploads`;
      throw new HttpError(429, 'DW_BUSY', `${which} at once; try again shortly`, { 'retry-after': '1' });
    }
    this.uploading++;
    this.uploadingBy.set(token.name, mine + 1);
    let ended = false;
    return () => {
      if (ended) return;
      ended = true;
      this.uploading--;
      const left = (this.uploadingBy.get(token.name) ?? 1) - 1;
      if (left > 0) this.uploadingBy.set(token.name, left);
      else this.uploadingBy.delete(token.name);
    };
  }

  private async postMessage(req: http.IncomingMessage, res: http.ServerResponse, url: URL, token: TokenRecord): Promise<void> {
    const { hub, maxBody } = this.o;
    const to = url.searchParams.get('to') ?? '';
    if (!to) throw new HttpError(400, 'DW_BAD_REQUEST', 'query parameter "to" is required');
    // One answer for "no such device" and "not yours": a scoped token cannot probe device names.
    if (!scopeAllows(token.to, to) || !(await this.deviceExists(to))) throw unknownDevice(to);
    const declared = Number(req.headers['content-length'] ?? NaN);
    if (Number.isFinite(declared) && declared > maxBody + 64 * 1024) {
      throw new HttpError(413, 'DW_TOO_LARGE', `body larger than the limit of ${maxBody} bytes`);
    }
    const deadline = seconds(url, 'deadline', DEFAULT_DEADLINE_S);
    const ttl = seconds(url, 'ttl', undefined);
    const allowEmpty = url.searchParams.get('allowEmpty') === '1';
    // PROTOCOL 12: the body is an envelope sealed to the device's key (GET /v1/devices/NAME `publicKey`).
    const sealed = url.searchParams.get('sealed') === '1';
    const idempotencyKey = req.headers['idempotency-key'];
    const ikey = typeof idempotencyKey === 'string' && idempotencyKey.length > 0 ? idempotencyKey.slice(0, 200) : undefined;
    if (ikey?.startsWith(RESERVED_KEY_PREFIX)) {
      throw new HttpError(400, 'DW_BAD_REQUEST', `Idempotency-Key may not start with '${RESERVED_KEY_PREFIX}' (kept for the relay's retries)`);
    }
    const multipart = /^multipart\/form-data/i.test(req.headers['content-type'] ?? '');
    const filename = url.searchParams.get('filename') ?? '';
    if (!filename && !multipart) throw filenameRequired();
    checkFilename(filename, true);
    const now = this.now();
    const id = messageId(now);

    const endUpload = this.startUpload(token);
    // PROTOCOL 7.18: a body of known size beyond INLINE_MAX may go to the device while it arrives; the hash,
    // and so the file, reaches the device only once the message is stored (below). Multipart bodies
    // (size unknown until their end) and every case the hub declines go store-and-forward.
    let ct: CutThrough | undefined;
    if (!multipart && Number.isSafeInteger(declared) && declared > INLINE_MAX && declared <= maxBody && validFilename(filename) && (!sealed || plainSize(declared) !== undefined)) {
      ct = hub.cutThrough({ id, to, from: token.name, filename, size: declared, createdAt: now, ...(sealed ? { sealed: true } : {}) });
    }
    try {
      await this.receiveMessage(req, res, { token, to, id, now, ct, multipart, filename, deadline, ttl, allowEmpty, sealed, ikey, endUpload });
    } catch (err) {
      ct?.abort();
      throw err;
    }
  }

  private async receiveMessage(
    req: http.IncomingMessage,
    res: http.ServerResponse,
    a: { token: TokenRecord; to: string; id: string; now: number; ct: CutThrough | undefined; multipart: boolean; filename: string; deadline: number; ttl: number | undefined; allowEmpty: boolean; sealed: boolean; ikey: string | undefined; endUpload: () => void },
  ): Promise<void> {
    const { store, hub, blobs, log, maxBody } = this.o;
    const { token, to, id, now, ct, multipart, deadline, ttl, allowEmpty, sealed, ikey, endUpload } = a;
    let filename = a.filename;
    let received;
    // Ends the body read: the idle timer (408), or the client leaving mid-body.
    const stop = new AbortController();
    req.setTimeout(this.bodyTimeoutMs, () =>
      stop.abort(new HttpError(408, 'DW_TIMEOUT', `no bytes of the body arrived for ${this.bodyTimeoutMs / 1000} s; nothing was stored`)),
    );
    const onClose = () => {
      if (!req.complete) stop.abort(new ClientGone());
    };
    req.once('close', onClose);
    try {
      if (multipart) {
        const file = await multipartFile(req, maxBody, stop.signal);
        filename ||= file.filename;
        try {
          received = await blobs.receive(untilAborted(file.stream, stop.signal), id, maxBody);
          await file.done;
        } catch (err) {
          if (err instanceof DropwireError || (err as { code?: unknown }).code !== undefined) throw err;
          // busboy's own complaints (plain errors, no code: a truncated or malformed body) are the client's.
          if (received?.bodyPath) await blobs.remove(received.bodyPath);
          throw new HttpError(400, 'DW_BAD_REQUEST', `bad multipart body: ${(err as Error).message}`);
        }
      } else if (!ct && smallDeclared(req, maxBody)) {
        received = await receiveSmallBody(req, stop.signal);
      } else {
        const body = untilAborted(req, stop.signal);
        received = await blobs.receive(ct ? ct.tap(body) : body, id, maxBody);
      }
    } catch (err) {
      if ((err as DropwireError).code === 'DW_TOO_LARGE') {
        req.resume();
        throw new HttpError(413, 'DW_TOO_LARGE', (err as Error).message);
      }
      throw err;
    } finally {
      endUpload();
      req.setTimeout(0);
      req.off('close', onClose);
    }
    const refuse = async (e: HttpError): Promise<never> => {
      if (received.bodyPath) await blobs.remove(received.bodyPath);
      throw e;
    };
    if (!filename) await refuse(filenameRequired());
    try {
      checkFilename(filename, false);
    } catch (err) {
      await refuse(err as HttpError);
    }
    if (sealed && plainSize(received.size) === undefined) {
      await refuse(new HttpError(400, 'DW_BAD_SEAL', `sealed=1, but no sealed envelope is ${received.size} bytes long (PROTOCOL 12)`));
    }
    if (received.size === 0 && !allowEmpty && !sealed) {
      await refuse(new HttpError(400, 'DW_EMPTY_BODY', 'the body is empty (nothing was read from the file?); add allowEmpty=1 to send an empty file'));
    }
    const { message, created } = await store.enqueue(
      uploadedMessage({ id, to, from: token.name, filename, ...(ikey ? { idempotencyKey: ikey } : {}), now, deadlineS: deadline, ...(ttl !== undefined ? { ttlS: ttl } : {}), sealed }, received),
    );
    // PROTOCOL 7.18: the device may now have the hash (FILE_END): the message is durable.
    if (created && received.size === ct?.size) ct.stored(message);
    else ct?.abort();
    if (!created && received.bodyPath) await blobs.remove(received.bodyPath);
    if (!created && (message.sha256 !== received.sha256 || message.to !== to || message.filename !== filename)) {
      const what = [message.to !== to && 'to', message.filename !== filename && 'filename', message.sha256 !== received.sha256 && 'body'].filter(Boolean);
      throw new HttpError(422, 'DW_IDEMPOTENCY_MISMATCH', `Idempotency-Key '${ikey}' was used for message ${message.id} with another ${what.join(', ')}; use a new key for a new message`);
    }
    if (created) {
      log.info({ id, to, from: token.name, filename, size: received.size }, 'message queued');
      hub.notify(to, message, received.body);
      this.o.feed.notify();
    }
    send(res, created ? 202 : 200, { ...this.summary(message), online: hub.isOnline(to) });
  }

  /** POST /v1/messages/batch: several files in one multipart POST (batch.ts). */
  private async postBatch(req: http.IncomingMessage, res: http.ServerResponse, url: URL, token: TokenRecord): Promise<void> {
    const { postBatch } = await import('./batch.js');
    const { store, hub, blobs, feed, log, maxBody } = this.o;
    const deps = {
      store, hub, blobs, feed, log, maxBody, bodyTimeoutMs: this.bodyTimeoutMs, now: this.now, newId: messageId,
      deviceExists: (name: string) => this.deviceExists(name),
      startUpload: (t: TokenRecord) => this.startUpload(t),
      maxUploads: this.o.maxUploads ?? DEFAULT_MAX_UPLOADS,
      maxUploadsPerToken: this.o.maxUploadsPerToken ?? DEFAULT_MAX_UPLOADS_PER_TOKEN,
    };
    return postBatch(deps, req, res, url, token);
  }

  private summary(m: MessageRecord): Record<string, unknown> {
    return { id: m.id, status: m.status, to: m.to, filename: m.filename, size: m.size, sha256: m.sha256 };
  }

  private actionDeps(): MessageActionDeps {
    const { store, blobs, hub, feed, log } = this.o;
    return { store, blobs, hub, feed, log, now: this.now, newId: messageId };
  }

  /** A message this token sent, or sees through its scope (the same rule as GET). */
  private async visibleMessage(token: TokenRecord | undefined, id: string): Promise<MessageRecord> {
    const m = await this.o.store.getMessage(id);
    if (!m || (token && m.from !== token.name && !scopeAllows(token.to, m.to))) throw new HttpError(404, 'DW_NOT_FOUND', `no message '${id}'`);
    return m;
  }

  /** DELETE /v1/messages/ID: cancel unless the host may already have it (409 DW_TOO_LATE). */
  private async cancel(res: http.ServerResponse, token: TokenRecord | undefined, id: string): Promise<void> {
    const m = await this.visibleMessage(token, id);
    const after = await cancelMessage(this.actionDeps(), m, token ? `token ${token.name}` : 'operator');
    send(res, 200, await this.view(after));
  }

  /** POST /v1/messages/ID/retry: a failed, rejected or expired message again, as a new message. */
  private async retry(res: http.ServerResponse, token: TokenRecord | undefined, id: string): Promise<void> {
    const old = await this.visibleMessage(token, id);
    const { message, created } = await retryMessage(this.actionDeps(), old);
    send(res, created ? 202 : 200, { ...this.summary(message), retryOf: old.id, online: this.o.hub.isOnline(message.to) });
  }

  private async getMessage(res: http.ServerResponse, url: URL, token: TokenRecord, id: string): Promise<void> {
    const { store, hub } = this.o;
    let m = await this.visibleMessage(token, id);
    const wait = Math.min(seconds(url, 'wait', 0), MAX_WAIT_S);
    if (wait > 0 && !FINAL_STATUSES.has(m.status)) {
      await new Promise<void>((resolve) => {
        const onStatus = (e: StatusEvent) => {
          if (e.id === id && FINAL_STATUSES.has(e.status)) finish();
        };
        const timer = setTimeout(() => finish(), wait * 1000);
        const finish = () => {
          clearTimeout(timer);
          hub.off('status', onStatus);
          res.off('close', finish);
          resolve();
        };
        hub.on('status', onStatus);
        res.on('close', finish);
      });
      m = (await store.getMessage(id))!;
    }
    send(res, 200, await this.view(m));
  }

  private async view(m: MessageRecord): Promise<Record<string, unknown>> {
    const history = await this.o.store.getHistory(m.id);
    return {
      id: m.id,
      status: m.status,
      to: m.to,
      from: m.from,
      filename: m.filename,
      size: m.size,
      sha256: m.sha256,
      createdAt: new Date(m.createdAt).toISOString(),
      overdue: m.overdue,
      history: history.map((h) => ({ status: h.status, at: new Date(h.at).toISOString(), ...(h.detail ? { detail: h.detail } : {}) })),
      ...retryLinks(history),
      ...(m.result ? { result: m.result } : {}),
    };
  }

  private async deviceView(name: string, lastSeen: number | undefined, agentVersion?: string): Promise<Record<string, unknown>> {
    const online = this.o.hub.isOnline(name);
    return {
      name,
      online,
      lastSeen: online ? new Date(this.now()).toISOString() : lastSeen ? new Date(lastSeen).toISOString() : null,
      queued: await this.o.store.countPending(name),
      agentVersion: agentVersion ?? null,
    };
  }

  private async listDevices(res: http.ServerResponse, token: TokenRecord): Promise<void> {
    const all = await this.o.store.listDevices();
    const visible = all.filter((d) => scopeAllows(token.to, d.name));
    send(res, 200, { devices: await Promise.all(visible.map((d) => this.deviceView(d.name, d.lastSeen, d.agentVersion))) });
  }

  private async getDevice(res: http.ServerResponse, token: TokenRecord, name: string): Promise<void> {
    if (!scopeAllows(token.to, name)) throw unknownDevice(name);
    const d = await this.o.store.getDevice(name);
    if (!d) throw unknownDevice(name);
    // PROTOCOL 12: the key HTTP senders seal to (null until the device enrolls).
    send(res, 200, { ...(await this.deviceView(d.name, d.lastSeen, d.agentVersion)), publicKey: d.publicKey ?? null });
  }

  /**
   * Server-sent events: the event log as the token sees it, live. `Last-Event-ID` (or `?after=N`) resumes
   * after that event; without it the stream starts with the next event.
   */
  private async events(req: http.IncomingMessage, res: http.ServerResponse, url: URL, token: TokenRecord): Promise<void> {
    const { store, feed } = this.o;
    const lastId = req.headers['last-event-id'];
    const from = (Array.isArray(lastId) ? lastId[0] : lastId) ?? url.searchParams.get('after') ?? undefined;
    if (from !== undefined && !/^\d{1,15}$/.test(from)) {
      throw new HttpError(400, 'DW_BAD_REQUEST', `${req.headers['last-event-id'] !== undefined ? 'Last-Event-ID' : 'after'} must be an event id (a whole number)`);
    }
    let cursor = from !== undefined ? Number(from) : await store.lastEventSeq();
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-accel-buffering': 'no' });
    res.write(': dropwire events\n\n');
    let open = true;
    let wake: (() => void) | undefined;
    const onAppended = () => wake?.();
    feed.on('appended', onAppended);
    const keepalive = setInterval(() => res.write(': keepalive\n\n'), SSE_KEEPALIVE_MS);
    res.on('close', () => {
      open = false;
      wake?.();
    });
    try {
      while (open) {
        const batch = await store.eventsAfter(cursor, 500);
        for (const e of batch) {
          cursor = e.seq;
          if (!visibleTo(token, e)) continue;
          res.write(`id: ${e.seq}\nevent: ${e.type}\ndata: ${JSON.stringify(eventBody(e))}\n\n`);
        }
        if (batch.length === 500) continue;
        await new Promise<void>((resolve) => {
          wake = resolve;
          setTimeout(resolve, SSE_KEEPALIVE_MS).unref();
        });
        wake = undefined;
      }
    } finally {
      clearInterval(keepalive);
      feed.off('appended', onAppended);
      res.end();
    }
  }

  /** Local operator actions the CLI asks a running relay to apply at once. */
  private async admin(req: http.IncomingMessage, res: http.ServerResponse, method: string, parts: string[]): Promise<void> {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '');
    if (!m || m[1] !== this.o.adminToken) throw new HttpError(401, 'DW_UNAUTHORIZED', 'admin token required');
    if (method === 'POST' && parts[0] === 'tokens' && parts[1] === 'changed' && parts.length === 2) {
      this.tokens.clear();
      this.o.onTokensChanged?.();
      return send(res, 200, { ok: true });
    }
    if (method === 'POST' && parts[0] === 'devices' && parts.length === 3 && parts[2] === 'drop') {
      this.devices.delete(parts[1]!);
      this.o.hub.drop(parts[1]!);
      return send(res, 200, { dropped: parts[1] });
    }
    // `dropwire relay message cancel|retry ID` on the relay host.
    if (method === 'POST' && parts[0] === 'messages' && parts.length === 3 && parts[2] === 'cancel') return this.cancel(res, undefined, parts[1]!);
    if (method === 'POST' && parts[0] === 'messages' && parts.length === 3 && parts[2] === 'retry') return this.retry(res, undefined, parts[1]!);
    throw new HttpError(404, 'DW_NOT_FOUND', 'no such endpoint');
  }

  private fail(res: http.ServerResponse, err: unknown): void {
    if (err instanceof HttpError) return send(res, err.status, { error: { code: err.code, message: err.message } }, err.headers);
    const code = (err as { code?: unknown })?.code;
    if (typeof code === 'string' && STATUS_OF_CODE[code]) return send(res, STATUS_OF_CODE[code], { error: { code, message: (err as Error).message } });
    // The store's server is away (a cluster's Redis): say so at once; the sender retries (Idempotency-Key).
    if (code === 'DW_STORE_DOWN') return send(res, 503, { error: { code, message: 'the relay\'s store is unavailable; retry shortly' } });
    // A store that would not keep a write on disk (Redis without appendfsync always): refuse, never pretend.
    if (code === 'DW_STORE_UNSAFE') return send(res, 503, { error: { code, message: 'the relay\'s store does not persist writes now; retry shortly' } });
    this.o.log.error({ err }, 'request failed');
    send(res, 500, { error: { code: 'DW_INTERNAL', message: 'internal error' } });
  }
}

function send(res: http.ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const text = JSON.stringify(body) + '\n';
  res.writeHead(status, { ...headers, 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

/** A Content-Length small enough for the body to be kept inline (small-body.ts reads it). */
function smallDeclared(req: http.IncomingMessage, maxBody: number): boolean {
  const declared = Number(req.headers['content-length'] ?? NaN);
  return Number.isFinite(declared) && declared <= Math.min(INLINE_MAX, maxBody);
}

const unknownDevice = (name: string) => new HttpError(404, 'DW_UNKNOWN_DEVICE', `no device named '${name}' that this token may send to`);

const filenameRequired = () =>
  new HttpError(400, 'DW_BAD_NAME', 'a file name is required: add ?filename=NAME to the URL (or send multipart/form-data with a file name)');

/** 1 to MAX_FILENAME_BYTES bytes, no NUL; `partial`: an empty name is not (yet) an error. */
function validFilename(name: string): boolean {
  return name !== '' && Buffer.byteLength(name) <= MAX_FILENAME_BYTES && !name.includes('\0');
}

function checkFilename(name: string, partial: boolean): void {
  if (partial && name === '') return;
  if (Buffer.byteLength(name) > MAX_FILENAME_BYTES || name.includes('\0')) {
    throw new HttpError(400, 'DW_BAD_NAME', `filename must be 1 to ${MAX_FILENAME_BYTES} bytes without NUL`);
  }
}

/** What a request Node's parser refused is told: [status, code, message]. */
function clientErrorAnswer(err: Error & { code?: string; rawPacket?: Buffer }): [number, string, string] {
  switch (err.code) {
    case 'HPE_HEADER_OVERFLOW': {
      // The request line counts against the header limit: say which of the two is too long.
      const raw = err.rawPacket ?? Buffer.alloc(0);
      const eol = raw.indexOf('\r\n');
      if (eol === -1 || eol > 8 * 1024) return [414, 'DW_URL_TOO_LONG', 'the request URL is too long'];
      return [431, 'DW_HEADERS_TOO_LARGE', 'the request headers are too large'];
    }
    case 'ERR_HTTP_REQUEST_TIMEOUT':
    case 'HPE_HEADER_TIMEOUT':
      return [408, 'DW_TIMEOUT', 'the request headers did not arrive in time'];
    case 'HPE_INVALID_METHOD': {
      const raw = (err.rawPacket ?? Buffer.alloc(0)).subarray(0, 32).toString('latin1');
      if (/^[A-Za-z-]{1,20} \//.test(raw)) return [405, 'DW_METHOD_NOT_ALLOWED', 'unknown HTTP method'];
      return [400, 'DW_BAD_REQUEST', 'not an HTTP request'];
    }
    default:
      return [400, 'DW_BAD_REQUEST', `malformed HTTP request (${err.code ?? 'parse error'})`];
  }
}

/**
 * A body stream read until `signal` aborts, which rejects the read with the abort reason. Each read races
 * a promise of its own that is dropped after it: one long-lived promise raced against every read would keep
 * every chunk reachable (a race's reaction stays on the never-settling promise), 1 GiB for a 1 GiB upload.
 */
async function* untilAborted(src: Readable, signal: AbortSignal): AsyncIterable<Buffer> {
  const it = src.iterator({ destroyOnReturn: false });
  for (;;) {
    if (signal.aborted) throw signal.reason;
    let onAbort!: () => void;
    const aborted = new Promise<never>((_, reject) => {
      onAbort = () => reject(signal.reason);
      signal.addEventListener('abort', onAbort, { once: true });
    });
    aborted.catch(() => {});
    let r: IteratorResult<unknown>;
    try {
      r = await Promise.race([it.next(), aborted]);
    } finally {
      signal.removeEventListener('abort', onAbort);
    }
    if (r.done) return;
    yield r.value as Buffer;
  }
}

function seconds(url: URL, name: string, fallback: number): number;
function seconds(url: URL, name: string, fallback: undefined): number | undefined;
function seconds(url: URL, name: string, fallback: number | undefined): number | undefined {
  const v = url.searchParams.get(name);
  if (v === null || v === '') return fallback;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0 || n > MAX_SECONDS) throw new HttpError(400, 'DW_BAD_REQUEST', `${name} must be a number of seconds`);
  return n;
}

/** The `file` field of a multipart upload, as a stream (never buffered whole). */
function multipartFile(req: http.IncomingMessage, maxBody: number, signal: AbortSignal): Promise<{ filename: string; stream: Readable; done: Promise<void> }> {
  return new Promise((resolve, reject) => {
    signal.addEventListener('abort', () => reject(signal.reason), { once: true });
    let bb: busboy.Busboy;
    try {
      bb = busboy({ headers: req.headers, limits: { files: 1, fileSize: maxBody + 1, fields: 20 } });
    } catch (err) {
      reject(new HttpError(400, 'DW_BAD_REQUEST', `bad multipart body: ${(err as Error).message}`));
      return;
    }
    let found = false;
    const done = new Promise<void>((ok, fail) => {
      bb.on('close', ok);
      bb.on('error', fail);
    });
    done.catch(() => {});
    bb.on('file', (name, stream, info) => {
      if (name !== 'file' || found) {
        stream.resume();
        return;
      }
      found = true;
      resolve({ filename: info.filename ?? '', stream, done });
    });
    bb.on('close', () => {
      if (!found) reject(new HttpError(400, 'DW_BAD_REQUEST', 'multipart body has no "file" field'));
    });
    bb.on('error', (err) => reject(new HttpError(400, 'DW_BAD_REQUEST', `bad multipart body: ${(err as Error).message}`)));
    req.pipe(bb);
  });
}

export { Readable };
