import { createHmac } from 'node:crypto';
import type { Logger } from '../shared/log.js';
import { eventBody, visibleTo, type EventFeed } from './events.js';
import type { RelayEvent, Store, TokenRecord } from './store/types.js';

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
const TOKEN_POLL_MS = 2_000;

/** `t=<ms>,v1=<hex HMAC-SHA256(secret, "<ms>." + body)>` — README "Verifying a webhook". */
export function signature(secret: string, timestamp: number, body: string): string {
  return `t=${timestamp},v1=${createHmac('sha256', secret).update(`${timestamp}.${body}`).digest('hex')}`;
}

interface Worker {
  running: boolean;
  again: boolean;
  timer: NodeJS.Timeout | undefined;
  failures: Map<number, { first: number; n: number }>;
}

/**
 * Delivers the event log to each token's webhook, in order, one event at a time per token: an event that
 * fails is retried with exponential backoff (each attempt recorded) and later events wait behind it, so a
 * receiver that was down gets everything, in order, when it is back — within the retry horizon.
 */
export class Webhooks {
  private readonly o: Required<Omit<WebhookOptions, 'now' | 'gate'>> & { now: () => number; gate: () => boolean };
  private readonly workers = new Map<string, Worker>();
  private closed = false;
  private readonly onAppended = () => this.kick();
  private readonly poll: NodeJS.Timeout;

  constructor(o: WebhookOptions) {
    this.o = { initialDelayMs: 500, maxDelayMs: 10_000, horizonMs: DEFAULT_HORIZON_MS, timeoutMs: 10_000, now: Date.now, gate: () => true, ...o };
    o.feed.on('appended', this.onAppended);
    // Tokens are added by the CLI from another process: look for new ones now and then.
    this.poll = setInterval(() => this.refresh(), TOKEN_POLL_MS);
    this.poll.unref();
  }

  /** Tokens with a webhook, as last read (refreshed every TOKEN_POLL_MS; tokens are added by the CLI). */
  private hooks: TokenRecord[] = [];

  /** Re-reads the tokens, then wakes every webhook worker. */
  refresh(): void {
    if (this.closed) return;
    void this.o.store.listTokens().then(
      (tokens) => {
        this.hooks = tokens.filter((t) => t.webhook && t.webhookSecret);
        this.kick();
      },
      () => {},
    );
  }

  /** Wakes the worker of every token with a webhook (new events were appended). */
  kick(): void {
    if (this.closed) return;
    for (const t of this.hooks) this.run(t);
  }

  close(): void {
    this.closed = true;
    clearInterval(this.poll);
    this.o.feed.off('appended', this.onAppended);
    for (const w of this.workers.values()) clearTimeout(w.timer);
  }

  private worker(name: string): Worker {
    let w = this.workers.get(name);
    if (!w) {
      w = { running: false, again: false, timer: undefined, failures: new Map() };
      this.workers.set(name, w);
    }
    return w;
  }

  private run(token: TokenRecord): void {
    const w = this.worker(token.name);
    if (w.timer) return; // waiting for a retry: the timer runs it
    if (w.running) {
      w.again = true;
      return;
    }
    w.running = true;
    this.drain(token, w)
      .catch((err: unknown) => this.o.log.error({ err, token: token.name }, 'webhook delivery failed'))
      .finally(() => {
        w.running = false;
        if (w.again && !w.timer) {
          w.again = false;
          this.run(token);
        }
      });
  }

  private async drain(token: TokenRecord, w: Worker): Promise<void> {
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
    w.timer = setTimeout(() => {
      w.timer = undefined;
      this.run(token);
    }, delay);
    w.timer.unref();
    return false;
  }
}
