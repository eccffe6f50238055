import { createHash, randomBytes } from 'node:crypto';
import type http from 'node:http';
import { DropwireError } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';
import type { BodyStorage } from '../body-storage.js';
import type { EventFeed } from '../events.js';
import { messageId, tokenHash } from '../http.js';
import type { Hub } from '../hub.js';
import { cancelMessage, RETRYABLE, retryLinks, retryMessage, type MessageActionDeps } from '../message-actions.js';
import type { RelayMetrics } from '../metrics.js';
import { DEFAULT_ENROLL_TTL_H } from '../admin.js';
import { FINAL_STATUSES, MessageStatus, type MessageQuery, type MessageRecord, type Store, type TokenRecord } from '../store/types.js';
import { ASSETS } from './assets.js';
import { consoleEvents } from './live.js';
import { deviceOrder, devicePage, devicesPage, errorPage, messagePage, messagesPage, signInPage, type DeviceView, type MessageFilters } from './pages.js';
import { clearedCookie, crossSite, overHttps, readCookie, SESSION_COOKIE, sessionCookie, SessionKeys, type Session } from './session.js';

export interface ConsoleOptions {
  store: Store;
  hub: Hub;
  blobs: BodyStorage;
  feed: EventFeed;
  log: Logger;
  /** The relay's private key: sessions are signed with a key derived from it (the same on every node). */
  sessionSecret: Uint8Array;
  /** The relay serves HTTPS: the cookie is `Secure`. */
  secure: boolean;
  /** The enrollment token line for a device (the relay's addresses and public key). */
  enrollmentToken: (name: string, secret: string, expiresAt: number) => string;
  /** Drops a removed device's live session (on every node of a cluster). */
  dropDevice: (name: string) => void;
  metrics?: RelayMetrics;
  now?: () => number;
}

/** Largest form body read (a sign-in or an action: a few hundred bytes). */
const MAX_FORM = 16 * 1024;
const TOKEN_CACHE_MS = 2_000;
const PAGE = 50;
const ATTENTION = 20;

const SECURITY_HEADERS = {
  'content-security-policy': "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'same-origin',
  'x-frame-options': 'DENY',
};

class ConsoleError extends DropwireError {
  readonly status: number;
  constructor(status: number, code: string, message: string) {
    super(code, message);
    this.status = status;
  }
}

/** What the notices after an action say (the query names one; no text is taken from the URL). */
const NOTICES: Record<string, string> = {
  cancelled: 'Message cancelled.',
  retried: 'Message queued again as this new message.',
  removed: 'Device removed; its queued messages were cancelled.',
};

/**
 * The operator console (README "Console") and GET /metrics, on the relay's HTTP port. Nothing here runs
 * unless a request comes: no timers, no listeners; a console's live stream listens to the event feed only
 * while it is open.
 */
export class Console {
  private readonly o: ConsoleOptions;
  private readonly keys: SessionKeys;
  private readonly now: () => number;
  private readonly tokens = new Map<string, { token: TokenRecord | undefined; at: number }>();

  constructor(o: ConsoleOptions) {
    this.o = o;
    this.keys = new SessionKeys(o.sessionSecret);
    this.now = o.now ?? Date.now;
  }

  /** True when the request was the console's or /metrics (and has been answered). */
  async handle(req: http.IncomingMessage, res: http.ServerResponse, url: URL): Promise<boolean> {
    const p = url.pathname;
    if (p === '/metrics') {
      await this.guard(req, res, () => this.metrics(req, res));
      return true;
    }
    if (p !== '/' && p !== '/console' && !p.startsWith('/console/')) return false;
    await this.guard(req, res, () => this.route(req, res, url));
    return true;
  }

  private async guard(req: http.IncomingMessage, res: http.ServerResponse, fn: () => Promise<void>): Promise<void> {
    try {
      await fn();
    } catch (err) {
      const e = err instanceof ConsoleError ? err : undefined;
      if (!e) this.o.log.error({ err, path: req.url?.slice(0, 200) }, 'console request failed');
      const status = e?.status ?? 500;
      const code = e?.code ?? 'DW_INTERNAL';
      const message = e?.message ?? 'internal error';
      if (res.headersSent) {
        res.destroy();
        return;
      }
      if (wantsHtml(req)) return html(res, status, errorPage(undefined, status, code, message));
      json(res, status, { error: { code, message } });
    }
  }

  // --- /metrics ----------------------------------------------------------------------------------

  private async metrics(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    if (req.method !== 'GET' && req.method !== 'HEAD') throw new ConsoleError(405, 'DW_METHOD_NOT_ALLOWED', 'use GET');
    if (!this.o.metrics) throw new ConsoleError(404, 'DW_NOT_FOUND', 'metrics are off');
    const m = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '');
    if (!m) throw new ConsoleError(401, 'DW_UNAUTHORIZED', 'missing Authorization: Bearer TOKEN (an --admin or --metrics token)');
    const token = await this.token(tokenHash(m[1]!));
    if (!token) throw new ConsoleError(401, 'DW_UNAUTHORIZED', 'unknown token');
    if (token.role !== 'admin' && token.role !== 'metrics') throw new ConsoleError(403, 'DW_FORBIDDEN', `token '${token.name}' may not read metrics (make one with --metrics or --admin)`);
    await this.o.metrics.serve(res);
  }

  /** A token by hash, remembered for a moment (a removed token stops working within TOKEN_CACHE_MS). */
  private async token(hash: string): Promise<TokenRecord | undefined> {
    const now = this.now();
    const hit = this.tokens.get(hash);
    if (hit && now - hit.at < TOKEN_CACHE_MS) return hit.token;
    const token = await this.o.store.getTokenByHash(hash);
    if (this.tokens.size > 1_000) this.tokens.clear();
    this.tokens.set(hash, { token, at: now });
    return token;
  }

  // --- console -----------------------------------------------------------------------------------

  private async session(req: http.IncomingMessage): Promise<Session | undefined> {
    const s = this.keys.verify(readCookie(req, SESSION_COOKIE), this.now());
    if (!s) return undefined;
    const token = await this.token(s.hash);
    return token?.role === 'admin' && token.name === s.token ? s : undefined;
  }

  private async route(req: http.IncomingMessage, res: http.ServerResponse, url: URL): Promise<void> {
    const method = req.method ?? 'GET';
    const p = url.pathname;
    const asset = ASSETS[p];
    if (asset) {
      if (method !== 'GET' && method !== 'HEAD') throw new ConsoleError(405, 'DW_METHOD_NOT_ALLOWED', 'use GET');
      if (req.headers['if-none-match'] === asset.etag) {
        res.writeHead(304, { etag: asset.etag }).end();
        return;
      }
      res.writeHead(200, { 'content-type': asset.type, 'content-length': Buffer.byteLength(asset.body), etag: asset.etag, 'cache-control': 'no-cache', 'x-content-type-options': 'nosniff' });
      res.end(method === 'HEAD' ? undefined : asset.body);
      return;
    }
    if (p === '/console/sign-in') {
      if (method === 'GET') return html(res, 200, signInPage({ signedOut: url.searchParams.get('out') === '1' }));
      if (method === 'POST') return this.signIn(req, res);
      throw new ConsoleError(405, 'DW_METHOD_NOT_ALLOWED', 'use GET or POST');
    }
    let parts: string[];
    try {
      parts = p.split('/').filter(Boolean).map(decodeURIComponent);
    } catch {
      throw new ConsoleError(400, 'DW_BAD_REQUEST', 'bad percent-encoding in the request path');
    }
    if (method === 'POST') {
      const why = crossSite(req);
      if (why) throw new ConsoleError(403, 'DW_CROSS_SITE', `refused: a cross-site request (${why})`);
    }
    const session = await this.session(req);
    if (!session) {
      if (method === 'GET' && wantsHtml(req) && p !== '/console/events') {
        res.writeHead(303, { location: '/console/sign-in', 'cache-control': 'no-store' }).end();
        return;
      }
      throw new ConsoleError(401, 'DW_UNAUTHORIZED', 'sign in to the console first');
    }
    const csrf = this.keys.csrf(session);
    if (method === 'POST') {
      const form = await readForm(req);
      if (!this.keys.checkCsrf(session, form.get('csrf') ?? undefined)) throw new ConsoleError(403, 'DW_BAD_CSRF', 'refused: the form is stale or not from this console; reload the page');
      return this.action(req, res, parts, form, csrf);
    }
    if (method !== 'GET' && method !== 'HEAD') throw new ConsoleError(405, 'DW_METHOD_NOT_ALLOWED', 'use GET or POST');
    const notice = NOTICES[url.searchParams.get('done') ?? ''];
    if (parts.length === 0 || (parts.length === 1 && parts[0] === 'console')) {
      const after = await this.o.store.lastEventSeq(); // read first: what happens next reaches the page live
      return html(res, 200, devicesPage(csrf, await this.devices(), after));
    }
    if (parts.length === 2 && parts[1] === 'events') return consoleEvents(req, res, { store: this.o.store, feed: this.o.feed, stillValid: async () => (await this.session(req)) !== undefined });
    if (parts.length === 2 && parts[1] === 'messages') return this.messagesView(res, url, csrf);
    if (parts.length === 3 && parts[1] === 'devices') return this.deviceView(res, parts[2]!, csrf, notice);
    if (parts.length === 3 && parts[1] === 'messages') return this.messageView(res, parts[2]!, csrf, notice);
    throw new ConsoleError(404, 'DW_NOT_FOUND', 'no such page');
  }

  private async signIn(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const why = crossSite(req);
    if (why) throw new ConsoleError(403, 'DW_CROSS_SITE', `refused: a cross-site request (${why})`);
    const form = await readForm(req);
    const secret = (form.get('token') ?? '').trim();
    const token = secret ? await this.token(tokenHash(secret)) : undefined;
    if (!token || token.role !== 'admin') {
      this.o.log.warn({ remote: req.socket.remoteAddress, known: token !== undefined }, 'console sign-in refused');
      return html(res, 401, signInPage({ error: token ? 'This token is not an admin token (make one with relay token add NAME --admin).' : 'Unknown token.' }));
    }
    const { cookie } = this.keys.issue(token, this.now());
    this.o.log.info({ token: token.name, remote: req.socket.remoteAddress }, 'console sign-in');
    res.writeHead(303, { location: '/', 'set-cookie': sessionCookie(cookie, overHttps(req, this.o.secure)), 'cache-control': 'no-store' }).end();
  }

  private actionDeps(): MessageActionDeps {
    const { store, blobs, hub, feed, log } = this.o;
    return { store, blobs, hub, feed, log, now: this.now, newId: messageId };
  }

  private async action(req: http.IncomingMessage, res: http.ServerResponse, parts: string[], form: URLSearchParams, csrf: string): Promise<void> {
    const [, what, name, verb] = parts;
    if (parts.length === 2 && what === 'sign-out') {
      res.writeHead(303, { location: '/console/sign-in?out=1', 'set-cookie': clearedCookie(overHttps(req, this.o.secure)), 'cache-control': 'no-store' }).end();
      return;
    }
    if (parts.length === 4 && what === 'messages' && (verb === 'cancel' || verb === 'retry')) {
      const m = await this.o.store.getMessage(name!);
      if (!m) throw new ConsoleError(404, 'DW_NOT_FOUND', `no message '${name}'`);
      try {
        if (verb === 'cancel') {
          await cancelMessage(this.actionDeps(), m, 'the console');
          return redirect(res, `/console/messages/${encodeURIComponent(m.id)}?done=cancelled`);
        }
        const { message } = await retryMessage(this.actionDeps(), m);
        return redirect(res, `/console/messages/${encodeURIComponent(message.id)}?done=retried`);
      } catch (err) {
        const code = (err as { code?: unknown }).code;
        if (code === 'DW_TOO_LATE' || code === 'DW_NOT_RETRYABLE' || code === 'DW_BODY_MISSING' || code === 'DW_UNKNOWN_DEVICE') {
          return this.messageView(res, m.id, csrf, undefined, { status: 409, text: `${(err as Error).message} (${String(code)})` });
        }
        throw err;
      }
    }
    if (parts.length === 4 && what === 'devices' && verb === 'remove') {
      if (form.get('confirm') !== 'yes') return this.deviceView(res, name!, csrf, undefined, { status: 400, text: 'Tick the box to confirm the removal.' });
      if (!(await this.o.store.removeDevice(name!, this.now()))) throw new ConsoleError(404, 'DW_UNKNOWN_DEVICE', `no device named '${name}'`);
      this.o.dropDevice(name!);
      this.o.feed.notify();
      this.o.log.info({ device: name }, 'device removed from the console');
      const after = await this.o.store.lastEventSeq();
      return html(res, 200, devicesPage(csrf, await this.devices(), after, NOTICES.removed));
    }
    if (parts.length === 4 && what === 'devices' && verb === 'enroll') {
      const secret = randomBytes(18).toString('base64url');
      const expiresAt = this.now() + DEFAULT_ENROLL_TTL_H * 3600_000;
      if (!(await this.o.store.renewEnrollment(name!, createHash('sha256').update(secret).digest('hex'), expiresAt))) {
        throw new ConsoleError(404, 'DW_UNKNOWN_DEVICE', `no device named '${name}'`);
      }
      this.o.dropDevice(name!); // its old key no longer enrolls nor connects
      this.o.log.info({ device: name }, 'new enrollment token made from the console');
      const line = `dropwire init ${this.o.enrollmentToken(name!, secret, expiresAt)}`;
      return this.deviceView(res, name!, csrf, undefined, undefined, { line, expiresAt });
    }
    throw new ConsoleError(404, 'DW_NOT_FOUND', 'no such action');
  }

  // --- views -------------------------------------------------------------------------------------

  private async devices(): Promise<DeviceView[]> {
    const { store } = this.o;
    const [devices, attention] = await Promise.all([store.listDevices(), store.listMessages({ attention: true, limit: 200 })]);
    const overdue = new Map<string, number>();
    for (const m of attention.messages) if (m.overdue && !FINAL_STATUSES.has(m.status)) overdue.set(m.to, (overdue.get(m.to) ?? 0) + 1);
    const queued = await Promise.all(devices.map((d) => store.countPending(d.name)));
    return devices
      .map((d, i) => this.view(d.name, d.publicKey !== undefined, d.lastSeen, d.agentVersion, queued[i]!, overdue.get(d.name) ?? 0))
      .sort(deviceOrder);
  }

  private view(name: string, enrolled: boolean, lastSeen: number | undefined, agentVersion: string | undefined, queued: number, overdue: number): DeviceView {
    const online = this.o.hub.reportedOnline(name);
    const link = this.o.hub.linkInfo(name);
    return {
      name,
      enrolled,
      online,
      ...(lastSeen !== undefined ? { lastSeen } : {}),
      queued,
      overdue,
      ...(agentVersion ? { agentVersion } : {}),
      ...(link ? { transport: link.transport, address: link.remote } : online ? { transport: 'via another node' } : {}),
    };
  }

  private async deviceView(res: http.ServerResponse, name: string, csrf: string, notice?: string, error?: { status: number; text: string }, enrollment?: { line: string; expiresAt: number }): Promise<void> {
    const { store } = this.o;
    const after = await store.lastEventSeq();
    const d = await store.getDevice(name);
    if (!d) throw new ConsoleError(404, 'DW_UNKNOWN_DEVICE', `no device named '${name}'`);
    const [queued, page] = await Promise.all([store.countPending(name), store.listMessages({ device: name, limit: PAGE })]);
    const overdue = page.messages.filter((m) => m.overdue && !FINAL_STATUSES.has(m.status)).length;
    const device = this.view(d.name, d.publicKey !== undefined, d.lastSeen, d.agentVersion, queued, overdue);
    html(res, error?.status ?? 200, devicePage({ csrf, after, device, messages: page.messages, ...(page.next !== undefined ? { next: page.next } : {}), ...(notice ? { notice } : {}), ...(error ? { error: error.text } : {}), ...(enrollment ? { enrollment } : {}) }));
  }

  private async messagesView(res: http.ServerResponse, url: URL, csrf: string): Promise<void> {
    const q = url.searchParams;
    const filters: MessageFilters = { device: q.get('device') ?? '', sender: q.get('sender') ?? '', status: q.get('status') ?? '', since: q.get('since') ?? '', until: q.get('until') ?? '', q: q.get('q') ?? '' };
    const query: Omit<MessageQuery, 'limit'> = {};
    const problems: string[] = [];
    if (filters.device) query.device = filters.device;
    if (filters.sender) query.sender = filters.sender;
    if (filters.q) query.search = filters.q.trim();
    if (filters.status) {
      if (filters.status in MessageStatus) query.statuses = [filters.status as MessageStatus];
      else problems.push(`unknown status '${filters.status}'`);
    }
    for (const k of ['since', 'until'] as const) {
      if (!filters[k]) continue;
      const t = Date.parse(/[zZ]|[+-]\d\d:?\d\d$/.test(filters[k]) ? filters[k] : `${filters[k]}Z`);
      if (Number.isNaN(t)) problems.push(`${k === 'since' ? 'From' : 'Until'} is not a date and time`);
      else query[k] = t;
    }
    const before = q.get('before');
    if (before !== null) {
      if (/^\d{1,15}$/.test(before)) query.beforeSeq = Number(before);
      else problems.push('before must be a message sequence number');
    }
    if (problems.length) return html(res, 400, messagesPage({ csrf, filters, attention: [], messages: [], error: `Check the filters: ${problems.join('; ')}.`, older: false }));
    const after = await this.o.store.lastEventSeq();
    const [attention, page] = await Promise.all([
      query.beforeSeq === undefined ? this.o.store.listMessages({ ...query, attention: true, limit: ATTENTION }) : Promise.resolve({ messages: [] as MessageRecord[] }),
      this.o.store.listMessages({ ...query, limit: PAGE }),
    ]);
    html(res, 200, messagesPage({ csrf, after, filters, attention: attention.messages, messages: page.messages, ...(page.next !== undefined ? { next: page.next } : {}), older: query.beforeSeq !== undefined }));
  }

  private async messageView(res: http.ServerResponse, id: string, csrf: string, notice?: string, error?: { status: number; text: string }): Promise<void> {
    const after = await this.o.store.lastEventSeq();
    const m = await this.o.store.getMessage(id);
    if (!m) throw new ConsoleError(404, 'DW_NOT_FOUND', `no message '${id}'`);
    const history = await this.o.store.getHistory(id);
    const links = retryLinks(history);
    html(
      res,
      error?.status ?? 200,
      messagePage({
        csrf,
        after,
        message: m,
        history,
        ...links,
        ...(notice ? { notice } : {}),
        ...(error ? { error: error.text } : {}),
        canCancel: m.status === 'queued' || m.status === 'sent',
        canRetry: RETRYABLE.has(m.status) && !links.retriedAs,
      }),
    );
  }
}

function wantsHtml(req: http.IncomingMessage): boolean {
  return (req.headers.accept ?? '').includes('text/html');
}

function html(res: http.ServerResponse, status: number, body: string): void {
  res.writeHead(status, { ...SECURITY_HEADERS, 'content-type': 'text/html; charset=utf-8', 'content-length': Buffer.byteLength(body), 'cache-control': 'no-store' });
  res.end(body);
}

function json(res: http.ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body) + '\n';
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
  res.end(text);
}

function redirect(res: http.ServerResponse, location: string): void {
  res.writeHead(303, { location, 'cache-control': 'no-store' }).end();
}

/** An urlencoded form body, at most MAX_FORM bytes (413 beyond). */
async function readForm(req: http.IncomingMessage): Promise<URLSearchParams> {
  const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
  if (type !== 'application/x-www-form-urlencoded') throw new ConsoleError(415, 'DW_BAD_REQUEST', 'a console form is application/x-www-form-urlencoded');
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of req as AsyncIterable<Buffer>) {
    n += c.length;
    if (n > MAX_FORM) throw new ConsoleError(413, 'DW_TOO_LARGE', `a console form is at most ${MAX_FORM} bytes`);
    chunks.push(c);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}
