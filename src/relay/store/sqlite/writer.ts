/**
 * The SQLite store's group-commit writer. Every write goes through one queue and is applied in call order:
 * writes queued during a turn of the event loop share one transaction (BEGIN IMMEDIATE … COMMIT, at most
 * `maxBatch` writes), and their promises settle only after COMMIT returned — with `synchronous=FULL` in WAL
 * mode, after the WAL was fsync'd. Each write runs inside its own savepoint, so a write that fails (a
 * duplicate name, a bad value) is rolled back and rejected alone; the others in the batch still commit.
 */
import type { DatabaseSync, StatementSync } from 'node:sqlite';
import { DropwireError } from '../../../shared/errors.js';
import { closedError, failed, invalid } from '../errors.js';
import { StoreErrorCode } from '../types.js';

const SQLITE_CONSTRAINT = 19;
const SQLITE_CONSTRAINT_CHECK = 275;
const SQLITE_CONSTRAINT_PRIMARYKEY = 1555;
const SQLITE_CONSTRAINT_UNIQUE = 2067;
const SQLITE_CONSTRAINT_DATATYPE = 3091;

function sqliteCode(err: unknown): number | undefined {
  const code = (err as { errcode?: unknown } | null)?.errcode;
  return typeof code === 'number' ? code : undefined;
}

/** One queued write. The store may build its own (to settle more than one caller on the same commit). */
export interface Write {
  /** What the write is, for error messages: `enqueue m-123`. */
  label: string;
  /** The code a unique-constraint violation means for this write (e.g. DW_DEVICE_EXISTS). */
  onDuplicate?: string | undefined;
  /**
   * Runs inside the open transaction; its value goes to `resolve` once the transaction has committed. It
   * may run again (its first run rolled back with a batch that is redone write by write).
   */
  run(): unknown;
  resolve(value: unknown): void;
  reject(err: DropwireError): void;
}

/** Maps what a write threw to the error its caller sees. */
function writeError(w: Write, err: unknown): DropwireError {
  if (err instanceof DropwireError) return err;
  const code = sqliteCode(err);
  if (code === SQLITE_CONSTRAINT_UNIQUE || code === SQLITE_CONSTRAINT_PRIMARYKEY) {
    const message = err instanceof Error ? err.message : 'duplicate';
    return new DropwireError(w.onDuplicate ?? StoreErrorCode.FAILED, `${w.label}: ${message}`, { cause: err });
  }
  if (code === SQLITE_CONSTRAINT_CHECK || code === SQLITE_CONSTRAINT_DATATYPE) {
    return invalid(`${w.label}: ${err instanceof Error ? err.message : 'bad value'}`, err);
  }
  if (code !== undefined && (code & 0xff) === SQLITE_CONSTRAINT) {
    return invalid(`${w.label}: ${err instanceof Error ? err.message : 'constraint'}`, err);
  }
  return failed(w.label, err);
}

/** The transaction statements the writer runs. */
export interface TransactionStatements {
  begin: StatementSync;
  commit: StatementSync;
  rollback: StatementSync;
  savepoint: StatementSync;
  release: StatementSync;
  rollbackTo: StatementSync;
}

export interface WriterCounters {
  /** Transactions committed. */
  commits: number;
  /** Writes committed. */
  writes: number;
  /** Writes rejected (constraint, refused enrollment, I/O...). */
  failedWrites: number;
  /** Most writes committed in one transaction so far. */
  largestBatch: number;
}

export class GroupCommitWriter {
  private readonly queue: Write[] = [];
  private flushScheduled = false;
  readonly counters: WriterCounters = { commits: 0, writes: 0, failedWrites: 0, largestBatch: 0 };
  lastCommitAt: number | undefined;

  private readonly db: DatabaseSync;
  private readonly tx: TransactionStatements;
  private readonly now: () => number;
  private readonly maxBatch: number;

  constructor(db: DatabaseSync, tx: TransactionStatements, now: () => number, maxBatch: number) {
    this.db = db;
    this.tx = tx;
    this.now = now;
    this.maxBatch = maxBatch;
  }

  /** Writes queued and not yet settled. */
  get queued(): number {
    return this.queue.length;
  }

  /** Commits every write still queued, synchronously (before the database is closed). */
  drain(): void {
    while (this.queue.length > 0) this.flushBatch();
  }

  /** Queues a write; `fn` runs inside the transaction, the promise settles after COMMIT. */
  write<T>(label: string, onDuplicate: string | undefined, fn: () => T): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.push({ label, onDuplicate, run: fn, resolve: resolve as (value: unknown) => void, reject });
    });
  }

  /** Queues a write built by the caller. */
  push(w: Write): void {
    this.queue.push(w);
    this.scheduleFlush();
  }

  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    setImmediate(() => {
      this.flushScheduled = false;
      this.flushBatch();
      if (this.queue.length > 0) this.scheduleFlush();
    });
  }

  /** Commits up to `maxBatch` queued writes in one transaction, then settles their promises. */
  flushBatch(): void {
    const batch = this.queue.splice(0, this.maxBatch);
    if (batch.length === 0) return;
    if (!this.db.isOpen) {
      for (const w of batch) w.reject(closedError());
      return;
    }
    /** What each write's run returned, by its place in `batch`. */
    const values: unknown[] = new Array(batch.length);
    /** Writes that were applied but lost with an aborted transaction: they go back to the queue. */
    let retry: Write[] = [];
    const fail = (w: Write, err: DropwireError): void => {
      this.counters.failedWrites++;
      w.reject(err);
    };

    try {
      this.tx.begin.run();
    } catch (err) {
      for (const w of batch) fail(w, failed(`${w.label}: begin transaction`, err));
      return;
    }
    // Fast path: the whole batch without savepoints (two statements fewer per write). If any write fails,
    // it is all rolled back and done again below, each write in its own savepoint.
    if (batch.length > 1) {
      let whole = true;
      for (let i = 0; i < batch.length; i++) {
        try {
          values[i] = batch[i]!.run();
        } catch {
          whole = false;
          break;
        }
      }
      if (whole) {
        try {
          this.tx.commit.run();
        } catch (err) {
          if (this.db.isTransaction) this.rollbackQuietly();
          for (const w of batch) fail(w, failed(`${w.label}: commit`, err));
          return;
        }
        this.counters.commits++;
        this.counters.writes += batch.length;
        this.counters.largestBatch = Math.max(this.counters.largestBatch, batch.length);
        this.lastCommitAt = this.now();
        for (let i = 0; i < batch.length; i++) batch[i]!.resolve(values[i]);
        return;
      }
      this.rollbackQuietly();
      try {
        this.tx.begin.run();
      } catch (err) {
        for (const w of batch) fail(w, failed(`${w.label}: begin transaction`, err));
        return;
      }
    }
    // A lone write needs no savepoint: if it fails, the whole (one-write) transaction is rolled back.
    const isolate = batch.length > 1;
    const applied: Write[] = [];
    const appliedValues: unknown[] = [];
    for (let i = 0; i < batch.length; i++) {
      const w = batch[i]!;
      try {
        if (isolate) this.tx.savepoint.run();
        const value = w.run();
        if (isolate) this.tx.release.run();
        applied.push(w);
        appliedValues.push(value);
      } catch (err) {
        fail(w, writeError(w, err));
        if (isolate && this.db.isTransaction) {
          try {
            this.tx.rollbackTo.run();
            this.tx.release.run();
            continue;
          } catch {
            // fall through: treat as a lost transaction
          }
        }
        // The transaction is gone (a lone write failed, or SQLite aborted it: I/O error, disk full).
        // The writes applied before this one did nothing wrong: queue them again, ahead of the rest.
        if (this.db.isTransaction) this.rollbackQuietly();
        retry = [...applied, ...batch.slice(i + 1)];
        applied.length = 0;
        appliedValues.length = 0;
        break;
      }
    }

    if (applied.length > 0) {
      try {
        this.tx.commit.run();
      } catch (err) {
        // COMMIT (the fsync) failed: nothing of this batch is durable, and retrying an fsync is not safe.
        if (this.db.isTransaction) this.rollbackQuietly();
        for (const w of applied) fail(w, failed(`${w.label}: commit`, err));
        this.queue.unshift(...retry);
        return;
      }
      this.counters.commits++;
      this.counters.writes += applied.length;
      this.counters.largestBatch = Math.max(this.counters.largestBatch, applied.length);
      this.lastCommitAt = this.now();
    } else if (this.db.isTransaction) {
      this.rollbackQuietly();
    }
    this.queue.unshift(...retry);
    for (let i = 0; i < applied.length; i++) applied[i]!.resolve(appliedValues[i]);
  }

  private rollbackQuietly(): void {
    try {
      this.tx.rollback.run();
    } catch {
      // already rolled back by SQLite
    }
  }
}
