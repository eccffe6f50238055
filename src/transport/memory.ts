import v8 from 'node:v8';
import vm from 'node:vm';

/**
 * Keeps memory flat while files stream. Every record passes through short-lived buffers (socket reads,
 * decrypted records, file reads): tiny JS objects holding 64 KiB each outside the heap. V8 collects them
 * only when its young generation fills with objects or external memory grows by tens of MiB, so a fast
 * transfer leaves 50-100 MiB of dead buffers (and malloc fragments) per process. A young-generation
 * collection after every few MiB moved frees them at once: about 0.1 ms each (measured). A record leaves one
 * or two 64 KiB buffers behind since records are sealed and opened from their parts (it was four or five
 * while records were copied together), so 8 MiB moved leaves about what 4 MiB did: half the collections.
 */
export const COLLECT_EVERY_BYTES = 8 * 1024 * 1024;

type Gc = (options?: { type: 'minor' | 'major'; execution?: 'sync' | 'async'; flavor?: 'regular' | 'last-resort' }) => void;

let gc: Gc | undefined | null;

function collector(): Gc | undefined {
  if (gc === undefined) {
    try {
      v8.setFlagsFromString('--expose-gc');
      gc = vm.runInNewContext('gc') as Gc;
    } catch {
      gc = null; // not available here: memory is then only bounded by V8's own triggers
    }
  }
  return gc ?? undefined;
}

let moved = 0;

/** Counts bytes moved; collects the young generation each COLLECT_EVERY_BYTES. */
export function transferred(bytes: number): void {
  moved += bytes;
  if (moved < COLLECT_EVERY_BYTES) return;
  moved = 0;
  collector()?.({ type: 'minor' });
}

/**
 * A burst of new connections (a relay restart brings every agent back within seconds) leaves V8's heap at
 * the size the burst needed: the young generation grown to its maximum (64 MiB here) and old-space pages
 * half empty. V8 gives that back by itself only once allocation stops altogether, which heartbeats never
 * let happen, so an idle relay kept it for good (measured: 30 KiB of committed heap per connection after
 * 5,000 handshakes, of which 3-7 KiB live). After a burst has settled, one memory-reducing full
 * collection returns it, once per burst: a pause of ~50 ms at 5,000 connections, ~300 ms at 19,000
 * (bench/session.ts idle, 2 vCPU).
 */
export const BURST_CONNECTIONS = 1000;
/** The burst has settled when a window of this length saw fewer than BURST_QUIET_CONNECTIONS new ones. */
export const BURST_WINDOW_MS = 1000;
export const BURST_QUIET_CONNECTIONS = 10;

/**
 * A handshake leaves native garbage behind (OpenSSL keys and contexts, digests in ArrayBuffers), freed only
 * when V8 collects the small JS objects that hold it. In a burst the young generation grows large and is
 * collected seldom, so the garbage of hundreds of handshakes piles up in malloc's heap between the long-lived
 * allocations of the connections made meanwhile; glibc keeps those pages after freeing them (measured: ~5
 * KiB per connection). A young-generation collection after every MINOR_EVERY_CONNECTIONS new connections
 * frees it while it is still small: at 5,000 connections, 9.1-9.3 KiB of RSS per connection instead of
 * 11.8-12.9, the main heap's share 2.5-2.9 KiB instead of 5.0-5.5 (bench/session.ts idle --smaps=1, runs
 * alternated; every 4, 16 or 32 connections saved less). About 0.1-0.5 ms per collection.
 */
export const MINOR_EVERY_CONNECTIONS = 8;

/** Counts new connections; after BURST_CONNECTIONS of them and then a quiet window, compacts the heap once. */
export class BurstCompactor {
  private sinceCompaction = 0;
  private sinceMinor = 0;
  private inWindow = 0;
  private timer: NodeJS.Timeout | undefined;
  private readonly compact: () => void;
  private readonly minor: () => void;
  /** Compactions done (for tests and stats). */
  compactions = 0;

  constructor(compact: () => void = () => compactHeap(), minor: () => void = () => collector()?.({ type: 'minor' })) {
    this.compact = compact;
    this.minor = minor;
  }

  connected(): void {
    if (++this.sinceMinor >= MINOR_EVERY_CONNECTIONS) {
      this.sinceMinor = 0;
      this.minor();
    }
    this.sinceCompaction++;
    this.inWindow++;
    if (this.sinceCompaction < BURST_CONNECTIONS || this.timer) return;
    this.inWindow = 0;
    this.timer = setInterval(() => this.check(), BURST_WINDOW_MS);
    this.timer.unref();
  }

  close(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  private check(): void {
    if (this.inWindow >= BURST_QUIET_CONNECTIONS) {
      this.inWindow = 0;
      return;
    }
    this.close();
    this.sinceCompaction = 0;
    this.compactions++;
    this.compact();
  }
}

/** Below this much committed but unused heap, a compaction would pause the process for little. */
export const COMPACT_MIN_SLACK = 16 * 1024 * 1024;

/**
 * A full collection that also shrinks the young generation and releases free pages (V8's "last resort"
 * collection, which the memory reducer would run on an idle process); no-op without gc, or when the heap
 * has less than COMPACT_MIN_SLACK to give back (unless `force`).
 */
export function compactHeap(force = false): void {
  const h = v8.getHeapStatistics();
  if (!force && h.total_heap_size - h.used_heap_size < COMPACT_MIN_SLACK) return;
  collector()?.({ type: 'major', execution: 'sync', flavor: 'last-resort' });
}
