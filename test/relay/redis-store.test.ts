import { basename } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { openRedisStore } from '../../src/relay/store/redis/index.js';
import { freePort, redisUnavailableReason, startRedis, type PrivateRedis } from '../helpers/redis.js';
import { eventContract, newMessage, storeContract } from './store-contract.js';

const why = redisUnavailableReason();
if (why) console.log(`skipping the Redis store tests: ${why}`);

describe.skipIf(why !== undefined)('Redis store', () => {
  let shared: PrivateRedis;
  beforeAll(async () => {
    shared = await startRedis();
  }, 30_000);
  afterAll(async () => {
    await shared?.dispose();
  });
  // Each test's temp dir names its own key prefix: tests share the server, never their keys.
  const open = (dir: string) => openRedisStore({ target: server(shared), prefix: `t:${basename(dir)}:` });
  storeContract('redis', open);
  eventContract('redis', open);
});

const server = (r: PrivateRedis) => ({ kind: 'server' as const, host: r.host, port: r.port });

/** Calls `fn` until it resolves (bounded), returning its value. */
async function eventually<T>(fn: () => Promise<T>, tries = 200, delayMs = 100): Promise<T> {
  let last: unknown;
  for (let i = 0; i < tries; i++) {
    try {
      return await fn();
    } catch (err) {
      last = err;
      await sleep(delayMs);
    }
  }
  throw last;
}

describe.skipIf(why !== undefined)('Redis store: durability and outages', () => {
  it('refuses a server that does not fsync every write, naming the settings; runs with unsafe and warns', async () => {
    const r = await startRedis({ durable: false });
    onTestFinished(() => r.dispose());
    const err = await openRedisStore({ target: server(r) }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'DW_STORE_UNSAFE' });
    expect((err as Error).message).toMatch(/appendonly yes/);
    expect((err as Error).message).toMatch(/appendfsync always/);
    const lines: string[] = [];
    const log = pino({ level: 'warn' }, { write: (l: string) => void lines.push(l) });
    const store = await openRedisStore({ target: server(r), unsafe: true, log });
    onTestFinished(() => store.close());
    expect(lines.map((l) => JSON.parse(l) as { level: number; appendonly: string })).toEqual([
      expect.objectContaining({ level: 40, appendonly: 'no', appendfsync: 'everysec' }),
    ]);
    await expect(store.enqueue(newMessage())).resolves.toMatchObject({ created: true });
  });

  it('fails with DW_STORE_DOWN when no Redis answers at open', async () => {
    const port = await freePort();
    await expect(openRedisStore({ target: { kind: 'server', host: '127.0.0.1', port }, connectTimeoutMs: 1_000 })).rejects.toMatchObject({
      code: 'DW_STORE_DOWN',
    });
  });

  it('with replicas: 1 and no replica, a write is not acknowledged (DW_STORE_DOWN)', async () => {
    const r = await startRedis();
    onTestFinished(() => r.dispose());
    const store = await openRedisStore({ target: server(r), replicas: 1, replicaTimeoutMs: 300 });
    onTestFinished(() => store.close());
    await expect(store.enqueue(newMessage())).rejects.toMatchObject({ code: 'DW_STORE_DOWN' });
  });

  it('redis-server SIGKILLed and restarted: DW_STORE_DOWN while away, then recovers; nothing acknowledged lost', async () => {
    const r = await startRedis();
    onTestFinished(() => r.dispose());
    const store = await openRedisStore({ target: server(r), commandTimeoutMs: 2_000 });
    onTestFinished(() => store.close());
    await store.createDevice({ name: 'shop1', createdAt: 1 });

    // A writer that keeps enqueueing through the outage; it remembers what was acknowledged.
    const acked: string[] = [];
    const refused: string[] = [];
    let stop = false;
    const writer = (async () => {
      for (let i = 0; !stop && i < 100_000; i++) {
        const m = newMessage({ id: `k-${i}`, to: 'shop1' });
        try {
          await store.enqueue(m);
          acked.push(m.id);
        } catch (err) {
          expect(err).toMatchObject({ code: 'DW_STORE_DOWN' });
          refused.push(m.id);
          await sleep(20);
        }
      }
    })();
    await eventually(async () => {
      if (acked.length < 200) throw new Error('not yet');
    });
    await r.kill();
    const ackedAtKill = acked.length;
    await expect(store.getMessage(acked[0]!)).rejects.toMatchObject({ code: 'DW_STORE_DOWN' });
    await expect(store.enqueue(newMessage())).rejects.toMatchObject({ code: 'DW_STORE_DOWN' });
    await eventually(async () => {
      if (refused.length < 5) throw new Error('not yet');
    });
    await r.restart();
    // The client reconnects by itself: calls work again without reopening the store.
    await eventually(() => store.countPending('shop1'));
    const before = acked.length;
    await eventually(async () => {
      if (acked.length < before + 50) throw new Error('not yet');
    });
    stop = true;
    await writer;

    expect(ackedAtKill).toBeGreaterThanOrEqual(200);
    expect(refused.length).toBeGreaterThanOrEqual(5);
    const pending = new Set((await store.pending('shop1', 0, 1_000_000)).map((m) => m.id));
    for (const id of acked) expect(pending.has(id), id).toBe(true);
    // Its event log is whole too: one message.queued per stored message, seqs increasing.
    const events = await store.eventsAfter(0, 1_000_000);
    const queuedIds = events.filter((e) => e.type === 'message.queued').map((e) => e.messageId);
    for (const id of acked) expect(queuedIds).toContain(id);
    expect(events.map((e) => e.seq)).toEqual([...events.map((e) => e.seq)].sort((a, b) => a - b));
  }, 60_000);
});
