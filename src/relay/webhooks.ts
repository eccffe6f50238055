import { createHmac } from 'node:crypto';
import type { Logger } from '../shared/log.js';
import { eventBody, visibleTo, type EventFeed } from './events.js';
import type { RelayEvent, Store, TokenRecord } from './store/types.js';
import { TokenWorkers, type TokenWorker } from './token-workers.js';

/** Events a webhook receives (README "Webhooks"). */
export const WEBHOOK_EVENTS: ReadonlySet<string> = new Set([
  'message.received',
  'message.handled',
  'message.failed',
  'message.rejected',
  'message.overdue',
  'message.expired',
  'device.online',
  'device.offline',
]);

export interface WebhookOptions {
  store: Store;
  feed: EventFeed;
  log: Logger;
  now?: () => number;
  /** First retry wait; it doubles up to `maxDelayMs`. */
  initialDelayMs?: number;
  maxDelayMs?: number;
  /** An event still failing this long after its first attempt is given up (recorded as abandoned). */
  horizonMs?: number;
  timeoutMs?: number;
  /**
   * In a cluster: whether this node still holds the lease for once-per-cluster work (checked before every
   * attempt, so a node that lost it sends nothing more). Always true on a single relay.
   */
  gate?: () => boolean;
}

export const DEFAULT_HORIZON_MS = 24 * 3600_000;

/** `t=<ms>,v1=<hex HMAC-SHA256(secret, "<ms>." + body)>` — README "Verifying a webhook". */
export function signature(secret: string, timestamp: number, body: string): string {
  return `t=${timestamp},v1=${createHmac('sha256', secret).update(`${timestamp}.${body}`).digest('hex')}`;
}

type Worker = TokenWorker<number>;

/**
 * Delivers the event log to each token's webhook, in order, one event at a time per token: an event that
 * fails is retried with exponential backoff (each attempt recorded) and later events wait behind it, so a
 * receiver that was down gets everything, in order, when it is back — within the retry horizon.
 */
export class Webhooks extends TokenWorkers<number> {
  private readonly o: Required<Omit<WebhookOptions, 'now' | 'gate'>> & { now: () => number; gate: () => boolean };
  constructor(o: WebhookOptions) {
    super({ store: o.store, feed: o.feed, log: o.log, what: 'webhook delivery' });
    this.o = { initialDelayMs: 500, maxDelayMs: 10_000, horizonMs: DEFAULT_HORIZON_MS, timeoutMs: 10_000, now: Date.now, gate: () => true, ...o };
  }

  protected serves(t: TokenRecord): boolean {
    return t.webhook !== undefined && t.webhookSecret !== undefined;
  }

  protected async drain(token: TokenRecord, w: Worker): Promise<void> {
    const { store } = this.o;
    for (let rounds = 0; rounds < 1000 && !this.closed; rounds++) {
      w.again = false;
      const cursor = await store.webhookCursor(token.name);
      const events = await store.eventsAfter(cursor, 200);
      if (events.length === 0) return;
      let skipTo = 0;
      for (const e of events) {
        if (!WEBHOOK_EVENTS.has(e.type) || !visibleTo(token, e)) {
          skipTo = e.seq;
          continue;
        }
        if (skipTo) {
          await store.skipWebhookEvents(token.name, skipTo);
          skipTo = 0;
        }
        if (this.closed || !this.o.gate()) return;
        if (!(await this.deliver(token, w, e))) return;
      }
      if (skipTo) await store.skipWebhookEvents(token.name, skipTo);
    }
  }

  /** One attempt; false when it failed and a retry was scheduled. */
  private async deliver(token: TokenRecord, w: Worker, e: RelayEvent): Promise<boolean> {
    const { store, log } = this.o;
    const at = this.o.now();
    const body = JSON.stringify(eventBody(e));
    let status: number | undefined;
    let error: string | undefined;
    try {
      const res = await fetch(token.webhook!, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          'user-agent': 'dropwire-webhook/1',
          'dropwire-event': e.type,
          'dropwire-event-id': String(e.seq),
          'dropwire-signature': signature(token.webhookSecret!, at, body),
        },
        body,
        signal: AbortSignal.timeout(this.o.timeoutMs),
      });
      status = res.status;
      await res.arrayBuffer().catch(() => undefined);
      if (res.ok) {
        w.failures.delete(e.seq);
        await store.recordWebhookAttempt({ token: token.name, seq: e.seq, at, ok: true, status });
        log.debug({ token: token.name, event: e.seq, type: e.type }, 'webhook delivered');
        return true;
      }
      error = `HTTP ${status}`;
    } catch (err) {
      error = (err as { cause?: { code?: string } }).cause?.code ?? (err as Error).message;
    }
    const f = w.failures.get(e.seq) ?? { first: at, n: 0 };
    f.n++;
    w.failures.set(e.seq, f);
    if (at - f.first >= this.o.horizonMs) {
      w.failures.delete(e.seq);
      await store.recordWebhookAttempt({ token: token.name, seq: e.seq, at, ok: false, ...(status ? { status } : {}), error: error ?? 'failed', abandoned: true });
      log.error({ token: token.name, event: e.seq, type: e.type, attempts: f.n }, 'webhook event given up after the retry horizon');
      return true;
    }
    await store.recordWebhookAttempt({ token: token.name, seq: e.seq, at, ok: false, ...(status ? { status } : {}), error: error ?? 'failed' });
    const delay = Math.min(this.o.maxDelayMs, this.o.initialDelayMs * 2 ** (f.n - 1));
    log.warn({ token: token.name, event: e.seq, type: e.type, error, attempt: f.n, retryInMs: delay }, 'webhook attempt failed');
    this.retryAfter(token, w, delay);
    return false;
  }
}
