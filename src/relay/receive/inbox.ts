import fs from 'node:fs';
import type http from 'node:http';
import { DropwireError } from '../../shared/errors.js';
import type { EventFeed } from '../events.js';
import type { Hub } from '../hub.js';
import type { Store, TokenRecord } from '../store/types.js';
import { fileHeaders, setSiteStatus } from './status.js';

export const MAX_INBOX_WAIT_S = 60;
const MAX_REASON = 1024;

export interface InboxDeps {
  store: Store;
  hub: Hub;
  feed: EventFeed;
  now: () => number;
}

/** A coded HTTP answer (the API's error shape). */
export class InboxError extends DropwireError {
  readonly status: number;
  constructor(status: number, code: string, message: string) {
    super(code, message);
    this.status = status;
  }
}

/**
 * Sites that pull (`relay token add NAME --receive` without `--deliver-url`): GET /v1/inbox?wait=S answers the
 * oldest file not yet acknowledged, raw, with its headers (204 when none came within S seconds); POST
 * /v1/inbox/ID/ack marks it handled, /nack (with a reason) failed. Until then the same file is answered again.
 */
export async function inbox(d: InboxDeps, req: http.IncomingMessage, res: http.ServerResponse, url: URL, token: TokenRecord, parts: string[]): Promise<void> {
  if (!token.receive) throw new InboxError(403, 'DW_FORBIDDEN', `token '${token.name}' does not receive files (relay token add NAME --receive)`);
  const method = req.method ?? 'GET';
  if (parts.length === 2) {
    if (method !== 'GET') throw new InboxError(405, 'DW_METHOD_NOT_ALLOWED', `${method} is not allowed here; use GET`);
    return next(d, res, url, token);
  }
  if (parts.length === 4 && (parts[3] === 'ack' || parts[3] === 'nack')) {
    if (method !== 'POST') throw new InboxError(405, 'DW_METHOD_NOT_ALLOWED', `${method} is not allowed here; use POST`);
    const m = await d.store.getMessage(parts[2]!);
    if (!m || m.to !== token.name) throw new InboxError(404, 'DW_NOT_FOUND', `no file '${parts[2]}' for '${token.name}'`);
    let result: Record<string, unknown> | undefined;
    if (parts[3] === 'nack') {
      const text = await readSmall(req);
      let reason = text;
      try {
        const j = JSON.parse(text) as { reason?: unknown };
        if (typeof j.reason === 'string') reason = j.reason;
      } catch {
        // a plain-text reason
      }
      result = { code: 'DW_NACK', reason: reason.slice(0, MAX_REASON) || 'refused by the site' };
    }
    await setSiteStatus(d, m, parts[3] === 'ack' ? 'handled' : 'failed', result);
    const after = (await d.store.getMessage(m.id))!;
    return json(res, 200, { id: after.id, status: after.status });
  }
  throw new InboxError(404, 'DW_NOT_FOUND', 'no such endpoint');
}

async function next(d: InboxDeps, res: http.ServerResponse, url: URL, token: TokenRecord): Promise<void> {
  const waitS = Math.min(Number(url.searchParams.get('wait') ?? 0) || 0, MAX_INBOX_WAIT_S);
  const end = d.now() + Math.max(0, waitS) * 1000;
  let closed = false;
  res.once('close', () => (closed = true));
  for (;;) {
    const [m] = await d.store.pending(token.name, 0, 1);
    if (m) {
      if (m.status === 'queued') await setSiteStatus(d, m, 'sent');
      res.writeHead(200, { ...fileHeaders(m), 'content-length': String(m.size) });
      if (m.inline) return void res.end(m.body ?? (await d.store.readInlineBody(m.id)));
      fs.createReadStream(m.bodyPath!).pipe(res);
      return;
    }
    if (closed || d.now() >= end) {
      res.writeHead(204);
      return void res.end();
    }
    // Woken by any appended event (a new message is one), or every second.
    await new Promise<void>((resolve) => {
      const t = setTimeout(done, Math.min(1_000, Math.max(1, end - d.now())));
      function done() {
        clearTimeout(t);
        d.feed.off('appended', done);
        resolve();
      }
      d.feed.once('appended', done);
    });
  }
}

function readSmall(req: http.IncomingMessage): Promise<string> {
  return new Promise((resolve) => {
    let s = '';
    req.setEncoding('utf8');
    req.on('data', (c: string) => {
      if (s.length < 16 * 1024) s += c;
    });
    req.on('end', () => resolve(s));
    req.on('error', () => resolve(s));
  });
}

function json(res: http.ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body) + '\n';
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}
