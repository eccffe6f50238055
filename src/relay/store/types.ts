import { DropwireError } from '../../shared/errors.js';

/**
 * The relay's persistence contract. The relay reaches storage only through `Store`; every backend
 * (SQLite, Redis) passes the one contract suite in test/relay/store-contract.ts.
 */

export const MessageStatus = {
  queued: 'queued',
  sent: 'sent',
  received: 'received',
  handled: 'handled',
  failed: 'failed',
  rejected: 'rejected',
  expired: 'expired',
  cancelled: 'cancelled',
} as const;
export type MessageStatus = (typeof MessageStatus)[keyof typeof MessageStatus];

/** Statuses after which nothing more happens to a message. */
export const FINAL_STATUSES: ReadonlySet<MessageStatus> = new Set([
  'handled',
  'failed',
  'rejected',
  'expired',
  'cancelled',
]);

export interface DeviceRecord {
  name: string;
  /** Hex of the device's X25519 public key; undefined until the device has enrolled. */
  publicKey?: string;
  /** SHA-256 hex of the one-time enrollment secret; cleared on enrollment. */
  enrollSecretHash?: string;
  /** Epoch ms after which the enrollment secret is refused. */
  enrollExpiresAt?: number;
  enrolledAt?: number;
  createdAt: number;
  /** Epoch ms of the last sign of life (handshake, record, ping). */
  lastSeen?: number;
  /** Highest handshake timestamp accepted from this device (replay guard, PROTOCOL 3.7). */
  lastHandshakeTs?: number;
  /** What the agent last said it runs, from its HELLO (PROTOCOL 7.3): `dropwire/0.1.0 (0123abcd4567)`. */
  agentVersion?: string;
  /**
   * Glob of the names this device may send files to (devices, or sites with a receiving token); none until
   * an operator allows it (`relay device allow NAME --send-to GLOB`, PROTOCOL 7.14).
   */
  sendTo?: string;
}

export interface TokenRecord {
  name: string;
  /** SHA-256 hex of the token secret; the secret itself is never stored. */
  hash: string;
  /** Glob of device names this token may send to (default '*'). */
  to: string;
  webhook?: string;
  /** Key for the webhook signatures (HMAC-SHA256); printed once when the token is made. Also signs pushed files. */
  webhookSecret?: string;
  /** The site receives files from devices (`relay token add NAME --receive`): devices may send `--to NAME`. */
  receive?: boolean;
  /** Where each file for the site is POSTed (signed); without it the site pulls them (GET /v1/inbox). */
  deliverUrl?: string;
  /**
   * What the token is for (absent: `send`). `admin` also signs in to the console and reads /metrics;
   * `metrics` only reads /metrics (it cannot send).
   */
  role?: TokenRole;
  createdAt: number;
}

export const TokenRole = { send: 'send', admin: 'admin', metrics: 'metrics' } as const;
export type TokenRole = (typeof TokenRole)[keyof typeof TokenRole];

/** Most messages one `listMessages` call returns, and most it examines (newest first) to find them. */
export const MESSAGE_PAGE_MAX = 200;
export const MESSAGE_SCAN_MAX = 5_000;

/** What `listMessages` looks for; every field narrows. */
export interface MessageQuery {
  device?: string;
  sender?: string;
  statuses?: readonly MessageStatus[];
  /** Only messages that need an operator: failed, rejected, or overdue and not yet received. */
  attention?: boolean;
  /** createdAt >= since, createdAt < until (epoch ms). */
  since?: number;
  until?: number;
  /** The message id exactly, or a part of the file name (case-insensitive). */
  search?: string;
  /** Only messages with a seq below this (the `next` of the previous page). */
  beforeSeq?: number;
  /** At most this many (1..MESSAGE_PAGE_MAX). */
  limit: number;
}

/** Checks a query the way every backend must (DW_STORE_INVALID); returns its limit. */
export function checkMessageQuery(q: MessageQuery): number {
  const bad = (what: string) => new DropwireError(StoreErrorCode.INVALID, `listMessages: ${what}`);
  if (!Number.isInteger(q.limit) || q.limit < 1 || q.limit > MESSAGE_PAGE_MAX) throw bad(`limit must be 1 to ${MESSAGE_PAGE_MAX}`);
  for (const st of q.statuses ?? []) if (!(st in MessageStatus)) throw bad(`unknown status '${String(st)}'`);
  for (const [k, v] of [['since', q.since], ['until', q.until], ['beforeSeq', q.beforeSeq]] as const) {
    if (v !== undefined && !Number.isSafeInteger(v)) throw bad(`${k} must be a whole number`);
  }
  return q.limit;
}

export interface MessagePage {
  /** Newest first (seq descending). */
  messages: MessageRecord[];
  /**
   * Where the next page starts (`beforeSeq`), when older messages remain to be examined: a page stops at
   * `limit` matches or after MESSAGE_SCAN_MAX messages examined, whichever comes first.
   */
  next?: number;
}

/** Event types (webhooks and the live event stream). */
export const EventType = {
  queued: 'message.queued',
  sent: 'message.sent',
  received: 'message.received',
  handled: 'message.handled',
  failed: 'message.failed',
  rejected: 'message.rejected',
  expired: 'message.expired',
  cancelled: 'message.cancelled',
  overdue: 'message.overdue',
  online: 'device.online',
  offline: 'device.offline',
} as const;
export type EventType = (typeof EventType)[keyof typeof EventType];

/**
 * One entry of the relay's event log. Message events are written in the same transaction as the status
 * change they report, so an event is never lost nor told for a change that did not happen.
 */
export interface RelayEvent {
  /** Monotonic; the SSE event id and the webhook cursor. */
  seq: number;
  type: EventType;
  device: string;
  messageId?: string;
  /** The message's sender (token or device name). */
  sender?: string;
  at: number;
  data: Record<string, unknown>;
}

export interface WebhookAttempt {
  token: string;
  seq: number;
  at: number;
  ok: boolean;
  /** HTTP status, when there was an answer. */
  status?: number;
  error?: string;
  /** The event was given up after the retry horizon. */
  abandoned?: boolean;
}

export interface HistoryEntry {
  status: MessageStatus;
  at: number;
  detail?: Record<string, unknown>;
}

export interface NewMessage {
  id: string;
  to: string;
  /** Token name (HTTP sender) or device name (a host that sends). */
  from: string;
  filename: string;
  size: number;
  sha256: string;
  /** Body kept inline in the store (small messages), or... */
  body?: Uint8Array;
  /**
   * ...or where the body storage keeps a large body, already durable: a file in the relay's blob folder, or
   * `redis-blob:ID` (body-storage.ts). The Redis store takes ownership of a `redis-blob:` body.
   */
  bodyPath?: string;
  idempotencyKey?: string;
  createdAt: number;
  /** Epoch ms by which the message must be `received`, else it is flagged overdue. */
  deadlineAt?: number;
  /** Epoch ms after which it is never delivered (`expired`). */
  expiresAt?: number;
  /**
   * The id of the message this one is a retry of. When the message is created, the store writes
   * `{ retryOf }` as the detail of its `queued` history entry and, in the same transaction, appends to the
   * old message's history an entry with its current status and detail `{ retriedAs: id }`.
   */
  retryOf?: string;
  /** The body is a sealed envelope (PROTOCOL 12): the receiving agent opens it before its rule runs. */
  sealed?: boolean;
}

export interface MessageRecord {
  id: string;
  /** Per-relay monotonic sequence: per-device delivery order. */
  seq: number;
  to: string;
  from: string;
  filename: string;
  size: number;
  sha256: string;
  /** True when the body is inline (read it with `readInlineBody`), false when it is in `bodyPath`. */
  inline: boolean;
  bodyPath?: string;
  status: MessageStatus;
  idempotencyKey?: string;
  createdAt: number;
  updatedAt: number;
  deadlineAt?: number;
  expiresAt?: number;
  overdue: boolean;
  /** What the host's handler reported (exit code, output tail, job id, ...). */
  result?: Record<string, unknown>;
  /** The body is a sealed envelope (PROTOCOL 12); absent when it is not. */
  sealed?: boolean;
}

/** A message waiting for delivery, with its body when that is kept inline. */
export type PendingMessage = MessageRecord & { body?: Uint8Array };

export interface StatusChange {
  id: string;
  status: MessageStatus;
  at: number;
  detail?: Record<string, unknown>;
  result?: Record<string, unknown>;
}

export interface SetStatusOptions {
  /**
   * The changes need not be durable before the call returns to its caller's work (`sent`, `received`): the
   * store may hold them briefly, in memory, and write them with the same message's next durable change (in
   * order, one event each) or with a later commit. Until written they are seen by no read (no status moves
   * back after a crash: what was never seen is what a crash loses). The promise still settles only once they
   * are written (or refused); a backend may write them at once.
   */
  lazy?: boolean;
}

export interface Store {
  /** Devices. `createDevice` fails with DW_DEVICE_EXISTS when the name is taken. */
  createDevice(device: DeviceRecord): Promise<void>;
  getDevice(name: string): Promise<DeviceRecord | undefined>;
  getDeviceByKey(publicKeyHex: string): Promise<DeviceRecord | undefined>;
  listDevices(): Promise<DeviceRecord[]>;
  /** Binds a public key to the device and clears its enrollment secret. DW_ENROLL_REFUSED if already enrolled. */
  enrollDevice(name: string, publicKeyHex: string, at: number): Promise<void>;
  /** Removes the device and its undelivered messages' queue entries (they become `cancelled`). */
  removeDevice(name: string, at: number): Promise<boolean>;
  /**
   * A new enrollment secret for an existing device (the console's "new enrollment token"): its public key
   * is unbound, so the host that enrolls with the new token replaces the old one. False if no such device.
   */
  renewEnrollment(name: string, enrollSecretHash: string, enrollExpiresAt: number): Promise<boolean>;
  /** Records a sign of life; with `handshakeTs`, also raises the replay guard. */
  touchDevice(name: string, lastSeen: number, handshakeTs?: number): Promise<void>;
  /** Replaces the agent version the device reported (its HELLO); an unknown device is a no-op. */
  setAgentVersion(name: string, agentVersion: string): Promise<void>;
  /** Replaces the device's send-to glob (undefined: it sends nowhere). False for an unknown device. */
  setSendTo(name: string, sendTo: string | undefined): Promise<boolean>;

  /** Sender tokens. `createToken` fails with DW_TOKEN_EXISTS when the name is taken. */
  createToken(token: TokenRecord): Promise<void>;
  getTokenByHash(hash: string): Promise<TokenRecord | undefined>;
  listTokens(): Promise<TokenRecord[]>;
  removeToken(name: string): Promise<boolean>;

  /**
   * Stores a new message durably (on disk, fsync'd) before resolving; concurrent calls share one commit
   * (group commit). With an idempotency key already used by the same sender, resolves to the existing
   * message and `created: false`, storing nothing.
   */
  enqueue(message: NewMessage): Promise<{ message: MessageRecord; created: boolean }>;
  getMessage(id: string): Promise<MessageRecord | undefined>;
  getHistory(id: string): Promise<HistoryEntry[]>;
  /** Messages matching `query`, newest first, a bounded page at a time (the operator console). */
  listMessages(query: MessageQuery): Promise<MessagePage>;
  readInlineBody(id: string): Promise<Uint8Array | undefined>;
  /**
   * Messages for `device` that still need delivery (`queued` or `sent`), in `seq` order, after `afterSeq`;
   * inline messages come with their body (delivery needs it next; no read per message).
   */
  pending(device: string, afterSeq: number, limit: number): Promise<PendingMessage[]>;
  /** Counts a device's messages that are `queued` or `sent`. */
  countPending(device: string): Promise<number>;
  /**
   * Applies status changes durably (group commit) and appends them to each message's history. A change
   * that would move a message backwards (e.g. `received` after `handled`) or out of a final status is
   * ignored and reported in the returned list as not applied. With `lazy`, see SetStatusOptions.
   */
  setStatus(changes: StatusChange[], options?: SetStatusOptions): Promise<boolean[]>;
  /** Flags a message overdue (once). Resolves false if it already was, or is past `received`. */
  markOverdue(id: string, at: number): Promise<boolean>;
  /** Appends events that do not come with a status change (presence). */
  appendEvents(events: Omit<RelayEvent, 'seq'>[]): Promise<void>;
  /** Events after `seq`, oldest first. */
  eventsAfter(seq: number, limit: number): Promise<RelayEvent[]>;
  /** The newest event's seq (0 when there is none). */
  lastEventSeq(): Promise<number>;
  /** Where a token's webhook delivery stands: every event up to this seq is done (delivered or given up). */
  webhookCursor(token: string): Promise<number>;
  /** Records one delivery attempt; when it succeeded or was abandoned, the cursor moves to `seq`. */
  recordWebhookAttempt(attempt: WebhookAttempt): Promise<void>;
  /** Moves a token's cursor over events it does not see (no attempt recorded). */
  skipWebhookEvents(token: string, toSeq: number): Promise<void>;
  webhookAttempts(token: string, limit: number): Promise<WebhookAttempt[]>;

  /** Messages whose deadline or expiry has passed at `now` and that still need attention. */
  dueForDeadline(now: number, limit: number): Promise<MessageRecord[]>;
  dueForExpiry(now: number, limit: number): Promise<MessageRecord[]>;

  close(): Promise<void>;
}

/**
 * The status moves every backend allows: a change to `to` applies only when the message is in one of
 * `ALLOWED_FROM[to]`. Forward only; `sent` may repeat (a redelivery) until the host has `received` it;
 * `expired` and `cancelled` only end a message that was never received; nothing leaves a final status.
 */
export const ALLOWED_FROM: Readonly<Record<MessageStatus, readonly MessageStatus[]>> = {
  queued: [],
  sent: ['queued', 'sent'],
  received: ['queued', 'sent'],
  handled: ['queued', 'sent', 'received'],
  failed: ['queued', 'sent', 'received'],
  rejected: ['queued', 'sent', 'received'],
  expired: ['queued', 'sent'],
  cancelled: ['queued', 'sent'],
};

export function canTransition(from: MessageStatus, to: MessageStatus): boolean {
  return ALLOWED_FROM[to].includes(from);
}

/** The codes a `Store` rejects with; the contract suite asserts them. */
export const StoreErrorCode = {
  DEVICE_EXISTS: 'DW_DEVICE_EXISTS',
  DEVICE_NOT_FOUND: 'DW_DEVICE_NOT_FOUND',
  ENROLL_REFUSED: 'DW_ENROLL_REFUSED',
  TOKEN_EXISTS: 'DW_TOKEN_EXISTS',
  /** A message id already stored (and not an idempotent repeat). */
  MESSAGE_EXISTS: 'DW_MESSAGE_EXISTS',
  /** The caller passed something the store cannot keep (no body, size mismatch, unknown status...). */
  INVALID: 'DW_STORE_INVALID',
  CLOSED: 'DW_STORE_CLOSED',
  /** The database file is from a newer dropwire (schema version unknown to this code). */
  VERSION: 'DW_STORE_VERSION',
  /** The backend failed (I/O, disk full, corrupt file); the original error is the `cause`. */
  FAILED: 'DW_STORE_FAILED',
  /**
   * A networked backend (Redis) is unreachable, or did not confirm a write as durable (replicas): nothing
   * was acknowledged; the call may be retried once the store is back (HTTP 503).
   */
  DOWN: 'DW_STORE_DOWN',
  /** The server does not persist every write (e.g. Redis without `appendonly yes` + `appendfsync always`). */
  UNSAFE: 'DW_STORE_UNSAFE',
  /** A store URL that cannot be understood (`--store`, DROPWIRE_STORE). */
  URL: 'DW_STORE_URL',
} as const;

/** The record a fresh insert produced, built without reading it back (every backend). */
export function insertedMessage(m: NewMessage, seq: number): MessageRecord {
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
    ...(m.sealed ? { sealed: true } : {}),
  };
}
