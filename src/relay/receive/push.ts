import { createHmac } from 'node:crypto';
import fs from 'node:fs';
import { Readable } from 'node:stream';
import type { Logger } from '../../shared/log.js';
import type { EventFeed } from '../events.js';
import type { Hub } from '../hub.js';
import type { MessageRecord, Store, TokenRecord } from '../store/types.js';
import { DEFAULT_HORIZON_MS } from '../webhooks.js';
import { fileHeaders, setSiteStatus } from './status.js';

const TOKEN_POLL_MS = 2_000;

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
}

interface Worker {
  running: boolean;
  again: boolean;
  timer: NodeJS.Timeout | undefined;
  failures: Map<string, { first: number; n: number }>;
}

/**
 * Files for sites that receive with `--deliver-url`: each is POSTed, raw and signed, in order, one at a time
 * per site; 2xx marks it handled. A failure is retried with back-off like webhooks (500 ms doubling to 10 s),
 * later files waiting behind it, until the horizon (24 h): then it is failed.
 */
export class SitePush {
  private readonly o: Required<Omit<PushOptions, 'now'>> & { now: () => number };
  private readonly workers = new Map<string, Worker>();
  private sites: TokenRecord[] = [];
  private closed = false;
  private readonly onAppended = () => this.kick();
  private readonly poll: NodeJS.Timeout;

  constructor(o: PushOptions) {
    this.o = { initialDelayMs: 500, maxDelayMs: 10_000, horizonMs: DEFAULT_HORIZON_MS, timeoutMs: 30_000, now: Date.now, ...o };
    o.feed.on('appended', this.onAppended);
    this.poll = setInterval(() => this.refresh(), TOKEN_POLL_MS);
    this.poll.unref();
    this.refresh();
  }

  refresh(): void {
    if (this.closed) return;
    void this.o.store.listTokens().then(
      (tokens) => {
        this.sites = tokens.filter((t) => t.receive && t.deliverUrl && t.webhookSecret);
        this.kick();
      },
      () => {},
    );
  }

  kick(): void {
    if (this.closed) return;
    for (const t of this.sites) this.run(t);
  }

  close(): void {
    this.closed = true;
    clearInterval(this.poll);
    this.o.feed.off('appended', this.onAppended);
    for (const w of this.workers.values()) clearTimeout(w.timer);
  }

  private run(site: TokenRecord): void {
    let w = this.workers.get(site.name);
    if (!w) this.workers.set(site.name, (w = { running: false, again: false, timer: undefined, failures: new Map() }));
    if (w.timer) return;
    if (w.running) {
      w.again = true;
      return;
    }
    w.running = true;
    const worker = w;
    this.drain(site, worker)
      .catch((err: unknown) => this.o.log.error({ err, site: site.name }, 'push to a site failed'))
      .finally(() => {
        worker.running = false;
        if (worker.again && !worker.timer) {
          worker.again = false;
          this.run(site);
        }
      });
  }

  private async drain(site: TokenRecord, w: Worker): Promise<void> {
    for (let rounds = 0; rounds < 1000 && !this.closed; rounds++) {
      w.again = false;
      const batch = await this.o.store.pending(site.name, 0, 16);
      if (batch.length === 0) return;
      for (const m of batch) if (!(await this.deliver(site, w, m))) return;
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
        body: (body ?? Readable.toWeb(fs.createReadStream(m.bodyPath!))) as unknown as RequestInit['body'],
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
    w.timer = setTimeout(() => {
      w.timer = undefined;
      this.run(site);
    }, delay);
    w.timer.unref();
    return false;
  }
}
