import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { describe, expect, it, onTestFinished } from 'vitest';
import { openStore } from '../../src/relay/store/open.js';
import type { RedisStore } from '../../src/relay/store/redis/index.js';
import { sentinelUnavailableReason, startRedis, type PrivateRedis } from '../helpers/redis.js';
import { newMessage } from './store-contract.js';

const why = sentinelUnavailableReason();
if (why) console.log(`skipping the Sentinel failover test: ${why}`);

/** Polls `check` until it returns a value (bounded), else fails naming `what`. */
async function until<T>(what: string, check: () => Promise<T | undefined>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const v = await check();
      if (v !== undefined) return v;
    } catch {
      // not yet
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

function client(r: PrivateRedis): Redis {
  const c = new Redis({ host: r.host, port: r.port, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  c.on('error', () => {});
  onTestFinished(() => void c.disconnect());
  return c;
}

describe.skipIf(why !== undefined)('Redis store under Sentinel', () => {
  it('follows a failover after the primary is SIGKILLed; with replicas: 1 nothing acknowledged is lost', async () => {
    const primary = await startRedis();
    onTestFinished(() => primary.dispose());
    const replica = await startRedis({ extra: [`replicaof ${primary.host} ${primary.port}`] });
    onTestFinished(() => replica.dispose());
    const r = client(replica);
    await until('the replica to sync', async () => ((await r.info('replication')).includes('master_link_status:up') ? true : undefined));

    const sentinels: PrivateRedis[] = [];
    for (let i = 0; i < 3; i++) {
      const s = await startRedis({
        sentinel: true,
        extra: [
          `sentinel monitor mymaster ${primary.host} ${primary.port} 2`,
          'sentinel down-after-milliseconds mymaster 1000',
          'sentinel failover-timeout mymaster 10000',
          'sentinel parallel-syncs mymaster 1',
        ],
      });
      onTestFinished(() => s.dispose());
      sentinels.push(s);
    }
    // Every sentinel knows the replica and the two other sentinels before anything fails.
    for (const s of sentinels) {
      const c = client(s);
      await until('sentinels to meet', async () => {
        const [master] = (await c.call('SENTINEL', 'masters')) as string[][];
        const f = Object.fromEntries(master!.flatMap((v, i, a) => (i % 2 === 0 ? [[v, a[i + 1]]] : [])));
        return Number(f['num-other-sentinels']) === 2 && Number(f['num-slaves']) === 1 ? true : undefined;
      });
    }

    const url = `redis-sentinel://${sentinels.map((s) => `${s.host}:${s.port}`).join(',')}/mymaster`;
    const store = (await openStore(url, { replicas: 1, replicaTimeoutMs: 1_000, commandTimeoutMs: 2_000 })) as RedisStore;
    onTestFinished(() => store.close());
    await store.createDevice({ name: 'shop1', createdAt: 1 });

    const acked: string[] = [];
    const refused: string[] = [];
    let stop = false;
    const writer = (async () => {
      for (let i = 0; !stop && i < 100_000; i++) {
        const m = newMessage({ id: `f-${i}`, to: 'shop1' });
        try {
          await store.enqueue(m);
          acked.push(m.id);
        } catch (err) {
          expect(err).toMatchObject({ code: 'DW_STORE_DOWN' });
          refused.push(m.id);
          await sleep(50);
        }
      }
    })();
    await until('writes before the failure', async () => (acked.length >= 100 ? true : undefined));
    await primary.kill();
    const ackedAtKill = acked.length;

    const s0 = client(sentinels[0]!);
    await until('the sentinels to promote the replica', async () => {
      const addr = (await s0.call('SENTINEL', 'get-master-addr-by-name', 'mymaster')) as string[];
      return Number(addr[1]) === replica.port ? true : undefined;
    });
    // The old primary comes back (its AOF intact) and the sentinels make it the new primary's replica:
    // writes can be acknowledged by one replica again.
    await primary.restart();
    const afterFailover = acked.length;
    await until('writes acknowledged after the failover', async () => (acked.length >= afterFailover + 100 ? true : undefined), 60_000);
    stop = true;
    await writer;

    console.log(`sentinel failover: ${ackedAtKill} acknowledged before the kill, ${refused.length} refused (DW_STORE_DOWN) during it, ${acked.length} acknowledged in all`);
    expect(refused.length).toBeGreaterThan(0);
    const r2 = client(replica);
    expect((await r2.info('replication')).includes('role:master')).toBe(true);
    const stored = new Set((await store.pending('shop1', 0, 1_000_000)).map((m) => m.id));
    const lost = acked.filter((id) => !stored.has(id));
    expect(lost).toEqual([]);
    // Event seqs stay monotonic across the failover (the counter lives in the replicated data).
    const seqs = (await store.eventsAfter(0, 1_000_000)).map((e) => e.seq);
    expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
    expect(new Set(seqs).size).toBe(seqs.length);
  }, 120_000);
});
