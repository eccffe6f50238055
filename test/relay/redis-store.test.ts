import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { openRedisStore, type Wakeup } from '../../src/relay/store/redis/index.js';
import { findTool } from '../helpers/cups.js';
import { openStore } from '../../src/relay/store/open.js';
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

describe.skipIf(why !== undefined)('Redis store: several nodes on one Redis', () => {
  it('two nodes see one queue, one event log with one seq, and each other\'s wake-ups', async () => {
    const r = await startRedis();
    onTestFinished(() => r.dispose());
    const a = await openRedisStore({ target: server(r) });
    onTestFinished(() => a.close());
    const b = await openRedisStore({ target: server(r) });
    onTestFinished(() => b.close());

    const heard: Wakeup[] = [];
    const unsubscribe = await b.wakeups.subscribe((w) => heard.push(w));
    await a.createDevice({ name: 'shop1', createdAt: 1 });
    // Interleaved writes from both nodes.
    const ids: string[] = [];
    for (let i = 0; i < 20; i++) {
      const node = i % 2 === 0 ? a : b;
      const { message } = await node.enqueue(newMessage({ id: `n-${i}`, to: 'shop1' }));
      ids.push(message.id);
    }
    await b.setStatus([{ id: 'n-0', status: 'sent', at: 2 }]);
    await a.setStatus([{ id: 'n-0', status: 'received', at: 3 }]);
    await a.appendEvents([{ type: 'device.online', device: 'shop1', at: 4, data: { device: { name: 'shop1', online: true } } }]);

    expect((await b.pending('shop1', 0, 100)).map((m) => m.id)).toEqual(ids.slice(1));
    expect(await a.getMessage('n-0')).toMatchObject({ status: 'received' });
    const fromA = await a.eventsAfter(0, 1_000);
    expect(await b.eventsAfter(0, 1_000)).toEqual(fromA);
    expect(fromA.map((e) => e.seq)).toEqual(fromA.map((_, i) => i + 1));
    expect(await b.lastEventSeq()).toBe(fromA.length);
    // Every event was a wake-up on the device's channel, in order, whichever node wrote it.
    await eventually(async () => {
      if (heard.length < fromA.length) throw new Error('not yet');
    });
    expect(heard).toEqual(
      fromA.map((e) => ({ device: 'shop1', seq: e.seq, type: e.type, ...(e.messageId !== undefined ? { messageId: e.messageId } : {}) })),
    );
    unsubscribe();
    await a.enqueue(newMessage({ to: 'shop1' }));
    await sleep(100);
    expect(heard).toHaveLength(fromA.length);
  });

  it('wake-ups come back by themselves after Redis was restarted', async () => {
    const r = await startRedis();
    onTestFinished(() => r.dispose());
    const store = await openRedisStore({ target: server(r) });
    onTestFinished(() => store.close());
    const heard: Wakeup[] = [];
    await store.wakeups.subscribe((w) => heard.push(w));
    await store.enqueue(newMessage({ id: 'wake-1', to: 'shop1' }));
    await eventually(async () => {
      if (heard.length < 1) throw new Error('not yet');
    });
    await r.kill();
    await r.restart();
    // Published after the subscriber is back (it re-subscribes on reconnection); earlier ones are missed,
    // which is why a node catches up from eventsAfter(last seq seen).
    await eventually(async () => {
      await store.enqueue(newMessage({ to: 'shop1' }));
      if (!heard.some((w) => w.seq > 1)) throw new Error('not yet');
    });
    expect(heard[0]).toEqual({ device: 'shop1', seq: 1, type: 'message.queued', messageId: 'wake-1' });
  }, 60_000);

  it('a server that stops answering (SIGSTOP) gives DW_STORE_DOWN after the command timeout, never a hang', async () => {
    const r = await startRedis();
    onTestFinished(() => r.dispose());
    const store = await openRedisStore({ target: server(r), commandTimeoutMs: 500 });
    onTestFinished(() => store.close());
    const pid = r.pid()!;
    process.kill(pid, 'SIGSTOP');
    let resumed = false;
    onTestFinished(() => {
      if (!resumed) process.kill(pid, 'SIGCONT');
    });
    await expect(store.enqueue(newMessage({ id: 'stopped-1' }))).rejects.toMatchObject({ code: 'DW_STORE_DOWN' });
    await expect(store.countPending('shop1')).rejects.toMatchObject({ code: 'DW_STORE_DOWN' });
    process.kill(pid, 'SIGCONT');
    resumed = true;
    await expect(eventually(() => store.enqueue(newMessage({ id: 'resumed-1' })))).resolves.toMatchObject({ created: true });
  });
});

/** A private CA and a server certificate for 127.0.0.1, made with the openssl CLI. */
function makeCertificates(dir: string): { ca: string; cert: string; key: string } {
  const run = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' });
  run('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '2', '-subj', '/CN=dropwire test CA');
  run('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=127.0.0.1');
  writeFileSync(join(dir, 'ext'), 'subjectAltName=IP:127.0.0.1\n');
  run('x509', '-req', '-in', 'server.csr', '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'server.crt', '-days', '2', '-extfile', 'ext');
  return { ca: join(dir, 'ca.crt'), cert: join(dir, 'server.crt'), key: join(dir, 'server.key') };
}

const noOpenssl = findTool('openssl') === undefined ? 'openssl not installed' : undefined;
if (noOpenssl) console.log(`skipping the rediss:// test: ${noOpenssl}`);

describe.skipIf(why !== undefined || noOpenssl !== undefined)('Redis store over TLS', () => {
  it('opens rediss:// with a private CA, and refuses a certificate it cannot verify', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'dw-redis-tls-'));
    onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
    const certs = makeCertificates(dir);
    const tlsPort = await freePort();
    const r = await startRedis({
      extra: [`tls-port ${tlsPort}`, `tls-cert-file ${certs.cert}`, `tls-key-file ${certs.key}`, 'tls-auth-clients no'],
    });
    onTestFinished(() => r.dispose());
    const url = `rediss://127.0.0.1:${tlsPort}/1`;
    await expect(openStore(url, { connectTimeoutMs: 2_000 })).rejects.toMatchObject({ code: 'DW_STORE_DOWN' });
    const store = await openStore(url, { tlsCa: readFileSync(certs.ca) });
    onTestFinished(() => store.close());
    const { message } = await store.enqueue(newMessage({ id: 'tls-1' }));
    expect(await store.getMessage('tls-1')).toEqual(message);
    // Database 1 of that server, over TLS: the plain port's database 0 does not have it.
    const plain = await openRedisStore({ target: server(r) });
    onTestFinished(() => plain.close());
    expect(await plain.getMessage('tls-1')).toBeUndefined();
  });
});

describe.skipIf(why !== undefined)('Redis store: persistence and replicas', () => {
  it('a server that comes back without appendfsync always gets no writes (DW_STORE_UNSAFE) until it is fixed', async () => {
    const r = await startRedis();
    onTestFinished(() => r.dispose());
    const store = await openRedisStore({ target: server(r) });
    onTestFinished(() => store.close());
    await store.enqueue(newMessage({ id: 'before-1' }));
    // The same server restarted with a weaker setting, as a failover to a badly configured replica would be.
    const conf = join(r.dir, 'redis.conf');
    writeFileSync(conf, readFileSync(conf, 'utf8').replace('appendfsync always', 'appendfsync everysec'));
    await r.restart();
    const refused = await eventually(async () => {
      const err = await store.enqueue(newMessage({ id: 'during-1' })).then(
        () => undefined,
        (e: unknown) => e,
      );
      if ((err as { code?: string } | undefined)?.code !== 'DW_STORE_UNSAFE') throw new Error(`not yet: ${String(err)}`);
      return err as Error;
    });
    expect(refused.message).toMatch(/appendfsync always/);
    expect(await store.getMessage('during-1')).toBeUndefined();
    expect(await store.getMessage('before-1')).toMatchObject({ status: 'queued' });
    writeFileSync(conf, readFileSync(conf, 'utf8').replace('appendfsync everysec', 'appendfsync always'));
    await r.restart();
    await expect(eventually(() => store.enqueue(newMessage({ id: 'after-1' })))).resolves.toMatchObject({ created: true });
  }, 60_000);

  it('with a real replica, 500 concurrent writes are each confirmed by it, sharing few WAITs', async () => {
    const primary = await startRedis();
    onTestFinished(() => primary.dispose());
    const replica = await startRedis({ extra: [`replicaof ${primary.host} ${primary.port}`] });
    onTestFinished(() => replica.dispose());
    const store = await openRedisStore({ target: server(primary), replicas: 1, replicaTimeoutMs: 5_000 });
    onTestFinished(() => store.close());
    const replicaStore = await openRedisStore({ target: server(replica) });
    onTestFinished(() => replicaStore.close());
    // Until the replica has synced, WAIT fails (DW_STORE_DOWN) after the write: the idempotency key makes the retry safe.
    await eventually(() => store.enqueue(newMessage({ id: 'first', to: 'shop9', idempotencyKey: 'first' })));
    const messages = Array.from({ length: 500 }, (_, i) => newMessage({ id: `w-${i}`, to: 'shop9' }));
    const results = await Promise.all(messages.map((m) => store.enqueue(m)));
    expect(results.every((r) => r.created)).toBe(true);
    // Acknowledged means on the replica: read it there.
    expect(await replicaStore.countPending('shop9')).toBe(501);
    const stats = await store.redis.info('commandstats');
    const waits = Number(/cmdstat_wait:calls=(\d+)/.exec(stats)?.[1] ?? NaN);
    console.log(`500 concurrent writes with replicas: 1 used ${waits} WAIT commands`);
    expect(waits).toBeLessThan(500);
  }, 60_000);
});
