/**
 * The SQLite store's statements: every SQL text, prepared once, and the mapping between rows and records.
 */
import type { DatabaseSync, StatementSync } from 'node:sqlite';
import {
  ALLOWED_FROM,
  MessageStatus,
  type DeviceRecord,
  type EventType,
  type HistoryEntry,
  type MessageRecord,
  type NewMessage,
  type RelayEvent,
  type TokenRecord,
  type TokenRole,
} from '../types.js';
import { LIVE } from './schema.js';

// Rows as the SELECTs below return them.

export interface DeviceRow {
  name: string;
  public_key: string | null;
  enroll_secret_hash: string | null;
  enroll_expires_at: number | null;
  enrolled_at: number | null;
  created_at: number;
  last_seen: number | null;
  last_handshake_ts: number | null;
  agent_version: string | null;
  send_to: string | null;
}

export interface TokenRow {
  name: string;
  hash: string;
  to_glob: string;
  webhook: string | null;
  webhook_secret: string | null;
  receive: number;
  deliver_url: string | null;
  role: string | null;
  created_at: number;
}

export interface EventRow {
  seq: number;
  type: string;
  device: string;
  message_id: string | null;
  sender: string | null;
  at: number;
  data: string;
}

export function eventFromRow(r: EventRow): RelayEvent {
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

export interface MessageRow {
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
  sealed: number;
}

/** A history entry as the history query returns it: a history row (status, detail) or an event row (type, data). */
export interface HistoryRow {
  status: MessageStatus | null;
  at: number;
  detail: string | null;
  type: string | null;
  data: string | null;
}

const EVENT_PREFIX = 'message.';

export function historyFromRow(r: HistoryRow): HistoryEntry {
  if (r.status !== null) {
    return { status: r.status, at: r.at, detail: r.detail === null ? undefined : (JSON.parse(r.detail) as Record<string, unknown>) };
  }
  const detail = (JSON.parse(r.data!) as { message?: { detail?: Record<string, unknown> } }).message?.detail;
  return { status: r.type!.slice(EVENT_PREFIX.length) as MessageStatus, at: r.at, detail };
}

export const MESSAGE_COLUMNS = `seq, id, to_device, from_sender, filename, size, sha256, body IS NOT NULL AS inline,
  body_path, status, idempotency_key, created_at, updated_at, deadline_at, expires_at, overdue, result, sealed`;

function opt<T>(v: T | null): T | undefined {
  return v === null ? undefined : v;
}

export function toDevice(r: DeviceRow): DeviceRecord {
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
    sendTo: opt(r.send_to),
  };
}

export function toToken(r: TokenRow): TokenRecord {
  return {
    name: r.name,
    hash: r.hash,
    to: r.to_glob,
    webhook: opt(r.webhook),
    webhookSecret: opt(r.webhook_secret),
    ...(r.receive === 1 ? { receive: true } : {}),
    ...(r.deliver_url !== null ? { deliverUrl: r.deliver_url } : {}),
    ...(r.role !== null ? { role: r.role as TokenRole } : {}),
    createdAt: r.created_at,
  };
}

export function toMessage(r: MessageRow): MessageRecord {
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
    ...(r.sealed === 1 ? { sealed: true } : {}),
  };
}


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

export type Statements = ReturnType<typeof prepareStatements>;

export function prepareStatements(db: DatabaseSync) {
  const p = (sql: string): StatementSync => db.prepare(sql);
  const setStatus = new Map<MessageStatus, StatementSync>();
  for (const to of Object.values(MessageStatus)) {
    const from = ALLOWED_FROM[to];
    if (from.length === 0) continue;
    setStatus.set(
      to,
      // Parameters by position (status, at, result, id): binding by name costs about 1 µs more a statement.
      p(`UPDATE messages SET status = ?1, updated_at = ?2, result = coalesce(?3, result)
         WHERE id = ?4 AND status IN (${from.map((s) => `'${s}'`).join(', ')})`),
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
        created_at, last_seen, last_handshake_ts, send_to)
      VALUES (:name, :publicKey, :enrollSecretHash, :enrollExpiresAt, :enrolledAt, :createdAt, :lastSeen,
        :lastHandshakeTs, :sendTo)`),
    deviceByName: p('SELECT * FROM devices WHERE name = ?'),
    deviceByKey: p('SELECT * FROM devices WHERE public_key = ?'),
    listDevices: p('SELECT * FROM devices ORDER BY name'),
    enrollDevice: p(`UPDATE devices SET public_key = :publicKey, enrolled_at = :at, enroll_secret_hash = NULL,
        enroll_expires_at = NULL WHERE name = :name`),
    deleteDevice: p('DELETE FROM devices WHERE name = ?'),
    renewEnrollment: p(`UPDATE devices SET public_key = NULL, enrolled_at = NULL, enroll_secret_hash = :hash,
        enroll_expires_at = :expiresAt WHERE name = :name`),
    touchDevice: p(`UPDATE devices SET last_seen = max(coalesce(last_seen, :seen), :seen),
        last_handshake_ts = CASE WHEN :ts IS NULL THEN last_handshake_ts
                                 ELSE max(coalesce(last_handshake_ts, :ts), :ts) END
      WHERE name = :name`),
    setAgentVersion: p('UPDATE devices SET agent_version = :agentVersion WHERE name = :name'),
    setSendTo: p('UPDATE devices SET send_to = :sendTo WHERE name = :name'),
    cancelForDevice: p(SCAN_SQL.cancelForDevice),

    insertToken: p('INSERT INTO tokens (name, hash, to_glob, webhook, webhook_secret, receive, deliver_url, role, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)'),
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

    // By position: id, to, from, filename, size, sha256, body, bodyPath, idempotencyKey, createdAt, deadlineAt,
    // expiresAt, sealed.
    insertMessage: p(`INSERT INTO messages (id, to_device, from_sender, filename, size, sha256, body, body_path,
        status, idempotency_key, created_at, updated_at, deadline_at, expires_at, sealed)
      VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'queued', ?9, ?10, ?10, ?11, ?12, ?13)
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
    historyFold: p('SELECT events_from, history_to FROM history_fold'),
    // A message's history: the history rows written before the fold (schema.ts), then its status events,
    // then the history rows written since (a retry's retriedAs entry, which follows the final status).
    history: p(`SELECT 0 AS src, n AS k, status, at, detail, NULL AS type, NULL AS data FROM history
        WHERE message_id = :id AND n <= :historyTo
      UNION ALL
      SELECT 1, seq, NULL, at, NULL, type, data FROM events
        WHERE message_id = :id AND seq > :eventsFrom AND type <> 'message.overdue'
      UNION ALL
      SELECT 2, n, status, at, detail, NULL, NULL FROM history
        WHERE message_id = :id AND n > :historyTo
      ORDER BY src, k`),
  };
}
