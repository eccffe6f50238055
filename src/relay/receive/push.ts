import { createHmac } from 'node:crypto';
import { Readable } from 'node:stream';
import type { Logger } from '../../shared/log.js';
import type { EventFeed } from '../events.js';
import type { Hub } from '../hub.js';
import type { MessageRecord, Store, TokenRecord } from '../store/types.js';
import { DEFAULT_HORIZON_MS } from '../webhooks.js';
import { TokenWorkers, type TokenWorker } from '../token-workers.js';
import type { BodyReader } from '../body-storage.js';
import { fileHeaders, setSiteStatus } from './status.js';


/** `t=<ms>,v1=<hex HMAC-SHA256(secret, "<ms>.<id>.<sha256>")>`: the body is bound by its SHA-256 header. */
export function pushSignature(secret: string, timestamp: number, id: string, sha256: string): string {
  return `t=${timestamp},v1=${createHmac('sha256', secret).update(`${timestamp}.${id}.${sha256}`).digest('hex')}`;
}

export interface PushOptions {
  store: Store;
  hub: Hub;
  feed: EventFeed;
  log: Logger;
  now?: () => number;
  initialDelayMs?: number;
  maxDelayMs?: number;
  horizonMs?: number;
  timeoutMs?: number;
  /** Where large bodies are read from: this relay's disk, or Redis on a cluster. */
  bodies: BodyReader;
  /** In a cluster: whether this node still holds the lease for once-per-cluster work (checked before every attempt). */
  gate?: () => boolean;
}

/** A large body is POSTed in pieces of this size. */
const PUSH_PIECE = 1024 * 1024;

type Worker = TokenWorker<string>;

/**
 * Files for sites that receive with `--deliver-url`: each is POSTed, raw and signed, in order, one at a time
 * per site; 2xx marks it handled. A failure is retried with back-off like webhooks (500 ms doubling to 10 s),
 * later files waiting behind it, until the horizon (24 h): then it is failed.
 */
export class SitePush extends TokenWorkers<string> {
  private readonly o: Required<Omit<PushOptions, 'now' | 'gate'>> & { now: () => number; gate: () => boolean };
  constructor(o: PushOptions) {
    super({ store: o.store, feed: o.feed, log: o.log, what: 'push to a site' });
    this.o = { initialDelayMs: 500, maxDelayMs: 10_000, horizonMs: DEFAULT_HORIZON_MS, timeoutMs: 30_000, now: Date.now, gate: () => true, ...o };
    this.refresh();
  }

  protected serves(t: TokenRecord): boolean {
    return t.receive === true && t.deliverUrl !== undefined && t.webhookSecret !== undefined;
  }

  protected async drain(site: TokenRecord, w: Worker): Promise<void> {
    for (let rounds = 0; rounds < 1000 && !this.closed; rounds++) {
      w.again = false;
      const batch = await this.o.store.pending(site.name, 0, 16);
      if (batch.length === 0) return;
      for (const m of batch) {
        if (this.closed || !this.o.gate()) return;
        if (!(await this.deliver(site, w, m))) return;
      }
    }
  }

  /** One attempt; false when it failed and a retry is scheduled. */
  private async deliver(site: TokenRecord, w: Worker, m: MessageRecord & { body?: Uint8Array }): Promise<boolean> {
    const { store, log } = this.o;
    const at = this.o.now();
    if (m.status === 'queued') await setSiteStatus({ ...this.o }, m, 'sent');
    const body = m.inline ? (m.body ?? (await store.readInlineBody(m.id))) : undefined;
    let status: number | undefined;
    let error: string | undefined;
    try {
      const res = await fetch(site.deliverUrl!, {
        method: 'POST',
        headers: { ...fileHeaders(m), 'content-length': String(m.size), 'dropwire-signature': pushSignature(site.webhookSecret!, at, m.id, m.sha256) },
        body: (body ?? Readable.toWeb(Readable.from(this.o.bodies.read(m.bodyPath!, 0, m.size, PUSH_PIECE)))) as unknown as RequestInit['body'],
        ...(body ? {} : { duplex: 'half' }),
        signal: AbortSignal.timeout(this.o.timeoutMs),
      } as RequestInit);
      status = res.status;
      await res.arrayBuffer().catch(() => undefined);
    } catch (err) {
      error = (err as Error).message;
    }
    if (status !== undefined && status >= 200 && status < 300) {
      w.failures.delete(m.id);
      await setSiteStatus({ ...this.o }, m, 'handled', { httpStatus: status });
      log.info({ id: m.id, site: site.name, status }, 'file pushed to the site');
      return true;
    }
    const f = w.failures.get(m.id) ?? { first: at, n: 0 };
    f.n++;
    w.failures.set(m.id, f);
    if (at - f.first >= this.o.horizonMs) {
      w.failures.delete(m.id);
      await setSiteStatus({ ...this.o }, m, 'failed', { code: 'DW_DELIVERY_FAILED', attempts: f.n, ...(status ? { httpStatus: status } : { error }) });
      log.warn({ id: m.id, site: site.name, attempts: f.n }, 'push to the site given up');
      return true;
    }
    const delay = Math.min(this.o.maxDelayMs, this.o.initialDelayMs * 2 ** (f.n - 1));
    log.warn({ id: m.id, site: site.name, status, error, attempt: f.n, retryInMs: delay }, 'push to the site failed; retrying');
    this.retryAfter(site, w, delay);
    return false;
  }
}
