/**
 * The relay's embedded store: one SQLite file through Node's built-in `node:sqlite`.
 *
 * Reads run at once (the driver is synchronous). Every write goes through the group-commit writer
 * (writer.ts): settled only after the transaction holding it was committed and fsync'd. The schema and
 * its migrations are in schema.ts, every SQL text in statements.ts.
 */
import type { DatabaseSync } from 'node:sqlite';
import { DropwireError } from '../../../shared/errors.js';
import { closedError, failed, invalid, jsonOrNull } from '../errors.js';
import {
  EventType,
  FINAL_STATUSES,
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

export { SCHEMA_VERSION } from './schema.js';
export { SCAN_SQL } from './statements.js';

/** Most writes in one transaction: bounds a commit's size and the time the event loop is held. */
export const DEFAULT_MAX_BATCH = 500;
/** How long a write waits for another connection's lock (e.g. a CLI reading the file) before failing. */
export const DEFAULT_BUSY_TIMEOUT_MS = 5_000;

export interface SqliteStoreOptions {
  /** Database file; its folder is created if missing. `:memory:` works for throwaway stores. */
  path: string;
  /** Clock for the store's own bookkeeping (`stats().lastCommitAt`); every record time is passed in. */
  now?: () => number;
  /** Group commit cap; 1 commits every write on its own (a baseline for benchmarks). */
  maxBatch?: number;
  busyTimeoutMs?: number;
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
    return new SqliteStoreImpl(options.path, db, options.now ?? Date.now, maxBatch);
  }

  private constructor(path: string, db: DatabaseSync, now: () => number, maxBatch: number) {
    this.path = path;
    this.db = db;
    this.sql = prepareStatements(db);
    this.writer = new GroupCommitWriter(db, this.sql, now, maxBatch);
  }

  stats(): SqliteStoreStats {
    return { ...this.writer.counters, queued: this.writer.queued, lastCommitAt: this.writer.lastCommitAt };
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
      (this.sql.history.all(id) as unknown as HistoryRow[]).map((r) => ({
        status: r.status,
        at: r.at,
        detail: r.detail === null ? undefined : (JSON.parse(r.detail) as Record<string, unknown>),
      })),
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
    return this.write(`removeDevice ${name}`, undefined, () => {
      const existed = Number(this.sql.deleteDevice.run(name).changes) > 0;
      const detail = JSON.stringify({ reason: 'device removed' });
      for (const row of this.sql.cancelForDevice.all({ name, at }) as unknown as Array<{ id: string }>) {
        this.sql.insertHistory.run(row.id, 'cancelled', at, detail);
        this.messageEvent(row.id, 'cancelled', at, { reason: 'device removed' });
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
      const { seq } = this.sql.insertMessage.get({
        id: message.id,
        to: message.to,
        from: message.from,
        filename: message.filename,
        size: message.size,
        sha256: message.sha256,
        body: message.body ?? null,
        bodyPath: message.bodyPath ?? null,
        idempotencyKey: message.idempotencyKey ?? null,
        createdAt: message.createdAt,
        deadlineAt: message.deadlineAt ?? null,
        expiresAt: message.expiresAt ?? null,
        sealed: message.sealed ? 1 : 0,
      }) as { seq: number };
      this.sql.insertHistory.run(message.id, 'queued', message.createdAt, message.retryOf !== undefined ? JSON.stringify({ retryOf: message.retryOf }) : null);
      if (message.retryOf !== undefined) {
        const old = this.sql.messageById.get(message.retryOf) as MessageRow | undefined;
        if (old) this.sql.insertHistory.run(old.id, old.status, message.createdAt, JSON.stringify({ retriedAs: message.id }));
      }
      this.rememberMeta(message.id, { to: message.to, from: message.from, filename: message.filename, size: message.size });
      this.messageEvent(message.id, 'queued', message.createdAt, undefined);
      return { message: insertedMessage(message, seq), created: true };
    });
  }

  setStatus(changes: StatusChange[]): Promise<boolean[]> {
    let prepared: Array<{ change: StatusChange; detail: string | null; result: string | null }>;
    try {
      prepared = changes.map((change) => {
        if (!Object.hasOwn(MessageStatus, change.status)) {
          throw invalid(`setStatus ${change.id}: unknown status ${String(change.status)}`);
        }
        return {
          change,
          detail: jsonOrNull(change.detail, 'detail'),
          result: jsonOrNull(change.result, 'result'),
        };
      });
    } catch (err) {
      return Promise.reject(err);
    }
    if (prepared.length === 0) return Promise.resolve([]);
    const label = `setStatus ${prepared.map((p) => p.change.id).join(',').slice(0, 80)}`;
    return this.write(label, undefined, () =>
      prepared.map(({ change, detail, result }) => {
        const update = this.sql.setStatus.get(change.status);
        if (!update) return false;
        const applied = update.run({ id: change.id, status: change.status, at: change.at, result }).changes;
        if (Number(applied) === 0) return false;
        this.sql.insertHistory.run(change.id, change.status, change.at, detail);
        this.messageEvent(change.id, change.status, change.at, change.detail);
        return true;
      }),
    );
  }

  markOverdue(id: string, at: number): Promise<boolean> {
    return this.write(`markOverdue ${id}`, undefined, () => {
      const done = Number(this.sql.markOverdue.run(at, id).changes) > 0;
      if (done) this.messageEvent(id, 'overdue', at, undefined);
      return done;
    });
  }

  /** Inside a write: the event for a message's status change (or overdue flag), in the same transaction. */
  private messageEvent(id: string, what: MessageStatus | 'overdue', at: number, detail: Record<string, unknown> | undefined): void {
    let m = this.eventMeta.get(id);
    if (!m) {
      const row = this.sql.messageForEvent.get(id) as { to_device: string; from_sender: string; filename: string; size: number } | undefined;
      if (!row) return;
      m = { to: row.to_device, from: row.from_sender, filename: row.filename, size: row.size };
      if (what !== 'overdue' && !FINAL_STATUSES.has(what)) this.rememberMeta(id, m);
    }
    if (what !== 'overdue' && FINAL_STATUSES.has(what)) this.eventMeta.delete(id);
    const data = { message: { id, to: m.to, from: m.from, filename: m.filename, size: m.size, status: what, ...(detail ? { detail } : {}) } };
    this.sql.insertEvent.run(EventType[what], m.to, id, m.from, at, JSON.stringify(data));
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

  /** Stops taking work, commits every write already queued, then closes the file. Idempotent. */
  close(): Promise<void> {
    this.closing ??= new Promise<void>((resolve, reject) => {
      try {
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
