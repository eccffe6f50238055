/**
 * The Redis connection of a store: the ioredis client (Sentinel and reconnection are its job), the
 * durability check at open, the mapping of client failures to store error codes, and the replica
 * acknowledgement (WAIT) shared by concurrent writes.
 */
import { Redis, type RedisOptions } from 'ioredis';
import type { Logger } from '../../../shared/log.js';
import { DropwireError } from '../../../shared/errors.js';
import { downError, failed } from '../errors.js';
import { StoreErrorCode } from '../types.js';

/** How long one command may take before the call fails with DW_STORE_DOWN (never a hang). */
export const DEFAULT_COMMAND_TIMEOUT_MS = 5_000;
/** How long a write waits for its replicas (WAIT) before failing with DW_STORE_DOWN. */
export const DEFAULT_REPLICA_TIMEOUT_MS = 2_000;
/** Delay between reconnection attempts (the client reconnects forever, by itself). */
const RECONNECT_DELAY_MS = 250;
/** How long `open` waits for the first connection. */
export const DEFAULT_CONNECT_TIMEOUT_MS = 5_000;

/** Where the store's Redis is: a server, or a Sentinel-managed primary. */
export type RedisTarget =
  | { kind: 'server'; host: string; port: number; tls?: boolean }
  | { kind: 'sentinel'; sentinels: Array<{ host: string; port: number }>; name: string; tls?: boolean };

export interface RedisConnectionOptions {
  target: RedisTarget;
  db?: number;
  username?: string;
  password?: string;
  /** PEM of the CA that signed the server's certificate (rediss://), when not a public one. */
  tlsCa?: string | Buffer;
  /** Accept a server that does not fsync every write (a warning is logged). Default false. */
  unsafe?: boolean;
  /** Each write waits until this many replicas have it (WAIT); default 0. */
  replicas?: number;
  replicaTimeoutMs?: number;
  commandTimeoutMs?: number;
  connectTimeoutMs?: number;
  log?: Logger;
}

/** ioredis options for a target: fail fast while disconnected, reconnect forever. */
export function clientOptions(o: RedisConnectionOptions): RedisOptions {
  const common: RedisOptions = {
    lazyConnect: true,
    // A call while Redis is away fails at once (DW_STORE_DOWN) instead of waiting in a queue...
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    // ...and a command cut by a lost connection is not sent again: a write may have happened, the caller
    // decides (an idempotency key makes the retry safe).
    autoResendUnfulfilledCommands: false,
    commandTimeout: o.commandTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS,
    connectTimeout: o.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS,
    retryStrategy: () => RECONNECT_DELAY_MS,
    // A primary demoted by a failover answers READONLY: reconnect (Sentinel names the new primary).
    reconnectOnError: (err) => /^(READONLY|MASTERDOWN|LOADING)/.test(err.message),
    ...(o.db !== undefined ? { db: o.db } : {}),
    ...(o.username !== undefined ? { username: o.username } : {}),
    ...(o.password !== undefined ? { password: o.password } : {}),
  };
  const t = o.target;
  // The certificate is checked against the host of the URL (Node's default), with `tlsCa` as trust anchor.
  const tls = t.tls ? { tls: o.tlsCa !== undefined ? { ca: o.tlsCa } : {} } : {};
  if (t.kind === 'server') return { ...common, host: t.host, port: t.port, ...tls };
  return {
    ...common,
    sentinels: t.sentinels,
    name: t.name,
    sentinelRetryStrategy: () => RECONNECT_DELAY_MS,
    ...(o.password !== undefined ? { sentinelPassword: o.password } : {}),
    ...(t.tls ? { ...tls, enableTLSForSentinelMode: true, sentinelTLS: tls.tls } : {}),
  };
}

/** Connects, or fails with DW_STORE_DOWN; the client keeps reconnecting by itself afterwards. */
export async function connect(o: RedisConnectionOptions): Promise<Redis> {
  const redis = new Redis(clientOptions(o));
  // ioredis reports every failed reconnection as an 'error' event; calls see DW_STORE_DOWN instead.
  let lastError: unknown;
  redis.on('error', (err: unknown) => {
    lastError = err;
  });
  const timeout = o.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(lastError ?? new Error(`no answer within ${timeout} ms`)), timeout);
      redis.connect().then(
        () => {
          clearTimeout(timer);
          resolve();
        },
        (err: unknown) => {
          clearTimeout(timer);
          reject(err);
        },
      );
    });
  } catch (err) {
    redis.disconnect();
    throw downError(`connect to ${describeTarget(o.target)}`, err);
  }
  return redis;
}

export function describeTarget(t: RedisTarget): string {
  if (t.kind === 'server') return `redis${t.tls ? 's' : ''}://${t.host}:${t.port}`;
  return `redis-sentinel://${t.sentinels.map((s) => `${s.host}:${s.port}`).join(',')}/${t.name}`;
}

/**
 * Refuses (DW_STORE_UNSAFE) a server that could lose an acknowledged write: every write must be in the
 * append-only file and fsync'd before Redis answers. With `unsafe`, logs a warning and goes on.
 */
export async function checkDurability(redis: Redis, o: RedisConnectionOptions): Promise<void> {
  let appendonly: string | undefined;
  let appendfsync: string | undefined;
  try {
    const a = (await redis.config('GET', 'appendonly')) as string[];
    const f = (await redis.config('GET', 'appendfsync')) as string[];
    appendonly = a[1];
    appendfsync = f[1];
  } catch (err) {
    if (!isReplyError(err)) throw downError('check persistence settings', err);
    // CONFIG may be disabled (a managed Redis): then the settings cannot be checked.
  }
  if (appendonly === 'yes' && appendfsync === 'always') return;
  const what = `Redis at ${describeTarget(o.target)} has appendonly=${appendonly ?? 'unknown'}, appendfsync=${appendfsync ?? 'unknown'}`;
  if (!o.unsafe) {
    throw new DropwireError(
      StoreErrorCode.UNSAFE,
      `${what}: set "appendonly yes" and "appendfsync always" in redis.conf (or CONFIG SET appendonly yes / CONFIG SET appendfsync always), or accept losing acknowledged messages with --unsafe-redis`,
    );
  }
  o.log?.warn({ appendonly, appendfsync }, `${what}: acknowledged messages can be lost if Redis stops (running unsafe)`);
}

export function isReplyError(err: unknown): boolean {
  return (err as { name?: string } | null)?.name === 'ReplyError';
}

/** Replies that mean "the server cannot take this now" rather than "this call is wrong". */
const UNAVAILABLE_REPLY = /^(LOADING|READONLY|MASTERDOWN|TRYAGAIN|CLUSTERDOWN|BUSY|NOREPLICAS|MISCONF)/;

/** Maps what a Redis call threw to the store's error: a coded refusal, DW_STORE_DOWN or DW_STORE_FAILED. */
export function storeError(stage: string, err: unknown): DropwireError {
  if (err instanceof DropwireError) return err;
  if (isReplyError(err)) {
    const message = (err as Error).message;
    // Script refusals: "DW_CODE text" (possibly behind the script location Redis adds).
    const coded = /\b(DW_[A-Z_]+) (.*)$/.exec(message);
    if (coded) return new DropwireError(coded[1]!, coded[2]!, { cause: err });
    if (UNAVAILABLE_REPLY.test(message)) return downError(stage, err);
    return failed(stage, err);
  }
  // Connection closed, not writeable, command timed out, retries exhausted: the server is not there.
  return downError(stage, err);
}

/**
 * Waits for `replicas` replicas to hold every write acknowledged so far. Concurrent writes share one
 * WAIT: a write whose script has returned joins the next WAIT sent (WAIT covers everything this connection
 * wrote before it), so a burst costs one replica round trip, not one per write.
 */
export class ReplicaAck {
  private readonly redis: Redis;
  private readonly replicas: number;
  private readonly timeoutMs: number;
  private waiting: Array<{ resolve(): void; reject(err: unknown): void }> = [];
  private inFlight = false;

  constructor(redis: Redis, replicas: number, timeoutMs: number) {
    this.redis = redis;
    this.replicas = replicas;
    this.timeoutMs = timeoutMs;
  }

  /** Resolves once `replicas` replicas hold the writes made before this call; else DW_STORE_DOWN. */
  confirm(stage: string): Promise<void> {
    if (this.replicas <= 0) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      this.waiting.push({ resolve, reject: (err) => reject(storeError(stage, err)) });
      if (!this.inFlight) void this.flush();
    });
  }

  private async flush(): Promise<void> {
    this.inFlight = true;
    while (this.waiting.length > 0) {
      const batch = this.waiting;
      this.waiting = [];
      try {
        const acked = Number(await this.redis.wait(this.replicas, this.timeoutMs));
        if (acked < this.replicas) {
          const err = downError(`WAIT ${this.replicas}: only ${acked} replica(s) acknowledged within ${this.timeoutMs} ms`);
          for (const w of batch) w.reject(err);
        } else {
          for (const w of batch) w.resolve();
        }
      } catch (err) {
        for (const w of batch) w.reject(err);
      }
    }
    this.inFlight = false;
  }
}
