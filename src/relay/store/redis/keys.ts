/**
 * Every Redis key and channel of the store, in one place (the Lua scripts build the same names from the
 * same prefix: see `LUA_KEYS` in scripts.ts). One prefix for all; a device's keys carry the device in a hash
 * tag (`{name}`). The scripts also touch the store-wide keys (event log, sequences, indexes) in the same
 * transition, so the store needs one primary (a standalone server or a Sentinel-managed one), not Redis
 * Cluster.
 */
export const DEFAULT_PREFIX = 'dw:';

export function storeKeys(prefix: string) {
  const p = prefix;
  return {
    /** Hash: one device (fields of DeviceRecord that are set). */
    device: (name: string) => `${p}dev:{${name}}`,
    /** Sorted set, every score 0: device names (ZRANGE gives them in byte order). */
    devices: `${p}devices`,
    /** Hash: public key hex -> device name (the uniqueness of a key). */
    deviceKeys: `${p}devkey`,
    /** Hash: token name -> token JSON. */
    tokens: `${p}tokens`,
    /** Hash: token hash -> token name. */
    tokenHashes: `${p}tokhash`,
    /** Hash: one message (MessageRecord fields; `ev` is the JSON head its events start with). */
    message: (id: string) => `${p}msg:${id}`,
    /** String: an inline message body. */
    body: (id: string) => `${p}body:${id}`,
    /** List: a message's history entries (JSON), oldest first. */
    history: (id: string) => `${p}hist:${id}`,
    /** Sorted set: a device's messages still to deliver (queued or sent), scored by message seq. */
    queue: (device: string) => `${p}q:{${device}}`,
    /** Hash: idempotency field (sender + key) -> message id. */
    idempotency: `${p}idem`,
    /** Sorted sets of live messages by deadline / expiry; member `%016d(seq):id` so ties go by seq. */
    deadlines: `${p}due:deadline`,
    expiries: `${p}due:expiry`,
    /** Counters: message seq and event seq (INCR, cluster-wide, monotonic). */
    messageSeq: `${p}seq:msg`,
    /** Sorted set: every message id, scored by seq (the console's message list). */
    messages: `${p}msgs`,
    eventSeq: `${p}seq:event`,
    /** Stream: the event log; entry id `SEQ-0`. */
    events: `${p}events`,
    /** Hash: webhook cursor per token. */
    webhookCursors: `${p}wh:cursor`,
    /** List: a token's webhook attempts (JSON), newest first, capped. */
    webhookAttempts: (token: string) => `${p}wh:att:${token}`,
    /** Large bodies (body-storage): hash of chunks, and the upload in progress. */
    blob: (id: string) => `${p}blob:{${id}}`,
    blobUpload: (id: string) => `${p}blob:{${id}}:up`,
    /** Pub/sub: a device's wake-up (a message or presence event for it was appended). */
    wakeChannel: (device: string) => `${p}wake:{${device}}`,
    /** Pattern matching every device's wake-up channel. */
    wakePattern: `${p}wake:*`,
  } as const;
}

export type StoreKeys = ReturnType<typeof storeKeys>;

/**
 * Large bodies kept by the Redis body storage are referenced as `redis-blob:ID` (NewMessage.bodyPath):
 * the store then owns the blob key (made permanent at enqueue, given the retention when the message ends).
 */
export const REDIS_BODY_REF = 'redis-blob:';

/** A webhook attempt list keeps at most this many entries per token (newest). */
export const WEBHOOK_ATTEMPTS_KEPT = 10_000;
