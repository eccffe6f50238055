import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import v8 from 'node:v8';
import vm from 'node:vm';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { INLINE_MAX } from '../../src/relay/body-storage.js';
import { BODY_CHUNK, ORPHAN_TTL_MS, RedisBodies } from '../../src/relay/store/redis/bodies.js';
import { openRedisStore, type RedisStore } from '../../src/relay/store/redis/index.js';
import { redisUnavailableReason, startRedis, type PrivateRedis } from '../helpers/redis.js';
import { newMessage } from './store-contract.js';

const why = redisUnavailableReason();
if (why) console.log(`skipping the Redis body storage tests: ${why}`);

const MiB = 1024 * 1024;

// A collector that can be run on demand, so that the memory figures below count live bytes, not garbage.
v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as (o: { type: 'major'; execution: 'sync' }) => void;
const live = (): number => {
  // Twice, synchronously: a buffer's memory is given back by the collection after the one that found it dead.
  gc({ type: 'major', execution: 'sync' });
  gc({ type: 'major', execution: 'sync' });
  return process.memoryUsage().arrayBuffers;
};

describe.skipIf(why !== undefined)('large bodies in Redis', () => {
  let server: PrivateRedis;
  let store: RedisStore;
  let bodies: RedisBodies;
  beforeAll(async () => {
    server = await startRedis();
    store = await openRedisStore({ target: { kind: 'server', host: server.host, port: server.port }, bodyRetentionMs: 60_000 });
    bodies = new RedisBodies(store);
  }, 30_000);
  afterAll(async () => {
    await store?.close();
    await server?.dispose();
  });

  it('stores a 50 MiB body and reads it back, from the start and from an offset, never holding it whole', async () => {
    const size = 50 * MiB + 12_345;
    const sent = createHash('sha256');
    let peak = 0;
    const base = live();
    async function* upload() {
      for (let at = 0, n = 0; at < size; n++) {
        const piece = randomBytes(Math.min(64 * 1024 + (n % 7) * 1000, size - at));
        sent.update(piece);
        at += piece.length;
        if (n % 64 === 0) peak = Math.max(peak, live() - base);
        yield piece;
      }
    }
    const received = await bodies.receive(upload(), 'big-1', 1 << 30);
    const sha = sent.digest('hex');
    expect(received).toEqual({ size, sha256: sha, bodyPath: 'redis-blob:big-1' });
    expect(await store.redis.hlen(store.keys.blob('big-1'))).toBe(Math.ceil(size / BODY_CHUNK));
    expect(await store.redis.exists(store.keys.blobUpload('big-1'))).toBe(0);

    const back = createHash('sha256');
    let got = 0;
    let pieces = 0;
    for await (const piece of bodies.read(received.bodyPath!, 0, size, 256 * 1024)) {
      expect(piece.byteLength).toBeLessThanOrEqual(256 * 1024);
      back.update(piece);
      got += piece.byteLength;
      if (++pieces % 16 === 0) peak = Math.max(peak, live() - base);
    }
    expect(got).toBe(size);
    expect(back.digest('hex')).toBe(sha);
    console.log(`50 MiB body through Redis: peak live buffers ${(peak / MiB).toFixed(1)} MiB above the start`);
    expect(peak).toBeLessThan(16 * MiB);

    // A resumed delivery reads from the bytes the agent has: the tail equals the tail of a full read.
    const offset = 7 * MiB + 4_321;
    const tail = createHash('sha256');
    let tailBytes = 0;
    for await (const piece of bodies.read(received.bodyPath!, offset, size, 256 * 1024)) {
      tail.update(piece);
      tailBytes += piece.byteLength;
    }
    expect(tailBytes).toBe(size - offset);
    const full = createHash('sha256');
    let skip = offset;
    for await (const piece of bodies.read(received.bodyPath!, 0, size, 1 * MiB)) {
      if (skip >= piece.byteLength) {
        skip -= piece.byteLength;
        continue;
      }
      full.update(piece.subarray(skip));
      skip = 0;
    }
    expect(tail.digest('hex')).toBe(full.digest('hex'));
  }, 120_000);

  it('keeps small bodies inline, refuses one over the limit and leaves nothing behind', async () => {
    const small = randomBytes(INLINE_MAX);
    expect(await bodies.receive(Readable.from([small]), 'small-1', 1 << 30)).toEqual({
      size: small.length,
      sha256: createHash('sha256').update(small).digest('hex'),
      body: new Uint8Array(small),
    });
    await expect(bodies.receive(Readable.from([randomBytes(MiB), randomBytes(MiB), randomBytes(MiB)]), 'over-1', 2 * MiB)).rejects.toMatchObject({
      code: 'DW_TOO_LARGE',
    });
    expect(await store.redis.exists(store.keys.blobUpload('over-1'), store.keys.blob('over-1'))).toBe(0);
  });

  it('a body expires unless a message takes it; it gets the retention when its message ends', async () => {
    const orphan = await bodies.receive(Readable.from([randomBytes(2 * MiB)]), 'orphan-1', 1 << 30);
    const ttl = await store.redis.pttl(store.keys.blob('orphan-1'));
    expect(ttl).toBeGreaterThan(0);
    expect(ttl).toBeLessThanOrEqual(ORPHAN_TTL_MS);
    expect(orphan.bodyPath).toBe('redis-blob:orphan-1');

    const up = await bodies.receive(Readable.from([randomBytes(3 * MiB)]), 'taken-1', 1 << 30);
    const m = newMessage({ id: 'taken-1', bodyPath: up.bodyPath!, size: up.size, sha256: up.sha256 });
    await store.enqueue(m);
    expect(await store.redis.pttl(store.keys.blob('taken-1'))).toBe(-1); // permanent while the message lives
    await store.setStatus([{ id: 'taken-1', status: 'handled', at: 5 }]);
    const retention = await store.redis.pttl(store.keys.blob('taken-1'));
    expect(retention).toBeGreaterThan(0);
    expect(retention).toBeLessThanOrEqual(60_000);

    // A message whose body is gone is refused, not stored undeliverable.
    await expect(store.enqueue(newMessage({ id: 'ghost-1', bodyPath: 'redis-blob:nothing-here' }))).rejects.toMatchObject({
      code: 'DW_STORE_INVALID',
    });
    await bodies.remove(orphan.bodyPath!);
    expect(await store.redis.exists(store.keys.blob('orphan-1'))).toBe(0);
  });

  it('a body that fails mid-stream leaves no upload behind', async () => {
    async function* broken() {
      yield randomBytes(MiB);
      yield randomBytes(MiB + 5);
      throw new Error('client went away');
    }
    await expect(bodies.receive(broken(), 'broken-1', 1 << 30)).rejects.toThrow('client went away');
    expect(await store.redis.exists(store.keys.blobUpload('broken-1'), store.keys.blob('broken-1'))).toBe(0);
  });
});
