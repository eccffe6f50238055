/**
 * Large message bodies in Redis, where every relay node can read them: a hash of 1 MiB chunks per body
 * (field = chunk index), streamed in and out a chunk at a time. An upload goes to `blob:{ID}:up` (which
 * expires by itself if the node dies mid-upload), is renamed to `blob:{ID}` when whole, and stays with a
 * short expiry until the message is stored: the enqueue script makes it permanent, and the status change
 * that ends the message gives it the store's body retention.
 */
import type { Readable } from 'node:stream';
import { receiveBody, type BodySink, type BodyStorage, type ReceivedBody } from '../../body-storage.js';
import { storeError } from './connection.js';
import type { RedisStore } from './index.js';
import { REDIS_BODY_REF } from './keys.js';

/** Bytes per chunk (field) of a stored body; every chunk but the last is exactly this long. */
export const BODY_CHUNK = 1024 * 1024;
/** How long an upload in progress, or a body no message took, survives a node that died (ms). */
export const ORPHAN_TTL_MS = 3600 * 1000;

/** A MULTI's replies: throws the first command error (EXEC reports them per command). */
function execOrThrow(replies: Array<[Error | null, unknown]> | null): void {
  if (replies === null) throw new Error('transaction discarded');
  for (const [err] of replies) if (err) throw err;
}

export class RedisBodies implements BodyStorage {
  private readonly store: RedisStore;

  constructor(store: RedisStore) {
    this.store = store;
  }

  receive(stream: Readable | AsyncIterable<Uint8Array>, id: string, limit: number): Promise<ReceivedBody> {
    const { redis, keys } = this.store;
    const up = keys.blobUpload(id);
    return receiveBody(stream, limit, async (): Promise<BodySink> => {
      let index = 0;
      let carry: Buffer = Buffer.alloc(0);
      const put = async (chunk: Buffer): Promise<void> => {
        execOrThrow(await redis.multi().hset(up, String(index), chunk).pexpire(up, ORPHAN_TTL_MS).exec());
        index++;
      };
      const write = async (parts: Buffer[]): Promise<void> => {
        let data = Buffer.concat([carry, ...parts]);
        while (data.length >= BODY_CHUNK) {
          await put(data.subarray(0, BODY_CHUNK));
          data = data.subarray(BODY_CHUNK);
        }
        carry = Buffer.from(data); // a copy: the rest of a larger buffer is not kept alive
      };
      return {
        write: (parts) => write(parts).catch((err: unknown) => Promise.reject(storeError(`store body ${id}`, err))),
        finish: async () => {
          try {
            if (carry.length > 0) await put(carry);
            execOrThrow(await redis.multi().rename(up, keys.blob(id)).pexpire(keys.blob(id), ORPHAN_TTL_MS).exec());
            await this.store.confirmReplicas(`store body ${id}`);
          } catch (err) {
            throw storeError(`store body ${id}`, err);
          }
          return REDIS_BODY_REF + id;
        },
        abort: async () => {
          await redis.del(up);
        },
      };
    });
  }

  async *read(ref: string, offset: number, size: number, chunk: number): AsyncIterable<Uint8Array> {
    const key = this.keyOf(ref);
    for (let pos = offset; pos < size; ) {
      const index = Math.floor(pos / BODY_CHUNK);
      let data: Buffer | null;
      try {
        data = await this.store.redis.hgetBuffer(key, String(index));
      } catch (err) {
        throw storeError(`read body ${ref}`, err);
      }
      if (data === null) throw storeError(`read body ${ref}`, new Error(`chunk ${index} missing`));
      for (let at = pos - index * BODY_CHUNK; at < data.length && pos < size; ) {
        const n = Math.min(chunk, data.length - at, size - pos);
        yield data.subarray(at, at + n);
        at += n;
        pos += n;
      }
      if (pos < Math.min(size, (index + 1) * BODY_CHUNK)) throw storeError(`read body ${ref}`, new Error('shorter than its size'));
    }
  }

  async remove(ref: string): Promise<void> {
    if (!ref.startsWith(REDIS_BODY_REF)) return;
    try {
      await this.store.redis.del(this.keyOf(ref));
    } catch (err) {
      throw storeError(`remove body ${ref}`, err);
    }
  }

  private keyOf(ref: string): string {
    if (!ref.startsWith(REDIS_BODY_REF)) throw storeError(`read body ${ref}`, new Error('not a Redis body reference'));
    return this.store.keys.blob(ref.slice(REDIS_BODY_REF.length));
  }
}
