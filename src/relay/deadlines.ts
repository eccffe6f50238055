import type { Logger } from '../shared/log.js';
import type { EventFeed } from './events.js';
import type { Hub, StatusEvent } from './hub.js';
import type { Store } from './store/types.js';

export const SWEEP_MS = 500;

export interface SweeperOptions {
  store: Store;
  hub: Hub;
  feed: EventFeed;
  log: Logger;
  now?: () => number;
  intervalMs?: number;
  /** In a cluster: whether this node still holds the lease for once-per-cluster work (else it skips). */
  gate?: () => boolean;
}

/**
 * Flags messages not `received` by their deadline as overdue (an event; they stay queued), and expires
 * those past their time to live (never delivered after it).
 */
export class DeadlineSweeper {
  private readonly timer: NodeJS.Timeout;
  private busy = false;
  private readonly o: SweeperOptions;

  constructor(o: SweeperOptions) {
    this.o = o;
    this.timer = setInterval(() => void this.sweep(), o.intervalMs ?? SWEEP_MS);
    this.timer.unref();
  }

  async sweep(): Promise<void> {
    if (this.busy || (this.o.gate && !this.o.gate())) return;
    this.busy = true;
    const { store, hub, feed, log } = this.o;
    const now = (this.o.now ?? Date.now)();
    try {
      let changed = false;
      for (const m of await store.dueForDeadline(now, 500)) {
        if (await store.markOverdue(m.id, now)) {
          changed = true;
          log.warn({ id: m.id, to: m.to }, 'message overdue: not received by its deadline');
        }
      }
      for (const m of await store.dueForExpiry(now, 500)) {
        const [applied] = await store.setStatus([{ id: m.id, status: 'expired', at: now }]);
        if (applied) {
          changed = true;
          hub.cancel(m.to, m.id);
          // Long polls (`?wait=`) answer at once.
          hub.emit('status', { id: m.id, to: m.to, from: m.from, status: 'expired', at: now } satisfies StatusEvent);
          log.warn({ id: m.id, to: m.to }, 'message expired: its time to live passed before delivery');
        }
      }
      if (changed) feed.notify();
    } catch (err) {
      log.error({ err }, 'deadline sweep failed');
    } finally {
      this.busy = false;
    }
  }

  close(): void {
    clearInterval(this.timer);
  }
}
