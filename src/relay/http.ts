import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import busboy from 'busboy';
import { DropwireError } from '../shared/errors.js';
import type { Logger } from '../shared/log.js';
import type { BodyStorage } from './body-storage.js';
import { eventBody, scopeAllows, visibleTo, type EventFeed } from './events.js';
import type { Hub, StatusEvent } from './hub.js';
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
  now?: () => number;
}

/** Defaults for a message's alert deadline and time to live, in seconds. */
export const DEFAULT_DEADLINE_S = 120;
export const MAX_WAIT_S = 60;
const MAX_FILENAME_BYTES = 1024;
/** After an error mid-upload, at most this much more of the body is read (and dropped) before answering. */
const DRAIN_BYTES = 64 * 1024 * 1024;
const DRAIN_MS = 10_000;
const SSE_KEEPALIVE_MS = 15_000;
const TOKEN_CACHE_MS = 2_000;

class HttpError extends DropwireError {
  readonly status: number;
  constructor(status: number, code: string, message: string) {
    super(code, message);
    this.status = status;
  }
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

/** The sender HTTP API (README "HTTP API"). */
export class HttpApi {
  readonly server: http.Server;
  private readonly o: HttpOptions;
  private readonly now: () => number;

  constructor(o: HttpOptions) {
    this.o = o;
    this.now = o.now ?? Date.now;
    this.server = http.createServer((req, res) => {
      this.route(req, res).catch((err: unknown) => {
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
    this.server.requestTimeout = 0; // large uploads take as long as they take
    this.server.headersTimeout = 30_000;
  }

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
    const url = new URL(req.url ?? '/', 'http://relay');
    const parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);
    const method = req.method ?? 'GET';
    if (url.pathname === '/healthz' && method === 'GET') {
      return send(res, 200, { ok: true, online: this.o.hub.onlineCount() });
    }
    if (parts[0] !== 'v1') throw new HttpError(404, 'DW_NOT_FOUND', 'no such endpoint');
    if (parts[1] === 'admin') return this.admin(req, res, method, parts.slice(2));
    const token = await this.authenticate(req);
    if (parts[1] === 'messages' && parts.length === 2 && method === 'POST') return this.postMessage(req, res, url, token);
    if (parts[1] === 'messages' && parts.length === 3 && method === 'GET') return this.getMessage(res, url, token, parts[2]!);
    if (parts[1] === 'events' && parts.length === 2 && method === 'GET') return this.events(req, res, url, token);
    if (parts[1] === 'devices' && parts.length === 2 && method === 'GET') return this.listDevices(res, token);
    if (parts[1] === 'devices' && parts.length === 3 && method === 'GET') return this.getDevice(res, token, parts[2]!);
    throw new HttpError(404, 'DW_NOT_FOUND', 'no such endpoint');
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
    const token = await this.tokens.get(tokenHash(m[1]!), this.now(), (hash) => this.o.store.getTokenByHash(hash));
    if (!token) throw new HttpError(401, 'DW_UNAUTHORIZED', 'unknown token');
    return token;
  }

  private async deviceExists(name: string): Promise<boolean> {
    const found = await this.devices.get(name, this.now(), async (n) => ((await this.o.store.getDevice(n)) ? true : undefined));
    return found === true;
  }

  private async postMessage(req: http.IncomingMessage, res: http.ServerResponse, url: URL, token: TokenRecord): Promise<void> {
    const { store, hub, blobs, log, maxBody } = this.o;
    const to = url.searchParams.get('to') ?? '';
    if (!to) throw new HttpError(400, 'DW_BAD_REQUEST', 'query parameter "to" is required');
    if (!(await this.deviceExists(to))) throw new HttpError(404, 'DW_UNKNOWN_DEVICE', `no device named '${to}'`);
    if (!scopeAllows(token.to, to)) throw new HttpError(403, 'DW_FORBIDDEN', `this token may not send to '${to}'`);
    const declared = Number(req.headers['content-length'] ?? NaN);
    if (Number.isFinite(declared) && declared > maxBody + 64 * 1024) {
      throw new HttpError(413, 'DW_TOO_LARGE', `body larger than the limit of ${maxBody} bytes`);
    }
    const deadline = seconds(url, 'deadline', DEFAULT_DEADLINE_S);
    const ttl = seconds(url, 'ttl', undefined);
    const idempotencyKey = req.headers['idempotency-key'];
    const ikey = typeof idempotencyKey === 'string' && idempotencyKey.length > 0 ? idempotencyKey.slice(0, 200) : undefined;
    const now = this.now();
    const id = messageId(now);

    let filename = url.searchParams.get('filename') ?? '';
    let received;
    try {
      const type = req.headers['content-type'] ?? '';
      if (/^multipart\/form-data/i.test(type)) {
        const file = await multipartFile(req, maxBody);
        filename ||= file.filename;
        received = await blobs.receive(file.stream, id, maxBody);
        await file.done;
      } else {
        received = await blobs.receive(req, id, maxBody);
      }
    } catch (err) {
      if ((err as DropwireError).code === 'DW_TOO_LARGE') {
        req.resume();
        throw new HttpError(413, 'DW_TOO_LARGE', (err as Error).message);
      }
      throw err;
    }
    const badName = !filename || Buffer.byteLength(filename) > MAX_FILENAME_BYTES || filename.includes('\0');
    if (badName) {
      if (received.bodyPath) await blobs.remove(received.bodyPath);
      throw new HttpError(400, 'DW_BAD_NAME', `filename must be 1 to ${MAX_FILENAME_BYTES} bytes without NUL`);
    }
    const { message, created } = await store.enqueue({
      id,
      to,
      from: token.name,
      filename,
      size: received.size,
      sha256: received.sha256,
      ...(received.body ? { body: received.body } : { bodyPath: received.bodyPath! }),
      ...(ikey ? { idempotencyKey: ikey } : {}),
      createdAt: now,
      deadlineAt: now + deadline * 1000,
      ...(ttl !== undefined ? { expiresAt: now + ttl * 1000 } : {}),
    });
    if (!created && received.bodyPath) await blobs.remove(received.bodyPath);
    if (created) {
      log.info({ id, to, from: token.name, filename, size: received.size }, 'message queued');
      hub.notify(to, message, received.body);
      this.o.feed.notify();
    }
    send(res, created ? 202 : 200, { id: message.id, status: message.status, to: message.to, filename: message.filename, size: message.size, sha256: message.sha256 });
  }

  private async getMessage(res: http.ServerResponse, url: URL, token: TokenRecord, id: string): Promise<void> {
    const { store, hub } = this.o;
    let m = await store.getMessage(id);
    if (!m || (m.from !== token.name && !scopeAllows(token.to, m.to))) throw new HttpError(404, 'DW_NOT_FOUND', `no message '${id}'`);
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
      ...(m.result ? { result: m.result } : {}),
    };
  }

  private async deviceView(name: string, lastSeen: number | undefined): Promise<Record<string, unknown>> {
    const online = this.o.hub.isOnline(name);
    return {
      name,
      online,
      lastSeen: online ? new Date(this.now()).toISOString() : lastSeen ? new Date(lastSeen).toISOString() : null,
      queued: await this.o.store.countPending(name),
    };
  }

  private async listDevices(res: http.ServerResponse, token: TokenRecord): Promise<void> {
    const all = await this.o.store.listDevices();
    const visible = all.filter((d) => scopeAllows(token.to, d.name));
    send(res, 200, { devices: await Promise.all(visible.map((d) => this.deviceView(d.name, d.lastSeen))) });
  }

  private async getDevice(res: http.ServerResponse, token: TokenRecord, name: string): Promise<void> {
    const d = await this.o.store.getDevice(name);
    if (!d || !scopeAllows(token.to, name)) throw new HttpError(404, 'DW_UNKNOWN_DEVICE', `no device named '${name}'`);
    send(res, 200, await this.deviceView(d.name, d.lastSeen));
  }

  /**
   * Server-sent events: the event log as the token sees it, live. `Last-Event-ID` (or `?after=N`) resumes
   * after that event; without it the stream starts with the next event.
   */
  private async events(req: http.IncomingMessage, res: http.ServerResponse, url: URL, token: TokenRecord): Promise<void> {
    const { store, feed } = this.o;
    const from = req.headers['last-event-id'] ?? url.searchParams.get('after');
    let cursor = typeof from === 'string' && /^\d+$/.test(from) ? Number(from) : await store.lastEventSeq();
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
    throw new HttpError(404, 'DW_NOT_FOUND', 'no such endpoint');
  }

  private fail(res: http.ServerResponse, err: unknown): void {
    if (err instanceof HttpError) return send(res, err.status, { error: { code: err.code, message: err.message } });
    const code = (err as { code?: unknown })?.code;
    if (code === 'DW_MESSAGE_EXISTS') return send(res, 409, { error: { code, message: (err as Error).message } });
    // The store's server is away (a cluster's Redis): say so at once; the sender retries (Idempotency-Key).
    if (code === 'DW_STORE_DOWN') return send(res, 503, { error: { code, message: 'the relay\'s store is unavailable; retry shortly' } });
    this.o.log.error({ err }, 'request failed');
    send(res, 500, { error: { code: 'DW_INTERNAL', message: 'internal error' } });
  }
}

function send(res: http.ServerResponse, status: number, body: unknown): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const text = JSON.stringify(body) + '\n';
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function seconds(url: URL, name: string, fallback: number): number;
function seconds(url: URL, name: string, fallback: undefined): number | undefined;
function seconds(url: URL, name: string, fallback: number | undefined): number | undefined {
  const v = url.searchParams.get(name);
  if (v === null || v === '') return fallback;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0 || n > 10 * 365 * 86400) throw new HttpError(400, 'DW_BAD_REQUEST', `${name} must be a number of seconds`);
  return n;
}

/** The `file` field of a multipart upload, as a stream (never buffered whole). */
function multipartFile(req: http.IncomingMessage, maxBody: number): Promise<{ filename: string; stream: Readable; done: Promise<void> }> {
  return new Promise((resolve, reject) => {
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
