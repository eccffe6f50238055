/**
 * The relay's shared store: Redis (a standalone server or a Sentinel-managed primary), so that several
 * relay nodes act as one relay. Every state transition is one Lua script (scripts.ts); key names are in
 * keys.ts; the connection, durability check and replica acknowledgement in connection.ts.
 *
 * A write resolves once Redis answered the script — with `appendfsync always`, after the AOF was fsync'd
 * (checked at open) — and, with `replicas: N`, once N replicas hold it (WAIT). No group commit is needed:
 * concurrent calls are pipelined on the one connection. While Redis is unreachable every call fails at
 * once with DW_STORE_DOWN; the client reconnects by itself and the store works again.
 */
import type { Redis } from 'ioredis';
import { DropwireError } from '../../../shared/errors.js';
import { closedError, invalid, jsonOrNull } from '../errors.js';
import {
  insertedMessage,
  MessageStatus,
  type DeviceRecord,
  type EventType,
  type HistoryEntry,
  type MessageRecord,
  type NewMessage,
  type PendingMessage,
  type RelayEvent,
  type SetStatusOptions,
  type StatusChange,
  type Store,
  type TokenRecord,
  type MessagePage,
  type MessageQuery,
  MESSAGE_SCAN_MAX,
  checkMessageQuery,
  type WebhookAttempt,
} from '../types.js';
import {
  checkDurability,
  connect,
  DEFAULT_REPLICA_TIMEOUT_MS,
  ReplicaAck,
  storeError,
  type RedisConnectionOptions,
} from './connection.js';
import { DEFAULT_PREFIX, REDIS_BODY_REF, storeKeys, type StoreKeys } from './keys.js';
import { scripts, type LuaScript } from './scripts.js';
import { RedisWakeups, type StoreWakeups } from './wakeups.js';

export { DEFAULT_PREFIX, REDIS_BODY_REF, storeKeys } from './keys.js';
export type { RedisConnectionOptions, RedisTarget } from './connection.js';
export type { StoreWakeups, Wakeup } from './wakeups.js';

/** How long a large body stays in Redis after its message ended (handled, failed, expired...). */
export const DEFAULT_BODY_RETENTION_MS = 24 * 3600 * 1000;

export interface RedisStoreOptions extends RedisConnectionOptions {
  /** Prefix of every key and channel (default `dw:`); several relays may share one Redis database. */
  prefix?: string;
  /** Large bodies (kept in Redis by the body storage) are removed this long after their message ended. */
  bodyRetentionMs?: number;
}

export interface RedisStore extends Store {
  readonly prefix: string;
  readonly keys: StoreKeys;
  /** The client the store uses (for a body storage or cluster runtime sharing the connection). */
  readonly redis: Redis;
  /** The per-device wake-ups each transition publishes (a separate subscriber connection, opened on first use). */
  readonly wakeups: StoreWakeups;
  /** Waits until the configured replicas hold every write made so far (no-op without `replicas`). */
  confirmReplicas(stage: string): Promise<void>;
}

export async function openRedisStore(options: RedisStoreOptions): Promise<RedisStore> {
  const prefix = options.prefix ?? DEFAULT_PREFIX;
  if (/[{}]/.test(prefix)) throw invalid(`redis key prefix must not contain braces: ${prefix}`);
  const replicas = options.replicas ?? 0;
  if (!Number.isInteger(replicas) || replicas < 0) throw invalid('replicas must be a whole number >= 0');
  const redis = await connect(options);
  try {
    await checkDurability(redis, options);
  } catch (err) {
    redis.disconnect();
    throw err;
  }
  return new RedisStoreImpl(redis, options, prefix);
}

// ---------------------------------------------------------------------------------------------------
// Records from hashes

type Hash = Record<string, string>;

function hashFrom(flat: Array<string | Buffer>): Hash {
  const h: Hash = {};
  for (let i = 0; i + 1 < flat.length; i += 2) h[String(flat[i])] = String(flat[i + 1]);
  return h;
}

const num = (v: string | undefined): number | undefined => (v === undefined ? undefined : Number(v));

function toDevice(h: Hash): DeviceRecord {
  return {
    name: h.name!,
    publicKey: h.publicKey,
    enrollSecretHash: h.enrollSecretHash,
    enrollExpiresAt: num(h.enrollExpiresAt),
    enrolledAt: num(h.enrolledAt),
    createdAt: Number(h.createdAt),
    lastSeen: num(h.lastSeen),
    lastHandshakeTs: num(h.lastHandshakeTs),
    agentVersion: h.agentVersion,
    sendTo: h.sendTo,
  };
}

function toMessage(h: Hash): MessageRecord {
  return {
    id: h.id!,
    seq: Number(h.seq),
    to: h.to!,
    from: h.from!,
    filename: h.filename!,
    size: Number(h.size),
    sha256: h.sha256!,
    inline: h.inline === '1',
    bodyPath: h.bodyPath,
    status: h.status as MessageStatus,
    idempotencyKey: h.ikey,
    createdAt: Number(h.createdAt),
    updatedAt: Number(h.updatedAt),
    deadlineAt: num(h.deadlineAt),
    expiresAt: num(h.expiresAt),
    overdue: h.overdue === '1',
    result: h.result === undefined ? undefined : (JSON.parse(h.result) as Record<string, unknown>),
    ...(h.sealed === '1' ? { sealed: true } : {}),
  };
}

function toToken(json: string): TokenRecord {
  const t = JSON.parse(json) as TokenRecord;
  return {
    name: t.name,
    hash: t.hash,
    to: t.to,
    webhook: t.webhook,
    webhookSecret: t.webhookSecret,
    ...(t.receive ? { receive: true } : {}),
    ...(t.deliverUrl !== undefined ? { deliverUrl: t.deliverUrl } : {}),
    ...(t.role === 'admin' || t.role === 'metrics' ? { role: t.role } : {}),
    createdAt: t.createdAt,
  };
}

/** Byte order, as SQLite's BINARY collation sorts names. */
const byName = <T extends { name: string }>(a: T, b: T): number => Buffer.compare(Buffer.from(a.name), Buffer.from(b.name));

/** A time or size as the scripts take it: a decimal integer string. */
function int(v: number, what: string): string {
  if (!Number.isSafeInteger(v)) throw invalid(`${what} must be a whole number, got ${v}`);
  return String(v);
}

const optInt = (v: number | undefined, what: string): string => (v === undefined ? '' : int(v, what));

/** The field under which an idempotency key is kept: unambiguous for any sender and key. */
const idempotencyField = (from: string, key: string): string => `${from.length}:${from}${key}`;


class RedisStoreImpl implements RedisStore {
  readonly redis: Redis;
  readonly prefix: string;
  readonly keys: StoreKeys;
  private readonly retentionMs: number;
  private readonly ack: ReplicaAck;
  private wakeupsImpl: RedisWakeups | undefined;
  private readonly inFlight = new Set<Promise<unknown>>();
  private closing: Promise<void> | undefined;
  /**
   * The persistence check of the server the client is connected to now: done at open, and again after
   * every reconnection (a failover may have led to a server with other settings). Writes wait for it and
   * fail with its error (DW_STORE_UNSAFE) while it does not pass.
   */
  private durable: Promise<void> = Promise.resolve();

  constructor(redis: Redis, options: RedisStoreOptions, prefix: string) {
    this.redis = redis;
    this.prefix = prefix;
    this.keys = storeKeys(prefix);
    this.retentionMs = options.bodyRetentionMs ?? DEFAULT_BODY_RETENTION_MS;
    this.ack = new ReplicaAck(redis, options.replicas ?? 0, options.replicaTimeoutMs ?? DEFAULT_REPLICA_TIMEOUT_MS);
    redis.on('ready', () => {
      this.durable = checkDurability(redis, options);
      this.durable.catch(() => {}); // seen by the writes that wait for it
    });
  }

  get wakeups(): StoreWakeups {
    this.wakeupsImpl ??= new RedisWakeups(this.redis, this.keys);
    return this.wakeupsImpl;
  }

  async confirmReplicas(stage: string): Promise<void> {
    await this.durable;
    await this.ack.confirm(stage);
  }

  // --- calls: tracked so that close() settles them first ---

  private track<T>(stage: string, fn: () => Promise<T>): Promise<T> {
    if (this.closing) return Promise.reject(closedError());
    let p: Promise<T>;
    try {
      p = fn().catch((err: unknown) => {
        throw storeError(stage, err);
      });
    } catch (err) {
      return Promise.reject(storeError(stage, err));
    }
    this.inFlight.add(p);
    const done = (): void => void this.inFlight.delete(p);
    p.then(done, done);
    return p;
  }

  private async runScript(s: LuaScript, args: Array<string | Buffer>): Promise<unknown> {
    const argv = [this.prefix, String(this.retentionMs), ...args];
    try {
      return await this.redis.evalsha(s.sha, 0, ...argv);
    } catch (err) {
      // First use on this server (or after a restart): send the script itself once.
      if (!String((err as Error).message).startsWith('NOSCRIPT')) throw err;
      return this.redis.eval(s.lua, 0, ...argv);
    }
  }

  private async runScriptBuffer(s: LuaScript, args: string[]): Promise<unknown> {
    const argv = [this.prefix, String(this.retentionMs), ...args];
    try {
      return await this.redis.callBuffer('EVALSHA', [s.sha, 0, ...argv]);
    } catch (err) {
      if (!String((err as Error).message).startsWith('NOSCRIPT')) throw err;
      return this.redis.callBuffer('EVAL', [s.lua, 0, ...argv]);
    }
  }

  /** A write: the script, then (with replicas) the WAIT that makes it survive a failover. */
  private write<T>(stage: string, s: LuaScript, args: Array<string | Buffer>, map: (reply: unknown) => T): Promise<T> {
    return this.track(stage, async () => {
      await this.durable;
      const reply = await this.runScript(s, args);
      await this.ack.confirm(stage);
      return map(reply);
    });
  }

  // --- devices ---

  createDevice(device: DeviceRecord): Promise<void> {
    const stage = `createDevice ${device.name}`;
    return this.track(stage, async () => {
      const fields: string[] = ['name', device.name, 'createdAt', int(device.createdAt, 'createdAt')];
      const opt = (k: keyof DeviceRecord, numeric: boolean): void => {
        const v = device[k];
        if (v !== undefined) fields.push(k, numeric ? int(v as number, k) : String(v));
      };
      opt('publicKey', false);
      opt('enrollSecretHash', false);
      opt('enrollExpiresAt', true);
      opt('enrolledAt', true);
      opt('lastSeen', true);
      opt('lastHandshakeTs', true);
      await this.durable;
      opt('sendTo', false);
      await this.runScript(scripts.createDevice, [device.name, device.publicKey ?? '', ...fields]);
      await this.ack.confirm(stage);
    });
  }

  getDevice(name: string): Promise<DeviceRecord | undefined> {
    return this.track('getDevice', async () => {
      const h = await this.redis.hgetall(this.keys.device(name));
      return h.name === undefined ? undefined : toDevice(h);
    });
  }

  getDeviceByKey(publicKeyHex: string): Promise<DeviceRecord | undefined> {
    return this.track('getDeviceByKey', async () => {
      const flat = (await this.runScript(scripts.deviceByKey, [publicKeyHex])) as string[];
      return flat.length === 0 ? undefined : toDevice(hashFrom(flat));
    });
  }

  listDevices(): Promise<DeviceRecord[]> {
    return this.track('listDevices', async () => {
      const names = await this.redis.zrange(this.keys.devices, 0, -1);
      const rows = await Promise.all(names.map((n) => this.redis.hgetall(this.keys.device(n))));
      return rows.filter((h) => h.name !== undefined).map(toDevice).sort(byName);
    });
  }

  enrollDevice(name: string, publicKeyHex: string, at: number): Promise<void> {
    return this.write(`enrollDevice ${name}`, scripts.enrollDevice, [name, publicKeyHex, int(at, 'at')], () => undefined);
  }

  removeDevice(name: string, at: number): Promise<boolean> {
    return this.write(`removeDevice ${name}`, scripts.removeDevice, [name, int(at, 'at')], (r) => Number(r) > 0);
  }

  touchDevice(name: string, lastSeen: number, handshakeTs?: number): Promise<void> {
    return this.write(
      `touchDevice ${name}`,
      scripts.touchDevice,
      [name, int(lastSeen, 'lastSeen'), optInt(handshakeTs, 'handshakeTs')],
      () => undefined,
    );
  }

  renewEnrollment(name: string, enrollSecretHash: string, enrollExpiresAt: number): Promise<boolean> {
    return this.write(`renewEnrollment ${name}`, scripts.renewEnrollment, [name, enrollSecretHash, int(enrollExpiresAt, 'enrollExpiresAt')], (r) => Number(r) > 0);
  }

  setAgentVersion(name: string, agentVersion: string): Promise<void> {
    return this.write(`setAgentVersion ${name}`, scripts.setAgentVersion, [name, agentVersion], () => undefined);
  }

  setSendTo(name: string, sendTo: string | undefined): Promise<boolean> {
    return this.write(`setSendTo ${name}`, scripts.setSendTo, [name, sendTo ?? ''], (r) => Number(r) === 1);
  }

  // --- tokens ---

  createToken(token: TokenRecord): Promise<void> {
    const json = JSON.stringify({
      name: token.name,
      hash: token.hash,
      to: token.to,
      ...(token.webhook !== undefined ? { webhook: token.webhook } : {}),
      ...(token.webhookSecret !== undefined ? { webhookSecret: token.webhookSecret } : {}),
      ...(token.receive ? { receive: true } : {}),
      ...(token.deliverUrl !== undefined ? { deliverUrl: token.deliverUrl } : {}),
      ...(token.role === 'admin' || token.role === 'metrics' ? { role: token.role } : {}),
      createdAt: token.createdAt,
    });
    return this.write(`createToken ${token.name}`, scripts.createToken, [token.name, token.hash, json], () => undefined);
  }

  getTokenByHash(hash: string): Promise<TokenRecord | undefined> {
    return this.track('getTokenByHash', async () => {
      const json = (await this.runScript(scripts.tokenByHash, [hash])) as string | null;
      return json === null ? undefined : toToken(json);
    });
  }

  listTokens(): Promise<TokenRecord[]> {
    return this.track('listTokens', async () => Object.values(await this.redis.hgetall(this.keys.tokens)).map(toToken).sort(byName));
  }

  removeToken(name: string): Promise<boolean> {
    return this.write(`removeToken ${name}`, scripts.removeToken, [name], (r) => Number(r) > 0);
  }

  // --- messages ---

  enqueue(message: NewMessage): Promise<{ message: MessageRecord; created: boolean }> {
    const label = `enqueue ${message.id}`;
    if ((message.body === undefined) === (message.bodyPath === undefined)) {
      return Promise.reject(invalid(`${label}: exactly one of body and bodyPath is required`));
    }
    if (message.body !== undefined && message.body.byteLength !== message.size) {
      return Promise.reject(invalid(`${label}: body has ${message.body.byteLength} bytes, size says ${message.size}`));
    }
    let args: Array<string | Buffer>;
    try {
      const ev = JSON.stringify({ id: message.id, to: message.to, from: message.from, filename: message.filename, size: message.size });
      const blobKey = message.bodyPath?.startsWith(REDIS_BODY_REF) ? this.keys.blob(message.bodyPath.slice(REDIS_BODY_REF.length)) : '';
      args = [
        message.idempotencyKey !== undefined ? idempotencyField(message.from, message.idempotencyKey) : '',
        message.id,
        message.to,
        message.from,
        message.filename,
        int(message.size, 'size'),
        message.sha256,
        message.body !== undefined ? '1' : '0',
        message.bodyPath ?? '',
        message.idempotencyKey ?? '',
        int(message.createdAt, 'createdAt'),
        optInt(message.deadlineAt, 'deadlineAt'),
        optInt(message.expiresAt, 'expiresAt'),
        ev.slice(0, -1), // the event head: `{"id":…,"size":N` — each event closes it with its status
        message.body !== undefined ? Buffer.from(message.body.buffer, message.body.byteOffset, message.body.byteLength) : '',
        blobKey,
        message.retryOf ?? '',
        message.sealed ? '1' : '0',
      ];
    } catch (err) {
      return Promise.reject(err instanceof DropwireError ? err : invalid(`${label}: ${(err as Error).message}`, err));
    }
    return this.write(label, scripts.enqueue, args, (reply) => {
      const [created, rest] = reply as [number, number | string[]];
      if (created === 0) return { message: toMessage(hashFrom(rest as string[])), created: false };
      return { message: insertedMessage(message, Number(rest)), created: true };
    });
  }

  getMessage(id: string): Promise<MessageRecord | undefined> {
    return this.track('getMessage', async () => {
      const h = await this.redis.hgetall(this.keys.message(id));
      return h.id === undefined ? undefined : toMessage(h);
    });
  }

  getHistory(id: string): Promise<HistoryEntry[]> {
    return this.track('getHistory', async () =>
      (await this.redis.lrange(this.keys.history(id), 0, -1)).map((j) => {
        const e = JSON.parse(j) as HistoryEntry;
        return { status: e.status, at: e.at, detail: e.detail };
      }),
    );
  }

  listMessages(q: MessageQuery): Promise<MessagePage> {
    return this.track('listMessages', async () => {
      const limit = checkMessageQuery(q);
      const [rows, next] = (await this.runScript(scripts.listMessages, [
        optInt(q.beforeSeq, 'beforeSeq'),
        String(limit),
        String(MESSAGE_SCAN_MAX),
        q.device ?? '',
        q.sender ?? '',
        (q.statuses ?? []).join(','),
        q.attention ? '1' : '',
        optInt(q.since, 'since'),
        optInt(q.until, 'until'),
        q.search ?? '',
      ])) as [string[][], string];
      const messages = rows.map((flat) => toMessage(hashFrom(flat)));
      return next === '' ? { messages } : { messages, next: Number(next) };
    });
  }

  readInlineBody(id: string): Promise<Uint8Array | undefined> {
    return this.track('readInlineBody', async () => {
      const b = await this.redis.getBuffer(this.keys.body(id));
      return b === null ? undefined : new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
    });
  }

  pending(device: string, afterSeq: number, limit: number): Promise<PendingMessage[]> {
    return this.track('pending', async () => {
      if (limit <= 0) return [];
      const rows = (await this.runScriptBuffer(scripts.pending, [device, String(afterSeq), String(Math.trunc(limit))])) as Array<
        [Buffer[], Buffer | null]
      >;
      return rows.map(([flat, body]) => {
        const m = toMessage(hashFrom(flat));
        return body === null || !m.inline ? m : { ...m, body: new Uint8Array(body.buffer, body.byteOffset, body.byteLength) };
      });
    });
  }

  countPending(device: string): Promise<number> {
    return this.track('countPending', () => this.redis.zcard(this.keys.queue(device)));
  }

  /** Lazy changes (options.lazy) are written at once: one script per call, nothing to gain by holding them. */
  setStatus(changes: StatusChange[], _options?: SetStatusOptions): Promise<boolean[]> {
    let args: string[];
    try {
      args = [String(changes.length)];
      for (const c of changes) {
        if (!Object.hasOwn(MessageStatus, c.status)) throw invalid(`setStatus ${c.id}: unknown status ${String(c.status)}`);
        args.push(c.id, c.status, int(c.at, 'at'), jsonOrNull(c.detail, 'detail') ?? '', jsonOrNull(c.result, 'result') ?? '');
      }
    } catch (err) {
      return Promise.reject(err);
    }
    if (changes.length === 0) return Promise.resolve([]);
    const stage = `setStatus ${changes.map((c) => c.id).join(',').slice(0, 80)}`;
    return this.write(stage, scripts.setStatus, args, (r) => (r as number[]).map((x) => Number(x) === 1));
  }

  markOverdue(id: string, at: number): Promise<boolean> {
    return this.write(`markOverdue ${id}`, scripts.markOverdue, [id, int(at, 'at')], (r) => Number(r) === 1);
  }

  // --- events and webhooks ---

  appendEvents(events: Omit<RelayEvent, 'seq'>[]): Promise<void> {
    if (events.length === 0) return Promise.resolve();
    let args: string[];
    try {
      args = [String(events.length)];
      for (const e of events) args.push(e.type, e.device, e.messageId ?? '', e.sender ?? '', int(e.at, 'at'), JSON.stringify(e.data));
    } catch (err) {
      return Promise.reject(err instanceof DropwireError ? err : invalid(`appendEvents: ${(err as Error).message}`, err));
    }
    return this.write('appendEvents', scripts.appendEvents, args, () => undefined);
  }

  eventsAfter(seq: number, limit: number): Promise<RelayEvent[]> {
    return this.track('eventsAfter', async () => {
      if (limit <= 0) return [];
      const start = `${Math.max(0, Math.trunc(seq)) + 1}-0`;
      const entries = await this.redis.xrange(this.keys.events, start, '+', 'COUNT', Math.trunc(limit));
      return entries.map(([id, flat]) => {
        const f = hashFrom(flat);
        return {
          seq: Number(id.slice(0, id.indexOf('-'))),
          type: f.t as EventType,
          device: f.d!,
          ...(f.m !== undefined ? { messageId: f.m } : {}),
          ...(f.s !== undefined ? { sender: f.s } : {}),
          at: Number(f.a),
          data: JSON.parse(f.j!) as Record<string, unknown>,
        };
      });
    });
  }

  lastEventSeq(): Promise<number> {
    return this.track('lastEventSeq', async () => Number((await this.redis.get(this.keys.eventSeq)) ?? 0));
  }

  webhookCursor(token: string): Promise<number> {
    return this.track('webhookCursor', async () => Number((await this.redis.hget(this.keys.webhookCursors, token)) ?? 0));
  }

  recordWebhookAttempt(a: WebhookAttempt): Promise<void> {
    const json = JSON.stringify({
      token: a.token,
      seq: a.seq,
      at: a.at,
      ok: a.ok,
      ...(a.status !== undefined ? { status: a.status } : {}),
      ...(a.error !== undefined ? { error: a.error } : {}),
      ...(a.abandoned ? { abandoned: true } : {}),
    });
    const moves = a.ok || a.abandoned ? '1' : '0';
    return this.write(`webhookAttempt ${a.token}`, scripts.webhookAttempt, [a.token, String(a.seq), json, moves], () => undefined);
  }

  skipWebhookEvents(token: string, toSeq: number): Promise<void> {
    return this.write(`webhookSkip ${token}`, scripts.webhookSkip, [token, String(toSeq)], () => undefined);
  }

  webhookAttempts(token: string, limit: number): Promise<WebhookAttempt[]> {
    return this.track('webhookAttempts', async () => {
      if (limit <= 0) return [];
      return (await this.redis.lrange(this.keys.webhookAttempts(token), 0, Math.trunc(limit) - 1)).map((j) => JSON.parse(j) as WebhookAttempt);
    });
  }

  // --- sweeps ---

  dueForDeadline(now: number, limit: number): Promise<MessageRecord[]> {
    return this.due('deadline', now, limit);
  }

  dueForExpiry(now: number, limit: number): Promise<MessageRecord[]> {
    return this.due('expiry', now, limit);
  }

  private due(index: 'deadline' | 'expiry', now: number, limit: number): Promise<MessageRecord[]> {
    return this.track(`dueFor ${index}`, async () => {
      if (limit <= 0) return [];
      const rows = (await this.runScript(scripts.due, [index, String(now), String(Math.trunc(limit))])) as string[][];
      return rows.filter((flat) => flat.length > 0).map((flat) => toMessage(hashFrom(flat)));
    });
  }

  /** Stops taking work, lets the calls already made settle, then closes the connections. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      while (this.inFlight.size > 0) await Promise.allSettled([...this.inFlight]);
      await this.wakeupsImpl?.close();
      try {
        await this.redis.quit();
      } catch {
        this.redis.disconnect(); // not connected: nothing to say goodbye to
      }
    })();
    return this.closing;
  }
}


