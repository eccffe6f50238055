/**
 * The relay's embedded store: one SQLite file through Node's built-in `node:sqlite`.
 *
 * Reads run at once (the driver is synchronous). Every write goes through one queue and is applied in
 * call order by a group commit: writes queued during a turn of the event loop share one transaction
 * (BEGIN IMMEDIATE … COMMIT, at most `maxBatch` writes), and their promises settle only after COMMIT
 * returned — with `synchronous=FULL` in WAL mode, after the WAL was fsync'd. Each write runs inside its
 * own savepoint, so a write that fails (a duplicate name, a bad value) is rolled back and rejected alone;
 * the others in the batch still commit.
 */
import { closeSync, mkdirSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import { DatabaseSync, type StatementSync } from 'node:sqlite';
import { DropwireError } from '../../shared/errors.js';
import {
  ALLOWED_FROM,
  EventType,
  FINAL_STATUSES,
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
} from './types.js';

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

// ---------------------------------------------------------------------------------------------------
// Schema. MIGRATIONS[v] takes a database from user_version v to v + 1; never edit a shipped entry.

const STATUS_LIST = Object.values(MessageStatus)
  .map((s) => `'${s}'`)
  .join(', ');

/** "Still needs delivery". The same text appears in the partial indexes and the queries that use them. */
const LIVE = "status IN ('queued', 'sent')";

const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE devices (
    name               TEXT PRIMARY KEY,
    public_key         TEXT UNIQUE,
    enroll_secret_hash TEXT,
    enroll_expires_at  INTEGER,
    enrolled_at        INTEGER,
    created_at         INTEGER NOT NULL,
    last_seen          INTEGER,
    last_handshake_ts  INTEGER
  ) STRICT;

  CREATE TABLE tokens (
    name       TEXT PRIMARY KEY,
    hash       TEXT NOT NULL UNIQUE,
    to_glob    TEXT NOT NULL,
    webhook    TEXT,
    created_at INTEGER NOT NULL
  ) STRICT;

  -- seq is the rowid: monotonic, never reused (AUTOINCREMENT), so it orders each device's queue.
  CREATE TABLE messages (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT NOT NULL UNIQUE,
    to_device       TEXT NOT NULL,
    from_sender     TEXT NOT NULL,
    filename        TEXT NOT NULL,
    size            INTEGER NOT NULL CHECK (size >= 0),
    sha256          TEXT NOT NULL,
    body            BLOB,
    body_path       TEXT,
    status          TEXT NOT NULL CHECK (status IN (${STATUS_LIST})),
    idempotency_key TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    deadline_at     INTEGER,
    expires_at      INTEGER,
    overdue         INTEGER NOT NULL DEFAULT 0 CHECK (overdue IN (0, 1)),
    result          TEXT,
    CHECK ((body IS NULL) <> (body_path IS NULL))
  ) STRICT;

  CREATE UNIQUE INDEX messages_idempotency ON messages (from_sender, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
  CREATE INDEX messages_pending ON messages (to_device, seq) WHERE ${LIVE};
  CREATE INDEX messages_deadline ON messages (deadline_at)
    WHERE ${LIVE} AND overdue = 0 AND deadline_at IS NOT NULL;
  CREATE INDEX messages_expiry ON messages (expires_at) WHERE ${LIVE} AND expires_at IS NOT NULL;

  CREATE TABLE history (
    n          INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    status     TEXT NOT NULL CHECK (status IN (${STATUS_LIST})),
    at         INTEGER NOT NULL,
    detail     TEXT
  ) STRICT;
  CREATE INDEX history_message ON history (message_id, n);
  `,
  `
  ALTER TABLE tokens ADD COLUMN webhook_secret TEXT;

  -- The event log behind webhooks and GET /v1/events; message events are written with their status change.
  CREATE TABLE events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    type       TEXT NOT NULL,
    device     TEXT NOT NULL,
    message_id TEXT,
    sender     TEXT,
    at         INTEGER NOT NULL,
    data       TEXT NOT NULL
  ) STRICT;

  CREATE TABLE webhook_cursors (
    token TEXT PRIMARY KEY,
    seq   INTEGER NOT NULL
  ) STRICT;

  CREATE TABLE webhook_attempts (
    n         INTEGER PRIMARY KEY,
    token     TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    at        INTEGER NOT NULL,
    ok        INTEGER NOT NULL CHECK (ok IN (0, 1)),
    status    INTEGER,
    error     TEXT,
    abandoned INTEGER NOT NULL DEFAULT 0 CHECK (abandoned IN (0, 1))
  ) STRICT;
  CREATE INDEX webhook_attempts_token ON webhook_attempts (token, n);
  `,
  `
  -- What each agent reports it runs (its HELLO, PROTOCOL 7.3).
  ALTER TABLE devices ADD COLUMN agent_version TEXT;
  `,
];

export const SCHEMA_VERSION = MIGRATIONS.length;

// ---------------------------------------------------------------------------------------------------
// Rows as the SELECTs below return them.

interface DeviceRow {
  name: string;
  public_key: string | null;
  enroll_secret_hash: string | null;
  enroll_expires_at: number | null;
  enrolled_at: number | null;
  created_at: number;
  last_seen: number | null;
  last_handshake_ts: number | null;
  agent_version: string | null;
}

interface TokenRow {
  name: string;
  hash: string;
  to_glob: string;
  webhook: string | null;
  webhook_secret: string | null;
  created_at: number;
}

interface EventRow {
  seq: number;
  type: string;
  device: string;
  message_id: string | null;
  sender: string | null;
  at: number;
  data: string;
}

function eventFromRow(r: EventRow): RelayEvent {
  return {
    seq: r.seq,
    type: r.type as EventType,
    device: r.device,
    ...(r.message_id !== null ? { messageId: r.message_id } : {}),
    ...(r.sender !== null ? { sender: r.sender } : {}),
    at: r.at,
    data: JSON.parse(r.data) as Record<string, unknown>,
  };
}

interface MessageRow {
  seq: number;
  id: string;
  to_device: string;
  from_sender: string;
  filename: string;
  size: number;
  sha256: string;
  inline: number;
  body_path: string | null;
  status: MessageStatus;
  idempotency_key: string | null;
  created_at: number;
  updated_at: number;
  deadline_at: number | null;
  expires_at: number | null;
  overdue: number;
  result: string | null;
}

interface HistoryRow {
  status: MessageStatus;
  at: number;
  detail: string | null;
}

const MESSAGE_COLUMNS = `seq, id, to_device, from_sender, filename, size, sha256, body IS NOT NULL AS inline,
  body_path, status, idempotency_key, created_at, updated_at, deadline_at, expires_at, overdue, result`;

function opt<T>(v: T | null): T | undefined {
  return v === null ? undefined : v;
}

function toDevice(r: DeviceRow): DeviceRecord {
  return {
    name: r.name,
    publicKey: opt(r.public_key),
    enrollSecretHash: opt(r.enroll_secret_hash),
    enrollExpiresAt: opt(r.enroll_expires_at),
    enrolledAt: opt(r.enrolled_at),
    createdAt: r.created_at,
    lastSeen: opt(r.last_seen),
    lastHandshakeTs: opt(r.last_handshake_ts),
    agentVersion: opt(r.agent_version),
  };
}

function toToken(r: TokenRow): TokenRecord {
  return { name: r.name, hash: r.hash, to: r.to_glob, webhook: opt(r.webhook), webhookSecret: opt(r.webhook_secret), createdAt: r.created_at };
}

function toMessage(r: MessageRow): MessageRecord {
  return {
    id: r.id,
    seq: r.seq,
    to: r.to_device,
    from: r.from_sender,
    filename: r.filename,
    size: r.size,
    sha256: r.sha256,
    inline: r.inline === 1,
    bodyPath: opt(r.body_path),
    status: r.status,
    idempotencyKey: opt(r.idempotency_key),
    createdAt: r.created_at,
    updatedAt: r.updated_at,
    deadlineAt: opt(r.deadline_at),
    expiresAt: opt(r.expires_at),
    overdue: r.overdue === 1,
    result: r.result === null ? undefined : (JSON.parse(r.result) as Record<string, unknown>),
  };
}

/** The record a fresh insert produced, built without reading the row back. */
function insertedMessage(m: NewMessage, seq: number): MessageRecord {
  return {
    id: m.id,
    seq,
    to: m.to,
    from: m.from,
    filename: m.filename,
    size: m.size,
    sha256: m.sha256,
    inline: m.body !== undefined,
    bodyPath: m.bodyPath,
    status: 'queued',
    idempotencyKey: m.idempotencyKey,
    createdAt: m.createdAt,
    updatedAt: m.createdAt,
    deadlineAt: m.deadlineAt,
    expiresAt: m.expiresAt,
    overdue: false,
    result: undefined,
  };
}

// ---------------------------------------------------------------------------------------------------
// Errors

const SQLITE_CONSTRAINT = 19;
const SQLITE_CONSTRAINT_CHECK = 275;
const SQLITE_CONSTRAINT_PRIMARYKEY = 1555;
const SQLITE_CONSTRAINT_UNIQUE = 2067;
const SQLITE_CONSTRAINT_DATATYPE = 3091;

function sqliteCode(err: unknown): number | undefined {
  const code = (err as { errcode?: unknown } | null)?.errcode;
  return typeof code === 'number' ? code : undefined;
}

function failed(stage: string, err: unknown): DropwireError {
  const why = err instanceof Error ? err.message : String(err);
  return new DropwireError(StoreErrorCode.FAILED, `${stage}: ${why}`, { cause: err });
}

function invalid(message: string, cause?: unknown): DropwireError {
  return new DropwireError(StoreErrorCode.INVALID, message, { cause });
}

function closedError(): DropwireError {
  return new DropwireError(StoreErrorCode.CLOSED, 'store is closed');
}

/** JSON text for a detail/result object, checked before it joins a batch. */
function jsonOrNull(value: Record<string, unknown> | undefined, what: string): string | null {
  if (value === undefined) return null;
  try {
    return JSON.stringify(value);
  } catch (err) {
    throw invalid(`${what} is not JSON-serialisable`, err);
  }
}

// ---------------------------------------------------------------------------------------------------
// The write queue

interface Write {
  /** What the write is, for error messages: `enqueue m-123`. */
  label: string;
  /** The code a unique-constraint violation means for this write (e.g. DW_DEVICE_EXISTS). */
  onDuplicate?: string;
  /** Runs inside the open transaction; returns how to resolve once the transaction has committed. */
  apply(): () => void;
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

/** The reads that must stay on an index as tables grow (the tests check their query plans). */
export const SCAN_SQL = {
  pending: `SELECT ${MESSAGE_COLUMNS}, body FROM messages
    WHERE to_device = ? AND ${LIVE} AND seq > ? ORDER BY seq LIMIT ?`,
  countPending: `SELECT count(*) AS n FROM messages WHERE to_device = ? AND ${LIVE}`,
  messageByIdempotency: `SELECT ${MESSAGE_COLUMNS} FROM messages WHERE from_sender = ? AND idempotency_key = ?`,
  dueForDeadline: `SELECT ${MESSAGE_COLUMNS} FROM messages
    WHERE ${LIVE} AND overdue = 0 AND deadline_at IS NOT NULL AND deadline_at < ?
    ORDER BY deadline_at, seq LIMIT ?`,
  dueForExpiry: `SELECT ${MESSAGE_COLUMNS} FROM messages
    WHERE ${LIVE} AND expires_at IS NOT NULL AND expires_at < ?
    ORDER BY expires_at, seq LIMIT ?`,
  cancelForDevice: `UPDATE messages SET status = 'cancelled', updated_at = :at
    WHERE to_device = :name AND ${LIVE} RETURNING id`,
} as const;

type Statements = ReturnType<typeof prepareStatements>;

function prepareStatements(db: DatabaseSync) {
  const p = (sql: string): StatementSync => db.prepare(sql);
  const setStatus = new Map<MessageStatus, StatementSync>();
  for (const to of Object.values(MessageStatus)) {
    const from = ALLOWED_FROM[to];
    if (from.length === 0) continue;
    setStatus.set(
      to,
      p(`UPDATE messages SET status = :status, updated_at = :at, result = coalesce(:result, result)
         WHERE id = :id AND status IN (${from.map((s) => `'${s}'`).join(', ')})`),
    );
  }
  return {
    begin: p('BEGIN IMMEDIATE'),
    commit: p('COMMIT'),
    rollback: p('ROLLBACK'),
    savepoint: p('SAVEPOINT write'),
    release: p('RELEASE write'),
    rollbackTo: p('ROLLBACK TO write'),

    insertDevice: p(`INSERT INTO devices (name, public_key, enroll_secret_hash, enroll_expires_at, enrolled_at,
        created_at, last_seen, last_handshake_ts)
      VALUES (:name, :publicKey, :enrollSecretHash, :enrollExpiresAt, :enrolledAt, :createdAt, :lastSeen,
        :lastHandshakeTs)`),
    deviceByName: p('SELECT * FROM devices WHERE name = ?'),
    deviceByKey: p('SELECT * FROM devices WHERE public_key = ?'),
    listDevices: p('SELECT * FROM devices ORDER BY name'),
    enrollDevice: p(`UPDATE devices SET public_key = :publicKey, enrolled_at = :at, enroll_secret_hash = NULL,
        enroll_expires_at = NULL WHERE name = :name`),
    deleteDevice: p('DELETE FROM devices WHERE name = ?'),
    touchDevice: p(`UPDATE devices SET last_seen = max(coalesce(last_seen, :seen), :seen),
        last_handshake_ts = CASE WHEN :ts IS NULL THEN last_handshake_ts
                                 ELSE max(coalesce(last_handshake_ts, :ts), :ts) END
      WHERE name = :name`),
    setAgentVersion: p('UPDATE devices SET agent_version = :agentVersion WHERE name = :name'),
    cancelForDevice: p(SCAN_SQL.cancelForDevice),

    insertToken: p('INSERT INTO tokens (name, hash, to_glob, webhook, webhook_secret, created_at) VALUES (?, ?, ?, ?, ?, ?)'),
    insertEvent: p('INSERT INTO events (type, device, message_id, sender, at, data) VALUES (?, ?, ?, ?, ?, ?)'),
    eventsAfter: p('SELECT * FROM events WHERE seq > ? ORDER BY seq LIMIT ?'),
    lastEvent: p('SELECT coalesce(max(seq), 0) AS seq FROM events'),
    messageForEvent: p('SELECT id, to_device, from_sender, filename, size FROM messages WHERE id = ?'),
    webhookCursor: p('SELECT seq FROM webhook_cursors WHERE token = ?'),
    setWebhookCursor: p(`INSERT INTO webhook_cursors (token, seq) VALUES (?, ?)
      ON CONFLICT (token) DO UPDATE SET seq = max(seq, excluded.seq)`),
    insertAttempt: p('INSERT INTO webhook_attempts (token, seq, at, ok, status, error, abandoned) VALUES (?, ?, ?, ?, ?, ?, ?)'),
    attempts: p('SELECT * FROM webhook_attempts WHERE token = ? ORDER BY n DESC LIMIT ?'),
    tokenByHash: p('SELECT * FROM tokens WHERE hash = ?'),
    listTokens: p('SELECT * FROM tokens ORDER BY name'),
    deleteToken: p('DELETE FROM tokens WHERE name = ?'),

    insertMessage: p(`INSERT INTO messages (id, to_device, from_sender, filename, size, sha256, body, body_path,
        status, idempotency_key, created_at, updated_at, deadline_at, expires_at)
      VALUES (:id, :to, :from, :filename, :size, :sha256, :body, :bodyPath, 'queued', :idempotencyKey,
        :createdAt, :createdAt, :deadlineAt, :expiresAt)
      RETURNING seq`),
    messageById: p(`SELECT ${MESSAGE_COLUMNS} FROM messages WHERE id = ?`),
    messageByIdempotency: p(SCAN_SQL.messageByIdempotency),
    body: p('SELECT body FROM messages WHERE id = ?'),
    pending: p(SCAN_SQL.pending),
    countPending: p(SCAN_SQL.countPending),
    setStatus,
    markOverdue: p(`UPDATE messages SET overdue = 1, updated_at = ? WHERE id = ? AND overdue = 0 AND ${LIVE}`),
    dueForDeadline: p(SCAN_SQL.dueForDeadline),
    dueForExpiry: p(SCAN_SQL.dueForExpiry),

    insertHistory: p('INSERT INTO history (message_id, status, at, detail) VALUES (?, ?, ?, ?)'),
    history: p('SELECT status, at, detail FROM history WHERE message_id = ? ORDER BY n'),
  };
}

function openDatabase(path: string, busyTimeoutMs: number): DatabaseSync {
  if (path !== ':memory:') {
    mkdirSync(dirname(path), { recursive: true });
    // The file holds token and enrollment-secret hashes: create it private. SQLite gives the -wal and
    // -shm files the same permissions.
    closeSync(openSync(path, 'a', 0o600));
  }
  const db = new DatabaseSync(path, { timeout: busyTimeoutMs, enableForeignKeyConstraints: true });
  try {
    db.exec('PRAGMA journal_mode = WAL');
    // FULL: in WAL mode the WAL is fsync'd at every COMMIT, so a resolved write survives power loss.
    db.exec('PRAGMA synchronous = FULL');
    db.exec(`PRAGMA busy_timeout = ${Math.trunc(busyTimeoutMs)}`);
    db.exec('PRAGMA foreign_keys = ON');
    migrate(db);
  } catch (err) {
    db.close();
    throw err;
  }
  return db;
}

function migrate(db: DatabaseSync): void {
  const row = db.prepare('PRAGMA user_version').get() as { user_version: number } | undefined;
  const current = row?.user_version ?? 0;
  if (current > MIGRATIONS.length) {
    throw new DropwireError(
      StoreErrorCode.VERSION,
      `database schema version ${current} is newer than this dropwire understands (${MIGRATIONS.length})`,
    );
  }
  for (let v = current; v < MIGRATIONS.length; v++) {
    db.exec('BEGIN IMMEDIATE');
    try {
      db.exec(MIGRATIONS[v]!);
      db.exec(`PRAGMA user_version = ${v + 1}`);
      db.exec('COMMIT');
    } catch (err) {
      if (db.isTransaction) db.exec('ROLLBACK');
      throw failed(`migration to schema version ${v + 1}`, err);
    }
  }
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
  private readonly now: () => number;
  private readonly maxBatch: number;

  private readonly queue: Write[] = [];
  private flushScheduled = false;
  private closing: Promise<void> | undefined;
  private readonly counters = { commits: 0, writes: 0, failedWrites: 0, largestBatch: 0 };
  private lastCommitAt: number | undefined;
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
    this.now = now;
    this.maxBatch = maxBatch;
    this.sql = prepareStatements(db);
  }

  stats(): SqliteStoreStats {
    return { ...this.counters, queued: this.queue.length, lastCommitAt: this.lastCommitAt };
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

  // --- writes: queued, applied in call order, settled after COMMIT ---

  private write<T>(label: string, onDuplicate: string | undefined, fn: () => T): Promise<T> {
    if (this.closing) return Promise.reject(closedError());
    return new Promise<T>((resolve, reject) => {
      this.queue.push({
        label,
        onDuplicate,
        apply: () => {
          const value = fn();
          return () => resolve(value);
        },
        reject,
      });
      this.scheduleFlush();
    });
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
  private flushBatch(): void {
    const batch = this.queue.splice(0, this.maxBatch);
    if (batch.length === 0) return;
    if (!this.db.isOpen) {
      for (const w of batch) w.reject(closedError());
      return;
    }
    const committed: Array<() => void> = [];
    /** Writes that were applied but lost with an aborted transaction: they go back to the queue. */
    let retry: Write[] = [];
    const fail = (w: Write, err: DropwireError): void => {
      this.counters.failedWrites++;
      w.reject(err);
    };

    try {
      this.sql.begin.run();
    } catch (err) {
      for (const w of batch) fail(w, failed(`${w.label}: begin transaction`, err));
      return;
    }
    // Fast path: the whole batch without savepoints (two statements fewer per write). If any write fails,
    // it is all rolled back and done again below, each write in its own savepoint.
    if (batch.length > 1) {
      const settles: Array<() => void> = [];
      let whole = true;
      for (const w of batch) {
        try {
          settles.push(w.apply());
        } catch {
          whole = false;
          break;
        }
      }
      if (whole) {
        try {
          this.sql.commit.run();
        } catch (err) {
          if (this.db.isTransaction) this.rollbackQuietly();
          for (const w of batch) fail(w, failed(`${w.label}: commit`, err));
          return;
        }
        this.counters.commits++;
        this.counters.writes += batch.length;
        this.counters.largestBatch = Math.max(this.counters.largestBatch, batch.length);
        this.lastCommitAt = this.now();
        for (const settle of settles) settle();
        return;
      }
      this.rollbackQuietly();
      try {
        this.sql.begin.run();
      } catch (err) {
        for (const w of batch) fail(w, failed(`${w.label}: begin transaction`, err));
        return;
      }
    }
    // A lone write needs no savepoint: if it fails, the whole (one-write) transaction is rolled back.
    const isolate = batch.length > 1;
    const applied: Write[] = [];
    for (let i = 0; i < batch.length; i++) {
      const w = batch[i]!;
      try {
        if (isolate) this.sql.savepoint.run();
        committed.push(w.apply());
        if (isolate) this.sql.release.run();
        applied.push(w);
      } catch (err) {
        fail(w, writeError(w, err));
        if (isolate && this.db.isTransaction) {
          try {
            this.sql.rollbackTo.run();
            this.sql.release.run();
            continue;
          } catch {
            // fall through: treat as a lost transaction
          }
        }
        // The transaction is gone (a lone write failed, or SQLite aborted it: I/O error, disk full).
        // The writes applied before this one did nothing wrong: queue them again, ahead of the rest.
        if (this.db.isTransaction) this.rollbackQuietly();
        retry = [...applied, ...batch.slice(i + 1)];
        committed.length = 0;
        applied.length = 0;
        break;
      }
    }

    if (applied.length > 0) {
      try {
        this.sql.commit.run();
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
    for (const settle of committed) settle();
  }

  private rollbackQuietly(): void {
    try {
      this.sql.rollback.run();
    } catch {
      // already rolled back by SQLite
    }
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

  touchDevice(name: string, lastSeen: number, handshakeTs?: number): Promise<void> {
    // An unknown device is a no-op: the session that reports it is about to be refused anyway.
    return this.write(`touchDevice ${name}`, undefined, () => {
      this.sql.touchDevice.run({ name, seen: lastSeen, ts: handshakeTs ?? null });
    });
  }

  setAgentVersion(name: string, agentVersion: string): Promise<void> {
    return this.write(`setAgentVersion ${name}`, undefined, () => {
      this.sql.setAgentVersion.run({ name, agentVersion });
    });
  }

  createToken(token: TokenRecord): Promise<void> {
    return this.write(`createToken ${token.name}`, StoreErrorCode.TOKEN_EXISTS, () => {
      this.sql.insertToken.run(token.name, token.hash, token.to, token.webhook ?? null, token.webhookSecret ?? null, token.createdAt);
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
      }) as { seq: number };
      this.sql.insertHistory.run(message.id, 'queued', message.createdAt, null);
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

  /** Stops taking work, commits every write already queued, then closes the file. Idempotent. */
  close(): Promise<void> {
    this.closing ??= new Promise<void>((resolve, reject) => {
      try {
        while (this.queue.length > 0) this.flushBatch();
        this.db.close();
        resolve();
      } catch (err) {
        reject(failed('close', err));
      }
    });
    return this.closing;
  }
}
