/**
 * The SQLite store's schema and its migrations, and opening a database file with the settings that make
 * a COMMIT durable (WAL, synchronous=FULL).
 */
import { closeSync, mkdirSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { DropwireError } from '../../../shared/errors.js';
import { failed } from '../errors.js';
import { MessageStatus, StoreErrorCode } from '../types.js';

// Schema. MIGRATIONS[v] takes a database from user_version v to v + 1; never edit a shipped entry.

const STATUS_LIST = Object.values(MessageStatus)
  .map((s) => `'${s}'`)
  .join(', ');

/** "Still needs delivery". The same text appears in the partial indexes and the queries that use them. */
export const LIVE = "status IN ('queued', 'sent')";

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
  `
  -- Where a device may send files (relay device allow NAME --send-to GLOB); NULL: nowhere.
  ALTER TABLE devices ADD COLUMN send_to TEXT;
  -- The body is a sealed envelope (PROTOCOL 12).
  ALTER TABLE messages ADD COLUMN sealed INTEGER NOT NULL DEFAULT 0 CHECK (sealed IN (0, 1));
  -- Sites that receive files from devices, pushed to deliver_url or pulled from GET /v1/inbox.
  ALTER TABLE tokens ADD COLUMN receive INTEGER NOT NULL DEFAULT 0 CHECK (receive IN (0, 1));
  ALTER TABLE tokens ADD COLUMN deliver_url TEXT;
  `,
  `
  -- What a token is for: send (NULL), admin (console, metrics) or metrics only.
  ALTER TABLE tokens ADD COLUMN role TEXT CHECK (role IN ('admin', 'metrics'));
  `,
  `
  -- A message's history is read from its event rows from here on: a status change writes one row (its
  -- event), not a history row beside it. The history table keeps the rows written before this version, and
  -- the entries that are no event (the retriedAs entry of a retried message). history_fold says where the
  -- switch happened: history rows up to history_to and event rows after events_from make up the history.
  CREATE TABLE history_fold (
    events_from INTEGER NOT NULL,
    history_to  INTEGER NOT NULL
  ) STRICT;
  INSERT INTO history_fold (events_from, history_to)
    VALUES ((SELECT coalesce(max(seq), 0) FROM events), (SELECT coalesce(max(n), 0) FROM history));
  CREATE INDEX events_message ON events (message_id) WHERE message_id IS NOT NULL;
  `,
];

export const SCHEMA_VERSION = MIGRATIONS.length;

export function openDatabase(path: string, busyTimeoutMs: number): DatabaseSync {
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
