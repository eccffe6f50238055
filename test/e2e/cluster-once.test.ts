import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { Api, cliOk, spawnCli, tempDir, waitFor } from '../helpers/cli.js';
import { owners, startCluster } from '../helpers/cluster.js';
import { redisUnavailableReason } from '../helpers/redis.js';
import { WebhookReceiver } from '../helpers/webhook.js';

const why = redisUnavailableReason();
if (why) console.log(`skipping the once-per-cluster test: ${why}`);

describe.skipIf(why !== undefined)('once per cluster', () => {
  it('webhooks, overdue and expiry fire once each with three nodes up, and again once after the node running them is killed; presence told once, also for a node that dies', async () => {
    const c = await startCluster({ nodes: 3 });
    const enroll = await cliOk(['relay', 'device', 'add', 'shop', '--store', c.url]);
    await cliOk(['relay', 'device', 'add', 'kiosk', '--store', c.url]); // never connects: its messages go overdue
    const home = path.join(tempDir(), 'shop');
    await cliOk(['init', enroll, '--home', home, '--relay', `127.0.0.1:${c.front.port}`]);
    let agent = spawnCli(['agent', '--home', home]);
    await waitFor(async () => ((await owners(c.client, ['shop'])).get('shop')!.node ? true : undefined), 20_000, 'shop to have a session');
    await new Promise((r) => setTimeout(r, 2_000)); // the enrollment's short session is over and told
    const hook = new WebhookReceiver();
    await hook.start();
    const [token] = (await cliOk(['relay', 'token', 'add', 'site', '--webhook', hook.url, '--store', c.url])).split('\n');
    await new Promise((r) => setTimeout(r, 2_500)); // nodes re-read tokens every 2 s
    const apis = c.nodes.map((n) => new Api(n.http, token!));

    const post = async (i: number, to: string, query = '') => {
      const r = await apis[i % 3]!.send(to, `f${i}.txt`, `file ${i}`, {}, query);
      expect(r.status).toBe(202);
      return r.json.id as string;
    };
    const round = async (base: number) => {
      const shop = [];
      for (let i = 0; i < 6; i++) shop.push(await post(base + i, 'shop'));
      const overdue = [await post(base + 10, 'kiosk', '&deadline=1'), await post(base + 11, 'kiosk', '&deadline=1')];
      const expired = [await post(base + 12, 'kiosk', '&ttl=1&deadline=3600')];
      for (const id of shop) await waitFor(() => (hook.of('message.handled', id).length > 0 ? true : undefined), 30_000, `webhook handled ${id}`);
      for (const id of overdue) await waitFor(() => (hook.of('message.overdue', id).length > 0 ? true : undefined), 30_000, `webhook overdue ${id}`);
      for (const id of expired) await waitFor(() => (hook.of('message.expired', id).length > 0 ? true : undefined), 30_000, `webhook expired ${id}`);
      await new Promise((r) => setTimeout(r, 4_000)); // a second delivery from another node would arrive by now
      for (const id of shop) {
        expect(hook.of('message.received', id)).toHaveLength(1);
        expect(hook.of('message.handled', id)).toHaveLength(1);
      }
      for (const id of overdue) expect(hook.of('message.overdue', id)).toHaveLength(1);
      for (const id of expired) expect(hook.of('message.expired', id)).toHaveLength(1);
      return { shop, overdue, expired };
    };

    await round(0);
    // No event id delivered twice, and in order.
    const ids = hook.received.map((r) => r.body.id);
    expect(new Set(ids).size).toBe(ids.length);
    expect([...ids].sort((a, b) => a - b)).toEqual(ids);

    // The node running the once-per-cluster work dies, with the shop's session on it: another node takes
    // the work over within seconds, the agent moves, and nothing is told twice nor lost.
    const holder = (await c.client.get('dw:lease:background'))!.split('|')[0]!;
    const holderNode = c.nodes.find((n) => n.name === holder)!;
    if ((await owners(c.client, ['shop'])).get('shop')!.node !== holder) {
      c.front.backends = () => [holderNode.agentsPort];
      await agent.kill();
      agent = spawnCli(['agent', '--home', home]);
      await waitFor(async () => ((await owners(c.client, ['shop'])).get('shop')!.node === holder ? true : undefined), 20_000, 'shop on the lease holder');
      c.front.backends = () => c.nodes.filter((n) => n.proc).map((n) => n.agentsPort);
    }
    await new Promise((r) => setTimeout(r, 2_000)); // presence of that move told (if the agent was away > 1.5 s)
    const offlineBefore = hook.of('device.offline', 'shop').length;
    const killedAt = Date.now();
    await c.killNode(c.nodes.find((n) => n.name === holder)!);
    const next = await waitFor(async () => {
      const v = await c.client.get('dw:lease:background');
      return v && !v.startsWith(`${holder}|`) ? v : undefined;
    }, 30_000, 'another node to take the lease');
    console.log(`${holder} killed; ${next.split('|')[0]} took the once-per-cluster work over after ${Date.now() - killedAt} ms`);
    const live = c.nodes.filter((n) => n.proc);
    const apisLeft = live.map((n) => new Api(n.http, token!));
    apis.splice(0, 3, apisLeft[0]!, apisLeft[1]!, apisLeft[0]!);
    const before = hook.received.length;
    await round(100);
    const after = hook.received.slice(before).map((r) => r.body.id);
    expect(new Set(after).size).toBe(after.length);

    // Presence told once for the cluster: the shop agent may have moved to another node, but it never went offline.
    expect(hook.of('device.offline', 'shop')).toHaveLength(offlineBefore);
    await agent.kill();
    await waitFor(() => (hook.of('device.offline', 'shop').length === offlineBefore + 1 ? true : undefined), 30_000, 'shop offline');
    await new Promise((r) => setTimeout(r, 3_000));
    expect(hook.of('device.offline', 'shop')).toHaveLength(offlineBefore + 1);
    expect(hook.of('device.online', 'shop')).toHaveLength(offlineBefore);

    // A node stopped cleanly (SIGTERM) with the agent on it (not the node running the reaper): the agent
    // moves, and no presence event is told.
    const runner = (await c.client.get('dw:lease:background'))!.split('|')[0]!;
    const holding = c.nodes.find((n) => n.proc && n.name !== runner)!;
    c.front.backends = () => [holding.agentsPort];
    agent = spawnCli(['agent', '--home', home]);
    await waitFor(() => (hook.of('device.online', 'shop').length === offlineBefore + 1 ? true : undefined), 30_000, 'shop online again');
    expect((await owners(c.client, ['shop'])).get('shop')!.node).toBe(holding.name);
    const eventsBefore = hook.received.length;
    // The agent finds no other node for 3 s (longer than a reaper's round): still no event.
    c.front.backends = () => [holding.agentsPort];
    await holding.proc!.kill('SIGTERM');
    holding.proc = undefined;
    await new Promise((r) => setTimeout(r, 3_000));
    c.front.backends = () => c.nodes.filter((n) => n.proc).map((n) => n.agentsPort);
    await waitFor(async () => ((await owners(c.client, ['shop'])).get('shop')!.node ? true : undefined), 20_000, 'shop on another node');
    await new Promise((r) => setTimeout(r, 8_000)); // past the grace for a stopped node's devices
    expect(hook.received.slice(eventsBefore).filter((r) => r.body.type.startsWith('device.'))).toEqual([]);
    await c.startNode(holding);

    // A node dies with an agent that never comes back: the node running the once-per-cluster work tells
    // device.offline once, after the dead node's heartbeats have been missing for 10 s.
    const on = (await owners(c.client, ['shop'])).get('shop')!.node!;
    await agent.kill('SIGKILL');
    const diedAt = Date.now();
    await c.killNode(c.nodes.find((n) => n.name === on)!);
    await waitFor(() => (hook.of('device.offline', 'shop').length === offlineBefore + 2 ? true : undefined), 40_000, 'shop offline after its node died');
    console.log(`${on} died with shop on it: device.offline told ${Date.now() - diedAt} ms later`);
    await new Promise((r) => setTimeout(r, 4_000));
    expect(hook.of('device.offline', 'shop')).toHaveLength(offlineBefore + 2);
    console.log(`webhook events: ${hook.received.length}, each once`);
  }, 300_000);
});
