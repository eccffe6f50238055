import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { describe, expect, it, onTestFinished } from 'vitest';
import { cliOk, waitFor } from '../helpers/cli.js';
import { owners, posters, recordingAgent, startCluster } from '../helpers/cluster.js';
import { sentinelUnavailableReason, startRedis, type PrivateRedis } from '../helpers/redis.js';

const why = sentinelUnavailableReason();
if (why) console.log(`skipping the cluster Sentinel failover test: ${why}`);

function client(r: PrivateRedis): Redis {
  const c = new Redis({ host: r.host, port: r.port, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  c.on('error', () => {});
  onTestFinished(() => void c.disconnect());
  return c;
}

describe.skipIf(why !== undefined)('a cluster on Redis under Sentinel', () => {
  it('primary SIGKILLed under load with --redis-replicas 1: the nodes follow the new primary by themselves, 0 acknowledged messages lost', async () => {
    // One primary, one replica, three sentinels on loopback.
    const primary = await startRedis();
    onTestFinished(() => primary.dispose());
    const replica = await startRedis({ extra: [`replicaof ${primary.host} ${primary.port}`] });
    onTestFinished(() => replica.dispose());
    const r = client(replica);
    await waitFor(async () => ((await r.info('replication')).includes('master_link_status:up') ? true : undefined), 30_000, 'the replica to sync');
    const sentinels: PrivateRedis[] = [];
    for (let i = 0; i < 3; i++) {
      const s = await startRedis({
        sentinel: true,
        extra: [`sentinel monitor main ${primary.host} ${primary.port} 2`, 'sentinel down-after-milliseconds main 1000', 'sentinel failover-timeout main 10000', 'sentinel parallel-syncs main 1'],
      });
      onTestFinished(() => s.dispose());
      sentinels.push(s);
    }
    for (const s of sentinels) {
      const c = client(s);
      await waitFor(async () => {
        const [master] = (await c.call('SENTINEL', 'masters')) as string[][];
        const f = Object.fromEntries(master!.flatMap((v, i, a) => (i % 2 === 0 ? [[v, a[i + 1]]] : [])));
        return Number(f['num-other-sentinels']) === 2 && Number(f['num-slaves']) === 1 ? true : undefined;
      }, 30_000, 'sentinels to meet');
    }
    const url = `redis-sentinel://${sentinels.map((s) => `${s.host}:${s.port}`).join(',')}/main`;

    const c = await startCluster({ nodes: 3, url, nodeArgs: ['--redis-replicas', '1'] });
    const token = await cliOk(['relay', 'token', 'add', 'web', '--store', url]);
    const devices = ['till1', 'till2', 'till3'];
    const agents = new Map(await Promise.all(devices.map(async (d) => [d, await recordingAgent(c, d)] as const)));
    await waitFor(async () => ([...(await owners(c.client, devices)).values()].every((o) => o.node) ? true : undefined), 60_000, 'every agent to have a session');

    const load = posters(c, token, devices);
    await sleep(3_000);
    await primary.kill();
    const killedAt = Date.now();
    const s0 = client(sentinels[0]!);
    await waitFor(async () => {
      const addr = (await s0.call('SENTINEL', 'get-master-addr-by-name', 'main')) as string[];
      return Number(addr[1]) === replica.port ? true : undefined;
    }, 60_000, 'the sentinels to promote the replica');
    console.log(`replica promoted ${Date.now() - killedAt} ms after the primary was killed`);
    // The old primary comes back as the new primary's replica: each 202 can be confirmed by WAIT 1 again.
    await primary.restart();
    const t = Date.now();
    await waitFor(() => {
      const after = load.outcomes.filter((o) => o.sentAt > t && o.status === 202);
      return new Set(after.map((o) => o.device)).size === devices.length && after.length >= 30 ? true : undefined;
    }, 90_000, 'every node taking messages again');
    await load.stop();

    const acked = load.outcomes.filter((o) => o.status === 202);
    const refused = load.outcomes.filter((o) => o.status === 503);
    console.log(`${load.outcomes.length} POSTs: ${acked.length} acknowledged, ${refused.length} answered 503 during the failover`);
    expect(load.outcomes.filter((o) => o.status !== 202 && o.status !== 503)).toEqual([]);
    for (const o of refused) expect(o.code).toBe('DW_STORE_DOWN');
    const handled = (o: { device: string; id?: string }) => agents.get(o.device)!.runs().some((x) => x.id === o.id);
    await waitFor(() => (acked.every(handled) ? true : undefined), 300_000, `all ${acked.length} acknowledged handled`);
    await sleep(2_000);
    // Every acknowledged message handled exactly once, bytes intact. A 503 may come after the write reached the
    // old primary but before WAIT 1 confirmed it (the failover cut in): such a message may be delivered too
    // (once) — the sender, told to retry, finds it by its Idempotency-Key.
    let late = 0;
    for (const d of devices) {
      const mine = acked.filter((o) => o.device === d);
      const runs = agents.get(d)!.runs();
      const ids = runs.map((x) => x.id);
      expect(new Set(ids).size).toBe(ids.length);
      for (const o of mine) expect(ids).toContain(o.id);
      const sha = new Map([...mine, ...refused.filter((o) => o.device === d)].map((o) => [o.id ?? '', o.sha]));
      for (const x of runs) {
        if (!mine.some((o) => o.id === x.id)) late++;
        if (sha.has(x.id)) expect(x.sha).toBe(sha.get(x.id));
      }
    }
    console.log(`${late} messages answered 503 during the failover were stored all the same and delivered once`);
    const nodes = JSON.parse(await cliOk(['relay', 'nodes', '--json', '--store', url])) as { name: string; state: string }[];
    expect(nodes.map((n) => n.state)).toEqual(['alive', 'alive', 'alive']);
    for (const a of agents.values()) await a.proc.kill();
  }, 600_000);
});
