/**
 * Cut-through (PROTOCOL 7.18): the bytes of an upload handed to the device's delivery while they still
 * arrive, beside their way to the body storage. The upload is never slowed for long by a slow device: past
 * CUT_THROUGH_BUFFER bytes not yet taken, it waits for the delivery, CUT_THROUGH_STALL_MS at most in all;
 * then the delivery lets go (`detach`) and the rest goes store-and-forward, from where it stopped.
 */
import type { MessageRecord } from './store/types.js';

/** Bytes an upload may be ahead of the delivery that takes them. */
export const CUT_THROUGH_BUFFER = 8 * 1024 * 1024;
/** How long, in all, an upload waits for a delivery that is behind before it lets the delivery go. */
export const CUT_THROUGH_STALL_MS = 1_000;

/** How an upload ended, as the delivery learns it. */
export type CutThroughEnd = { stored: MessageRecord } | { aborted: true };

export class CutThrough {
  readonly id: string;
  readonly size: number;
  private queue: Uint8Array[] = [];
  private head = 0;
  private queued = 0;
  /** Bytes the upload delivered to the tap. */
  private arrived = 0;
  private end: CutThroughEnd | undefined;
  private detached = false;
  /** Time the upload spent waiting for the delivery so far. */
  private waitedMs = 0;
  /** The stream the delivery wrote to is gone: it stops waiting at once. */
  private dropped = false;
  /** The delivery waits for bytes or the end. */
  private wakeTaker: (() => void) | undefined;
  /** The upload waits for room. */
  private wakeGiver: (() => void) | undefined;

  constructor(id: string, size: number) {
    this.id = id;
    this.size = size;
  }

  /** The upload's body, passed through unchanged; each piece is also queued for the delivery. */
  async *tap(source: AsyncIterable<Buffer>): AsyncIterable<Buffer> {
    for await (const piece of source) {
      if (!this.detached && piece.length > 0) {
        this.arrived += piece.length;
        if (this.arrived > this.size) this.detach(); // more than announced: the HTTP layer refuses it
        else {
          this.queue.push(piece);
          this.queued += piece.length;
          this.poke();
          if (this.queued > CUT_THROUGH_BUFFER) await this.room();
        }
      }
      yield piece;
    }
  }

  /** The upload's message is durable (its 202 goes out): the delivery may send FILE_END. */
  stored(message: MessageRecord): void {
    this.end ??= { stored: message };
    this.poke();
  }

  /** The upload failed or was refused: nothing of it may be handled. */
  abort(): void {
    this.end ??= { aborted: true };
    this.detach();
  }

  /** The delivery stops taking bytes: the queue is dropped and the upload never waits again. */
  detach(): void {
    this.detached = true;
    this.queue = [];
    this.head = 0;
    this.queued = 0;
    this.poke();
  }

  /** The delivery's stream ended (a new session, a hand-over, the relay closing): it stops at once. */
  drop(): void {
    this.dropped = true;
    this.detach();
  }

  /**
   * The next pieces, at most `max` bytes (a piece is never split unless it alone is larger), once there are
   * any; `undefined` when no more will come (every byte taken, or detached).
   */
  async take(max: number): Promise<Uint8Array[] | undefined> {
    for (;;) {
      if (this.detached) return undefined;
      if (this.queued > 0) return this.takeNow(max);
      if (this.arrived >= this.size) return undefined;
      if (this.end) return undefined; // aborted (or stored short of its size, which a 202 never is)
      await new Promise<void>((r) => (this.wakeTaker = r));
    }
  }

  /** Resolves with how the upload ended; undefined if the delivery's stream ended first (`drop`). */
  async ended(): Promise<CutThroughEnd | undefined> {
    while (!this.end && !this.dropped) await new Promise<void>((r) => (this.wakeTaker = r));
    return this.end;
  }

  private takeNow(max: number): Uint8Array[] {
    const out: Uint8Array[] = [];
    let n = 0;
    while (this.head < this.queue.length) {
      const piece = this.queue[this.head]!;
      if (n > 0 && n + piece.length > max) break;
      if (piece.length > max) {
        out.push(piece.subarray(0, max));
        this.queue[this.head] = piece.subarray(max);
        n += max;
        break;
      }
      out.push(piece);
      n += piece.length;
      this.head++;
    }
    if (this.head === this.queue.length) {
      this.queue = [];
      this.head = 0;
    }
    this.queued -= n;
    if (this.queued <= CUT_THROUGH_BUFFER / 2) {
      const w = this.wakeGiver;
      this.wakeGiver = undefined;
      w?.();
    }
    return out;
  }

  private poke(): void {
    const t = this.wakeTaker;
    this.wakeTaker = undefined;
    t?.();
    if (this.detached) {
      const g = this.wakeGiver;
      this.wakeGiver = undefined;
      g?.();
    }
  }

  /** Waits until the delivery took enough, or gives it up once the upload has waited CUT_THROUGH_STALL_MS in all. */
  private async room(): Promise<void> {
    const left = CUT_THROUGH_STALL_MS - this.waitedMs;
    if (left <= 0) return this.detach();
    let timer: NodeJS.Timeout | undefined;
    const roomMade = new Promise<boolean>((r) => (this.wakeGiver = () => r(true)));
    const stalled = new Promise<boolean>((r) => (timer = setTimeout(() => r(false), left)));
    const t0 = Date.now();
    const ok = await Promise.race([roomMade, stalled]);
    this.waitedMs += Date.now() - t0;
    clearTimeout(timer);
    if (!ok) {
      this.wakeGiver = undefined;
      this.detach();
    }
  }
}
