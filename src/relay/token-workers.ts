import type { Logger } from '../shared/log.js';
import type { EventFeed } from './events.js';
import type { Store, TokenRecord } from './store/types.js';

/** Tokens are added and removed by the CLI from another process: they are looked for again this often. */
const TOKEN_POLL_MS = 2_000;

/** One token's delivery: one drain at a time, a retry timer, the failing items' first attempt and count. */
export interface TokenWorker<K> {
  running: boolean;
  again: boolean;
  timer: NodeJS.Timeout | undefined;
  failures: Map<K, { first: number; n: number }>;
}

/**
 * Deliveries that go, per token, in order and one at a time to a receiver outside (webhooks, files pushed to
 * sites): woken by every event appended, re-reading the tokens now and then, retrying a failed item after a
 * back-off (`retryAfter`) while later items wait behind it. Subclasses say which tokens they serve and drain one.
 */
export abstract class TokenWorkers<K> {
  protected closed = false;
  private readonly workers = new Map<string, TokenWorker<K>>();
  private tokens: TokenRecord[] = [];
  private readonly onAppended = () => this.kick();
  private readonly poll: NodeJS.Timeout;
  private readonly base: { store: Store; feed: EventFeed; log: Logger; what: string };

  constructor(base: { store: Store; feed: EventFeed; log: Logger; what: string }) {
    this.base = base;
    base.feed.on('appended', this.onAppended);
    this.poll = setInterval(() => this.refresh(), TOKEN_POLL_MS);
    this.poll.unref();
  }

  /** The tokens this delivery serves. */
  protected abstract serves(token: TokenRecord): boolean;
  /** Delivers what is owed to one token, in order; `retryAfter` when an item failed. */
  protected abstract drain(token: TokenRecord, w: TokenWorker<K>): Promise<void>;

  /** Re-reads the tokens, then wakes every worker. */
  refresh(): void {
    if (this.closed) return;
    void this.base.store.listTokens().then(
      (tokens) => {
        this.tokens = tokens.filter((t) => this.serves(t));
        this.kick();
      },
      () => {},
    );
  }

  /** Wakes the worker of every token served (new events were appended). */
  kick(): void {
    if (this.closed) return;
    for (const t of this.tokens) this.run(t);
  }

  close(): void {
    this.closed = true;
    clearInterval(this.poll);
    this.base.feed.off('appended', this.onAppended);
    for (const w of this.workers.values()) clearTimeout(w.timer);
  }

  /** Runs the token's drain again after `delayMs` (a failed item), not before. */
  protected retryAfter(token: TokenRecord, w: TokenWorker<K>, delayMs: number): void {
    w.timer = setTimeout(() => {
      w.timer = undefined;
      this.run(token);
    }, delayMs);
    w.timer.unref();
  }

  private run(token: TokenRecord): void {
    let w = this.workers.get(token.name);
    if (!w) this.workers.set(token.name, (w = { running: false, again: false, timer: undefined, failures: new Map() }));
    if (w.timer) return; // waiting for a retry: the timer runs it
    if (w.running) {
      w.again = true;
      return;
    }
    w.running = true;
    const worker = w;
    this.drain(token, worker)
      .catch((err: unknown) => this.base.log.error({ err, token: token.name }, `${this.base.what} failed`))
      .finally(() => {
        worker.running = false;
        if (worker.again && !worker.timer) {
          worker.again = false;
          this.run(token);
        }
      });
  }
}
