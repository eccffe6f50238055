/**
 * The relay's embedded store: one SQLite file through Node's built-in `node:sqlite`.
 *
 * Reads run at once (the driver is synchronous). Every write goes through the group-commit writer
 * (writer.ts): settled only after the transaction holding it was committed and fsync'd. The schema and
 * its migrations are in schema.ts, every SQL text in statements.ts.
 *
 * Lazy status changes (`setStatus(…, { lazy: true })`: `sent`, `received`) are held in memory, unseen by
 * any read, for at most `lazyWindowMs`: the message's next durable change takes them into its own write
 * (one UPDATE to the last status, an event row for every step, in order); those still held when their
 * window ends go with the next commit. A crash loses only changes nobody has seen.
 */
import type { DatabaseSync } from 'node:sqlite';
import { DropwireError } from '../../../shared/errors.js';
import { closedError, failed, invalid, jsonOrNull } from '../errors.js';
import {
  EventType,
  FINAL_STATUSES,
  canTransition,
  insertedMessage,
  MessageStatus,
  StoreErrorCode,
  type DeviceRecord,
  type RelayEvent,
  type WebhookAttempt,
  type HistoryEntry,
  type MessageRecord,
  type NewMessage,
  type PendingMessage,
  type StatusChange,
  type SetStatusOptions,
  type Store,
  type TokenRecord,
  type MessagePage,
  type MessageQuery,
  MESSAGE_SCAN_MAX,
  checkMessageQuery,
} from '../types.js';
import { LIVE, openDatabase } from './schema.js';
import {
  eventFromRow,
  historyFromRow,
  MESSAGE_COLUMNS,
  prepareStatements,
  toDevice,
  toMessage,
  toToken,
  type DeviceRow,
  type EventRow,
  type HistoryRow,
  type MessageRow,
  type Statements,
  type TokenRow,
} from './statements.js';
import { GroupCommitWriter } from './writer.js';
import { performance } from 'node:perf_hooks';

export { SCHEMA_VERSION } from './schema.js';
export { SCAN_SQL } from './statements.js';

/** Most writes in one transaction: bounds a commit's size and the time the event loop is held. */
export const DEFAULT_MAX_BATCH = 500;
/** How long a write waits for another connection's lock (e.g. a CLI reading the file) before failing. */
export const DEFAULT_BUSY_TIMEOUT_MS = 5_000;
/**
 * How long a lazy status change waits for its message's next durable change (a quick handler's RESULT)
 * to share its write, before it is written with the next commit.
 */
export const DEFAULT_LAZY_WINDOW_MS = 50;
/** The environment variable that sets the lazy window of a relay's store (ms, 0 to 60,000). */
export const LAZY_WINDOW_ENV = 'DROPWIRE_LAZY_WINDOW_MS';

function lazyWindowFromEnv(): number {
  const raw = process.env[LAZY_WINDOW_ENV];
  if (raw === undefined || raw === '') return DEFAULT_LAZY_WINDOW_MS;
  const v = Number(raw);
  if (!Number.isInteger(v) || v < 0 || v > 60_000) throw invalid(`${LAZY_WINDOW_ENV} must be a whole number of ms from 0 to 60000`);
  return v;
}

/** Most lazy changes held at once: past it, every one held is written at once. */
export const LAZY_MAX = 2_000;

export interface SqliteStoreOptions {
  /** Database file; its folder is created if missing. `:memory:` works for throwaway stores. */
  path: string;
  /** Clock for the store's own bookkeeping (`stats().lastCommitAt`); every record time is passed in. */
  now?: () => number;
  /** Group commit cap; 1 commits every write on its own (a baseline for benchmarks). */
  maxBatch?: number;
  busyTimeoutMs?: number;
  /**
   * How long a lazy status change may be held (default: DROPWIRE_LAZY_WINDOW_MS, else DEFAULT_LAZY_WINDOW_MS;
   * 0: written with the next commit).
   */
  lazyWindowMs?: number;
}

export interface SqliteStoreStats {
  /** Transactions committed by the write queue. */
  commits: number;
  /** Writes committed. */
  writes: number;
  /** Writes rejected (constraint, refused enrollment, I/O...). */
  failedWrites: number;
  /** Most writes committed in one transaction so far. */
  largestBatch: number;
  /** Writes queued and not yet settled. */
  queued: number;
  /** `now()` at the last commit, if any. */
  lastCommitAt?: number;
  /** Lazy status changes written in the write of a later change of the same message (joined to it). */
  lazyJoined: number;
  /** Lazy status changes written on their own, once their window had passed (or the LAZY_MAX bound). */
  lazyAlone: number;
}

/** The connection settings in force, for diagnostics (and the tests that pin them). */
export interface SqliteSettings {
  journalMode: string;
  /** 2 = FULL. */
  synchronous: number;
  foreignKeys: boolean;
  busyTimeoutMs: number;
  schemaVersion: number;
}

export interface SqliteStore extends Store {
  readonly path: string;
  stats(): SqliteStoreStats;
  settings(): SqliteSettings;
}

export async function openSqliteStore(options: SqliteStoreOptions): Promise<SqliteStore> {
  return SqliteStoreImpl.open(options);
}

interface EventMeta {
  to: string;
  from: string;
  filename: string;
  size: number;
}

/** Messages whose event facts are kept in memory (see `eventMeta`); ~100 bytes each. */
const EVENT_META_MAX = 50_000;

/** One status change to apply, its detail and result already JSON. */
interface Step {
  id: string;
  status: MessageStatus;
  at: number;
  detail: string | null;
  result: string | null;
}

/** A lazy change held in memory, and its caller's promise (settled when a commit has written it). */
interface LazyStep extends Step {
  /** performance.now() after which it is written with the next commit. */
  due: number;
  applied: boolean;
  resolve(applied: boolean): void;
  reject(err: DropwireError): void;
}

class SqliteStoreImpl implements SqliteStore {
  readonly path: string;
  private readonly db: DatabaseSync;
  private readonly sql: Statements;
  private readonly writer: GroupCommitWriter;
  private closing: Promise<void> | undefined;
  /**
   * What an event says of a message that is still moving (to, from, filename, size: never changed once
   * stored), so that a status change does not read the row back. Filled on enqueue and on a miss, emptied
   * when a message reaches a final status; bounded, oldest first out.
   */
  private readonly eventMeta = new Map<string, EventMeta>();
  /** Where history rows end and history-bearing event rows begin (schema.ts, history_fold). */
  private readonly fold: { historyTo: number; eventsFrom: number };
  /** Lazy changes held, by message, each list in call order; the map in the order of each list's first. */
  private readonly lazy = new Map<string, LazyStep[]>();
  private lazyCount = 0;
  private lazyTimer: NodeJS.Timeout | undefined;
  private readonly lazyWindowMs: number;
  private lazyJoined = 0;
  private lazyAlone = 0;

  static open(options: SqliteStoreOptions): SqliteStoreImpl {
    const maxBatch = options.maxBatch ?? DEFAULT_MAX_BATCH;
    if (!Number.isInteger(maxBatch) || maxBatch < 1) throw invalid(`maxBatch must be a positive integer`);
    let db: DatabaseSync;
    try {
      db = openDatabase(options.path, options.busyTimeoutMs ?? DEFAULT_BUSY_TIMEOUT_MS);
    } catch (err) {
      if (err instanceof DropwireError) throw err;
      throw failed(`open ${options.path}`, err);
    }
    const lazyWindowMs = options.lazyWindowMs ?? lazyWindowFromEnv();
    if (!Number.isFinite(lazyWindowMs) || lazyWindowMs < 0) throw invalid(`lazyWindowMs must be 0 or more`);
    return new SqliteStoreImpl(options.path, db, options.now ?? Date.now, maxBatch, lazyWindowMs);
  }

  private constructor(path: string, db: DatabaseSync, now: () => number, maxBatch: number, lazyWindowMs: number) {
    this.path = path;
    this.db = db;
    this.sql = prepareStatements(db);
    this.writer = new GroupCommitWriter(db, this.sql, now, maxBatch);
    this.lazyWindowMs = lazyWindowMs;
    const fold = this.sql.historyFold.get() as { events_from: number; history_to: number };
    this.fold = { historyTo: fold.history_to, eventsFrom: fold.events_from };
  }

  stats(): SqliteStoreStats {
    return { ...this.writer.counters, queued: this.writer.queued, lastCommitAt: this.writer.lastCommitAt, lazyJoined: this.lazyJoined, lazyAlone: this.lazyAlone };
  }

  settings(): SqliteSettings {
    if (this.closing) throw closedError();
    const pragma = (name: string): unknown => Object.values(this.db.prepare(`PRAGMA ${name}`).get() ?? {})[0];
    return {
      journalMode: String(pragma('journal_mode')),
      synchronous: Number(pragma('synchronous')),
      foreignKeys: Number(pragma('foreign_keys')) === 1,
      busyTimeoutMs: Number(pragma('busy_timeout')),
      schemaVersion: Number(pragma('user_version')),
    };
  }

  // --- reads: synchronous underneath; they see committed data only (a flush never spans a tick) ---

  private read<T>(stage: string, fn: () => T): Promise<T> {
    if (this.closing) return Promise.reject(closedError());
    try {
      return Promise.resolve(fn());
    } catch (err) {
      return Promise.reject(err instanceof DropwireError ? err : failed(stage, err));
    }
  }

  getDevice(name: string): Promise<DeviceRecord | undefined> {
    return this.read('getDevice', () => {
      const row = this.sql.deviceByName.get(name) as DeviceRow | undefined;
      return row && toDevice(row);
    });
  }

  getDeviceByKey(publicKeyHex: string): Promise<DeviceRecord | undefined> {
    return this.read('getDeviceByKey', () => {
      const row = this.sql.deviceByKey.get(publicKeyHex) as DeviceRow | undefined;
      return row && toDevice(row);
    });
  }

  listDevices(): Promise<DeviceRecord[]> {
    return this.read('listDevices', () => (this.sql.listDevices.all() as unknown as DeviceRow[]).map(toDevice));
  }

  getTokenByHash(hash: string): Promise<TokenRecord | undefined> {
    return this.read('getTokenByHash', () => {
      const row = this.sql.tokenByHash.get(hash) as TokenRow | undefined;
      return row && toToken(row);
    });
  }

  listTokens(): Promise<TokenRecord[]> {
    return this.read('listTokens', () => (this.sql.listTokens.all() as unknown as TokenRow[]).map(toToken));
  }

  getMessage(id: string): Promise<MessageRecord | undefined> {
    return this.read('getMessage', () => {
      const row = this.sql.messageById.get(id) as MessageRow | undefined;
      return row && toMessage(row);
    });
  }

  getHistory(id: string): Promise<HistoryEntry[]> {
    return this.read('getHistory', () =>
      (this.sql.history.all({ id, ...this.fold }) as unknown as HistoryRow[]).map(historyFromRow),
    );
  }

  listMessages(q: MessageQuery): Promise<MessagePage> {
    return this.read('listMessages', () => {
      const limit = checkMessageQuery(q);
      // The window: the newest MESSAGE_SCAN_MAX messages below `beforeSeq`, by the primary key; the filters
      // apply inside it, so no call reads more than that many rows, and no index is added for it (every
      // index costs each enqueue).
      const window = 'SELECT seq FROM messages WHERE seq < :hi ORDER BY seq DESC LIMIT :scan';
      const hi = q.beforeSeq ?? Number.MAX_SAFE_INTEGER;
      const params: Record<string, string | number> = { hi, scan: MESSAGE_SCAN_MAX, limit };
      const filters: string[] = [];
      if (q.device !== undefined) {
        filters.push('to_device = :device');
        params.device = q.device;
      }
      if (q.sender !== undefined) {
        filters.push('from_sender = :sender');
        params.sender = q.sender;
      }
      if (q.statuses?.length) filters.push(`status IN (${q.statuses.map((st) => `'${st}'`).join(', ')})`);
      if (q.attention) filters.push(`(status IN ('failed', 'rejected') OR (overdue = 1 AND ${LIVE}))`);
      if (q.since !== undefined) {
        filters.push('created_at >= :since');
        params.since = q.since;
      }
      if (q.until !== undefined) {
        filters.push('created_at < :until');
        params.until = q.until;
      }
      if (q.search) {
        filters.push('(id = :search OR instr(lower(filename), lower(:search)) > 0)');
        params.search = q.search;
      }
      const rows = this.db
        .prepare(`SELECT ${MESSAGE_COLUMNS} FROM messages WHERE seq IN (${window})${filters.map((f) => ` AND ${f}`).join('')} ORDER BY seq DESC LIMIT :limit`)
        .all(params) as unknown as MessageRow[];
      const messages = rows.map(toMessage);
      if (messages.length === limit) return { messages, next: messages[limit - 1]!.seq };
      const { n, low } = this.db.prepare(`SELECT count(*) AS n, min(seq) AS low FROM (${window})`).get({ hi, scan: MESSAGE_SCAN_MAX }) as { n: number; low: number | null };
      return n === MESSAGE_SCAN_MAX && low !== null ? { messages, next: low } : { messages };
    });
  }

  readInlineBody(id: string): Promise<Uint8Array | undefined> {
    return this.read('readInlineBody', () => {
      const row = this.sql.body.get(id) as { body: Uint8Array | null } | undefined;
      return row?.body ?? undefined;
    });
  }

  pending(device: string, afterSeq: number, limit: number): Promise<PendingMessage[]> {
    return this.read('pending', () => {
      if (limit <= 0) return [];
      const rows = this.sql.pending.all(device, afterSeq, Math.trunc(limit)) as unknown as Array<MessageRow & { body: Uint8Array | null }>;
      return rows.map((r) => (r.body === null ? toMessage(r) : { ...toMessage(r), body: r.body }));
    });
  }

  countPending(device: string): Promise<number> {
    return this.read('countPending', () => (this.sql.countPending.get(device) as { n: number }).n);
  }

  dueForDeadline(now: number, limit: number): Promise<MessageRecord[]> {
    return this.read('dueForDeadline', () => {
      if (limit <= 0) return [];
      return (this.sql.dueForDeadline.all(now, Math.trunc(limit)) as unknown as MessageRow[]).map(toMessage);
    });
  }

  dueForExpiry(now: number, limit: number): Promise<MessageRecord[]> {
    return this.read('dueForExpiry', () => {
      if (limit <= 0) return [];
      return (this.sql.dueForExpiry.all(now, Math.trunc(limit)) as unknown as MessageRow[]).map(toMessage);
    });
  }

  createDevice(device: DeviceRecord): Promise<void> {
    return this.write(`createDevice ${device.name}`, StoreErrorCode.DEVICE_EXISTS, () => {
      this.sql.insertDevice.run({
        name: device.name,
        publicKey: device.publicKey ?? null,
        enrollSecretHash: device.enrollSecretHash ?? null,
        enrollExpiresAt: device.enrollExpiresAt ?? null,
        enrolledAt: device.enrolledAt ?? null,
        createdAt: device.createdAt,
        lastSeen: device.lastSeen ?? null,
        lastHandshakeTs: device.lastHandshakeTs ?? null,
        sendTo: device.sendTo ?? null,
      });
    });
  }

  enrollDevice(name: string, publicKeyHex: string, at: number): Promise<void> {
    const label = `enrollDevice ${name}`;
    return this.write(label, StoreErrorCode.ENROLL_REFUSED, () => {
      const row = this.sql.deviceByName.get(name) as DeviceRow | undefined;
      if (!row) throw new DropwireError(StoreErrorCode.DEVICE_NOT_FOUND, `${label}: no such device`);
      if (row.public_key !== null) {
        throw new DropwireError(StoreErrorCode.ENROLL_REFUSED, `${label}: already enrolled`);
      }
      if (row.enroll_expires_at !== null && at > row.enroll_expires_at) {
        throw new DropwireError(StoreErrorCode.ENROLL_REFUSED, `${label}: enrollment secret expired`);
      }
      // A key already bound to another device violates UNIQUE(public_key) -> DW_ENROLL_REFUSED.
      this.sql.enrollDevice.run({ name, publicKey: publicKeyHex, at });
    });
  }

  removeDevice(name: string, at: number): Promise<boolean> {
    // Lazy changes first (a message `received` is not cancelled): every one held, in this write.
    return this.writeWith(`removeDevice ${name}`, undefined, this.takeLazy(Infinity), (taken) => {
      this.applyLazy(taken);
      const existed = Number(this.sql.deleteDevice.run(name).changes) > 0;
      const detail = JSON.stringify({ reason: 'device removed' });
      for (const row of this.sql.cancelForDevice.all({ name, at }) as unknown as Array<{ id: string }>) {
        this.messageEvent(row.id, 'cancelled', at, detail);
      }
      return existed;
    });
  }

  renewEnrollment(name: string, enrollSecretHash: string, enrollExpiresAt: number): Promise<boolean> {
    return this.write(`renewEnrollment ${name}`, undefined, () => Number(this.sql.renewEnrollment.run({ name, hash: enrollSecretHash, expiresAt: enrollExpiresAt }).changes) > 0);
  }

  setAgentVersion(name: string, agentVersion: string): Promise<void> {
    return this.write(`setAgentVersion ${name}`, undefined, () => {
      this.sql.setAgentVersion.run({ name, agentVersion });
    });
  }

  setSendTo(name: string, sendTo: string | undefined): Promise<boolean> {
    return this.write(`setSendTo ${name}`, undefined, () => this.sql.setSendTo.run({ name, sendTo: sendTo ?? null }).changes > 0);
  }

  touchDevice(name: string, lastSeen: number, handshakeTs?: number): Promise<void> {
    // An unknown device is a no-op: the session that reports it is about to be refused anyway.
    return this.write(`touchDevice ${name}`, undefined, () => {
      this.sql.touchDevice.run({ name, seen: lastSeen, ts: handshakeTs ?? null });
    });
  }

  createToken(token: TokenRecord): Promise<void> {
    return this.write(`createToken ${token.name}`, StoreErrorCode.TOKEN_EXISTS, () => {
      this.sql.insertToken.run(token.name, token.hash, token.to, token.webhook ?? null, token.webhookSecret ?? null, token.receive ? 1 : 0, token.deliverUrl ?? null, token.role === 'admin' || token.role === 'metrics' ? token.role : null, token.createdAt);
    });
  }

  removeToken(name: string): Promise<boolean> {
    return this.write(
      `removeToken ${name}`,
      undefined,
      () => Number(this.sql.deleteToken.run(name).changes) > 0,
    );
  }

  enqueue(message: NewMessage): Promise<{ message: MessageRecord; created: boolean }> {
    const label = `enqueue ${message.id}`;
    if ((message.body === undefined) === (message.bodyPath === undefined)) {
      return Promise.reject(invalid(`${label}: exactly one of body and bodyPath is required`));
    }
    if (message.body !== undefined && message.body.byteLength !== message.size) {
      return Promise.reject(
        invalid(`${label}: body has ${message.body.byteLength} bytes, size says ${message.size}`),
      );
    }
    return this.write(label, StoreErrorCode.MESSAGE_EXISTS, () => {
      // Looked up inside the transaction, so a key repeated within one batch sees the earlier insert.
      if (message.idempotencyKey !== undefined) {
        const row = this.sql.messageByIdempotency.get(message.from, message.idempotencyKey) as
          | MessageRow
          | undefined;
        if (row) return { message: toMessage(row), created: false };
      }
      const { seq } = this.sql.insertMessage.get(
        message.id,
        message.to,
        message.from,
        message.filename,
        message.size,
        message.sha256,
        message.body ?? null,
        message.bodyPath ?? null,
        message.idempotencyKey ?? null,
        message.createdAt,
        message.deadlineAt ?? null,
        message.expiresAt ?? null,
        message.sealed ? 1 : 0,
      ) as { seq: number };
      // The queued entry of the history is the queued event (its detail names the retried message); the
      // retried message's retriedAs entry is no event: a history row.
      if (message.retryOf !== undefined) {
        const old = this.sql.messageById.get(message.retryOf) as MessageRow | undefined;
        if (old) this.sql.insertHistory.run(old.id, old.status, message.createdAt, JSON.stringify({ retriedAs: message.id }));
      }
      this.rememberMeta(message.id, { to: message.to, from: message.from, filename: message.filename, size: message.size });
      this.messageEvent(message.id, 'queued', message.createdAt, message.retryOf !== undefined ? JSON.stringify({ retryOf: message.retryOf }) : null);
      return { message: insertedMessage(message, seq), created: true };
    });
  }

  setStatus(changes: StatusChange[], options?: SetStatusOptions): Promise<boolean[]> {
    let steps: Step[];
    try {
      steps = changes.map((change) => {
        if (!Object.hasOwn(MessageStatus, change.status)) {
          throw invalid(`setStatus ${change.id}: unknown status ${String(change.status)}`);
        }
        return {
          id: change.id,
          status: change.status,
          at: change.at,
          detail: jsonOrNull(change.detail, 'detail'),
          result: jsonOrNull(change.result, 'result'),
        };
      });
    } catch (err) {
      return Promise.reject(err);
    }
    if (steps.length === 0) return Promise.resolve([]);
    if (options?.lazy === true) return this.hold(steps);
    const label = `setStatus ${steps[0]!.id}${steps.length > 1 ? ` and ${steps.length - 1} more` : ''}`;
    // The lazy changes of these messages called before this one go first, in this write.
    const taken: LazyStep[][] = [];
    for (const step of steps) {
      const held = this.takeLazyOf(step.id);
      if (held) {
        taken.push(held);
        this.lazyJoined += held.length;
      }
    }
    return this.writeWith(
      label,
      undefined,
      taken,
      (taken) => {
        const held = new Map(taken.map((list) => [list[0]!.id, list]));
        return steps.map((step) => {
          const lazies = held.get(step.id);
          if (!lazies) return this.applySteps([step])[0]!;
          held.delete(step.id);
          const applied = this.applySteps([...lazies, step]);
          for (let i = 0; i < lazies.length; i++) lazies[i]!.applied = applied[i]!;
          return applied[lazies.length]!;
        });
      },
    );
  }

  markOverdue(id: string, at: number): Promise<boolean> {
    // A `received` held lazily counts: the message is not overdue.
        const held = this.takeLazyOf(id);
    return this.writeWith(`markOverdue ${id}`, undefined, held ? [held] : [], (taken) => {
      this.applyLazy(taken);
      const done = Number(this.sql.markOverdue.run(at, id).changes) > 0;
      if (done) this.messageEvent(id, 'overdue', at, null);
      return done;
    });
  }

  // --- lazy status changes ---

  /** Holds lazy changes; each settles when the commit that wrote it (or refused it) is done. */
  private hold(steps: Step[]): Promise<boolean[]> {
    if (this.closing) return Promise.reject(closedError());
    const due = performance.now() + this.lazyWindowMs;
    // One promise for the call, settled by the last of its changes (no extra turn after the commit: a
    // caller's reaction to a lazy change runs before its reaction to a later change of the same commit).
    const outcome = new Promise<boolean[]>((resolve, reject) => {
      const applied = new Array<boolean>(steps.length).fill(false);
      let left = steps.length;
      steps.forEach((step, i) => {
        const lazy: LazyStep = {
          ...step,
          due,
          applied: false,
          resolve: (ok) => {
            applied[i] = ok;
            if (--left === 0) resolve(applied);
          },
          reject,
        };
        const list = this.lazy.get(step.id);
        if (list) list.push(lazy);
        else this.lazy.set(step.id, [lazy]);
        this.lazyCount++;
      });
    });
    if (this.lazyCount >= LAZY_MAX) this.queueLazy(Infinity);
    else this.armLazyTimer();
    return outcome;
  }

  private armLazyTimer(): void {
    if (this.lazyTimer !== undefined || this.lazy.size === 0) return;
    const first = this.lazy.values().next().value![0]!;
    const delay = Math.max(0, first.due - performance.now());
    this.lazyTimer = setTimeout(() => {
      this.lazyTimer = undefined;
      if (this.closing) return;
      // What is due within half a window more goes too: fewer commits of lazy changes alone.
      this.queueLazy(performance.now() + this.lazyWindowMs / 2);
    }, delay);
  }

  /** Queues a write of the lazy changes due by `cutoff`. */
  private queueLazy(cutoff: number): void {
    const taken = this.takeLazy(cutoff);
    if (taken.length === 0) return;
    for (const list of taken) this.lazyAlone += list.length;
    this.writeWith('lazy status changes', undefined, taken, (taken) => this.applyLazy(taken), true).catch(() => {
      // each change's own caller is told
    });
  }

  /** Takes, oldest first, the held lists whose first change is due by `cutoff`; re-arms the timer for the rest. */
  private takeLazy(cutoff: number): LazyStep[][] {
    const taken: LazyStep[][] = [];
    for (const [id, list] of this.lazy) {
      if (list[0]!.due > cutoff) break;
      this.lazy.delete(id);
      this.lazyCount -= list.length;
      taken.push(list);
    }
    if (this.lazy.size === 0) {
      clearTimeout(this.lazyTimer);
      this.lazyTimer = undefined;
    } else {
      this.armLazyTimer();
    }
    return taken;
  }

  private takeLazyOf(id: string): LazyStep[] | undefined {
    const list = this.lazy.get(id);
    if (!list) return undefined;
    this.lazy.delete(id);
    this.lazyCount -= list.length;
    if (this.lazy.size === 0) {
      clearTimeout(this.lazyTimer);
      this.lazyTimer = undefined;
    }
    return list;
  }

  /** Inside a write: applies taken lazy changes, each message's in one go. */
  private applyLazy(taken: LazyStep[][]): void {
    for (const list of taken) {
      const applied = this.applySteps(list);
      for (let i = 0; i < list.length; i++) list[i]!.applied = applied[i]!;
    }
  }

  /**
   * Inside a write: one message's changes, in order, with the outcome one UPDATE per change would have
   * (each applies only if allowed from the status before it), in one UPDATE, and an event per applied change.
   */
  private applySteps(steps: readonly Step[]): boolean[] {
    const first = steps[0]!;
    const id = first.id;
    const applied = new Array<boolean>(steps.length).fill(false);
    // If the stored status allows the first change, which of the others follow is known without reading.
    let last = first;
    let result = first.result;
    applied[0] = true;
    for (let i = 1; i < steps.length; i++) {
      const step = steps[i]!;
      if (!canTransition(last.status, step.status)) continue;
      applied[i] = true;
      last = step;
      if (step.result !== null) result = step.result;
    }
    const update = this.sql.setStatus.get(first.status);
    if (!update || Number(update.run(last.status, last.at, result, id).changes) === 0) {
      // The stored status refused the first change: the others one by one.
      applied[0] = false;
      if (steps.length > 1) for (let i = 1; i < steps.length; i++) applied[i] = this.applySteps([steps[i]!])[0]!;
      return applied;
    }
    for (let i = 0; i < steps.length; i++) {
      if (applied[i]) this.messageEvent(id, steps[i]!.status, steps[i]!.at, steps[i]!.detail);
    }
    return applied;
  }

  /** The facts of a message events tell (remembered while it moves), or undefined if there is no such message. */
  private metaOf(id: string, what: MessageStatus | 'overdue'): EventMeta | undefined {
    let m = this.eventMeta.get(id);
    if (!m) {
      const row = this.sql.messageForEvent.get(id) as { to_device: string; from_sender: string; filename: string; size: number } | undefined;
      if (!row) return undefined;
      m = { to: row.to_device, from: row.from_sender, filename: row.filename, size: row.size };
      if (what !== 'overdue' && !FINAL_STATUSES.has(what)) this.rememberMeta(id, m);
    }
    return m;
  }

  /** Inside a write: the event for a message's status change (or overdue flag), in the same transaction. */
  private messageEvent(id: string, what: MessageStatus | 'overdue', at: number, detail: string | null): void {
    const m = this.metaOf(id, what);
    if (!m) return;
    if (what !== 'overdue' && FINAL_STATUSES.has(what)) this.eventMeta.delete(id);
    // { message: { id, to, from, filename, size, status, detail? } }, the detail's JSON already made.
    const head = JSON.stringify({ id, to: m.to, from: m.from, filename: m.filename, size: m.size, status: what });
    const data = detail === null ? `{"message":${head}}` : `{"message":${head.slice(0, -1)},"detail":${detail}}}`;
    this.sql.insertEvent.run(EventType[what], m.to, id, m.from, at, data);
  }

  /**
   * Only facts that never change go in, so an entry left by a rolled-back enqueue is harmless: events are
   * written only after an UPDATE found the row, and a later enqueue of the same id replaces the entry.
   */
  private rememberMeta(id: string, meta: EventMeta): void {
    if (this.eventMeta.size >= EVENT_META_MAX) {
      const oldest = this.eventMeta.keys().next().value;
      if (oldest !== undefined) this.eventMeta.delete(oldest);
    }
    this.eventMeta.set(id, meta);
  }

  appendEvents(events: Omit<RelayEvent, 'seq'>[]): Promise<void> {
    return this.write('appendEvents', undefined, () => {
      for (const e of events) this.sql.insertEvent.run(e.type, e.device, e.messageId ?? null, e.sender ?? null, e.at, JSON.stringify(e.data));
    });
  }

  eventsAfter(seq: number, limit: number): Promise<RelayEvent[]> {
    return this.read('eventsAfter', () => (this.sql.eventsAfter.all(seq, limit) as unknown as EventRow[]).map(eventFromRow));
  }

  lastEventSeq(): Promise<number> {
    return this.read('lastEventSeq', () => (this.sql.lastEvent.get() as { seq: number }).seq);
  }

  webhookCursor(token: string): Promise<number> {
    return this.read('webhookCursor', () => (this.sql.webhookCursor.get(token) as { seq: number } | undefined)?.seq ?? 0);
  }

  recordWebhookAttempt(a: WebhookAttempt): Promise<void> {
    return this.write(`webhookAttempt ${a.token}`, undefined, () => {
      this.sql.insertAttempt.run(a.token, a.seq, a.at, a.ok ? 1 : 0, a.status ?? null, a.error ?? null, a.abandoned ? 1 : 0);
      if (a.ok || a.abandoned) this.sql.setWebhookCursor.run(a.token, a.seq);
    });
  }

  skipWebhookEvents(token: string, toSeq: number): Promise<void> {
    return this.write(`webhookSkip ${token}`, undefined, () => {
      this.sql.setWebhookCursor.run(token, toSeq);
    });
  }

  webhookAttempts(token: string, limit: number): Promise<WebhookAttempt[]> {
    return this.read('webhookAttempts', () =>
      (this.sql.attempts.all(token, limit) as { token: string; seq: number; at: number; ok: number; status: number | null; error: string | null; abandoned: number }[]).map((r) => ({
        token: r.token,
        seq: r.seq,
        at: r.at,
        ok: r.ok === 1,
        ...(r.status !== null ? { status: r.status } : {}),
        ...(r.error !== null ? { error: r.error } : {}),
        ...(r.abandoned === 1 ? { abandoned: true } : {}),
      })),
    );
  }

  // --- writes: queued, applied in call order, settled after COMMIT ---

  private write<T>(label: string, onDuplicate: string | undefined, fn: () => T): Promise<T> {
    if (this.closing) return Promise.reject(closedError());
    return this.writer.write(label, onDuplicate, fn);
  }

  /**
   * A write that also writes lazy changes taken from the held ones when it was called (so it applies them
   * in call order): `fn` writes them in its transaction; they settle with it, before its own caller.
   */
  private writeWith<T>(label: string, onDuplicate: string | undefined, taken: LazyStep[][], fn: (taken: LazyStep[][]) => T, evenIfClosing = false): Promise<T> {
    if (this.closing && !evenIfClosing) {
      const err = closedError();
      for (const list of taken) for (const l of list) l.reject(err);
      return Promise.reject(err);
    }
    return new Promise<T>((resolve, reject) => {
      this.writer.push({
        label,
        onDuplicate,
        run: () => fn(taken),
        resolve: (value) => {
          for (const list of taken) for (const l of list) l.resolve(l.applied);
          resolve(value as T);
        },
        reject: (err) => {
          for (const list of taken) for (const l of list) l.reject(err);
          reject(err);
        },
      });
    });
  }

  /** Stops taking work, commits every write already queued, then closes the file. Idempotent. */
  close(): Promise<void> {
    this.closing ??= new Promise<void>((resolve, reject) => {
      try {
        if (this.lazy.size > 0) this.queueLazy(Infinity);
        clearTimeout(this.lazyTimer);
        this.writer.drain();
        this.db.close();
        resolve();
      } catch (err) {
        reject(failed('close', err));
      }
    });
    return this.closing;
  }
}
