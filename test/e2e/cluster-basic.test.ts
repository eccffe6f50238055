import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { decodeEnrollmentToken } from '../../src/shared/enrollment.js';
import { Api, cli, cliOk, randomData, recordingHandler, sha256, spawnCli, tempDir, waitFor } from '../helpers/cli.js';
import { owners, startCluster, type TestCluster } from '../helpers/cluster.js';
import { redisUnavailableReason, startRedis } from '../helpers/redis.js';
import { onTestFinished } from 'vitest';

const why = redisUnavailableReason();
if (why) console.log(`skipping the cluster end-to-end tests: ${why}`);
const MiB = 1024 * 1024;

/** Enrolls `device` through the agents' front, with a recording exec rule; returns its home and runs. */
async function enrollAgent(c: TestCluster, device: string) {
  const token = await cliOk(['relay', 'device', 'add', device, '--store', c.url]);
  const home = path.join(tempDir(), device);
  await cliOk(['init', token, '--home', home, '--relay', `127.0.0.1:${c.front.port}`]);
  const rec = recordingHandler(path.dirname(home));
  const cfg = JSON.parse(fs.readFileSync(path.join(home, 'config.json'), 'utf8')) as Record<string, unknown>;
  cfg.rules = [rec.rule];
  fs.writeFileSync(path.join(home, 'config.json'), JSON.stringify(cfg, null, 2));
  return { token, home, rec };
}

/** Reads a server-sent event stream until `until` says stop (or `ms` pass). */
async function readEvents(url: string, token: string, o: { lastEventId?: number; until: (events: { id: number; type: string; data: Record<string, unknown> }[]) => boolean; ms?: number }) {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), o.ms ?? 30_000);
  const res = await fetch(url, { headers: { authorization: `Bearer ${token}`, ...(o.lastEventId !== undefined ? { 'last-event-id': String(o.lastEventId) } : {}) }, signal: ac.signal });
  const events: { id: number; type: string; data: Record<string, unknown> }[] = [];
  let buf = '';
  try {
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      buf += Buffer.from(chunk).toString();
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const f = Object.fromEntries(block.split('\n').filter((l) => !l.startsWith(':')).map((l) => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 2)]));
        if (f.id) events.push({ id: Number(f.id), type: f.event!, data: JSON.parse(f.data!) as Record<string, unknown> });
      }
      if (o.until(events)) break;
    }
  } catch (err) {
    if (!ac.signal.aborted) throw err;
  } finally {
    clearTimeout(timer);
    ac.abort();
  }
  return events;
}

describe.skipIf(why !== undefined)('a relay of three nodes on Redis', () => {
  it('cluster init, key check, nodes, tokens with every address; one relay from every node; hand-over with a partial file; remove', async () => {
    const c = await startCluster({ nodes: 3 });
    const [n1, n2, n3] = c.nodes as [TestCluster['nodes'][0], TestCluster['nodes'][0], TestCluster['nodes'][0]];

    // --- the command line -----------------------------------------------------------------------
    const again = await cli(['relay', 'cluster', 'init', '--store', c.url, '--data', path.join(c.dir, 'other'), '--public', '127.0.0.1:1']);
    expect(again.code).toBe(1);
    expect(again.stderr).toContain('DW_CLUSTER_EXISTS');
    const otherKey = path.join(c.dir, 'stranger.key');
    fs.writeFileSync(otherKey, JSON.stringify({ privateKey: '22'.repeat(32) }));
    const stranger = await cli(['relay', 'start', '--store', c.url, '--key', otherKey, '--node', 'stranger', '--data', path.join(c.dir, 'stranger'), '--listen', '127.0.0.1:0', '--http', '127.0.0.1:0']);
    expect(stranger.code).toBe(1);
    expect(stranger.stderr).toContain('DW_CLUSTER_KEY_MISMATCH');
    const empty = await cli(['relay', 'start', '--store', `${c.url}/4`, '--key', c.keyFile, '--node', 'x', '--data', path.join(c.dir, 'x'), '--listen', '127.0.0.1:0', '--http', '127.0.0.1:0']);
    expect(empty.code).toBe(1);
    expect(empty.stderr).toContain('DW_CLUSTER_NOT_INITIALISED');
    // DROPWIRE_STORE stands in for --store.
    const listed = JSON.parse(await cliOk(['relay', 'nodes', '--json'], { env: { DROPWIRE_STORE: c.url } })) as { name: string; state: string; agents: string; http: string; connected: number }[];
    expect(listed.map((n) => [n.name, n.state, n.agents, n.http])).toEqual(c.nodes.map((n) => [n.name, 'alive', `127.0.0.1:${n.agentsPort}`, n.http]));

    const shop = await enrollAgent(c, 'shop');
    expect(decodeEnrollmentToken(shop.token).relays).toEqual(c.nodes.map((n) => `127.0.0.1:${n.agentsPort}`));
    const sender = await cliOk(['relay', 'token', 'add', 'web', '--store', c.url]);
    expect(JSON.parse(await cliOk(['relay', 'token', 'list', '--json', '--store', c.url]))).toMatchObject([{ name: 'web', to: '*' }]);
    expect(JSON.parse(await cliOk(['relay', 'device', 'list', '--json', '--store', c.url]))).toMatchObject([{ name: 'shop', enrolled: true }]);
    const apis = c.nodes.map((n) => new Api(n.http, sender));

    // --- one relay: POST on each node, delivered by the node holding the session --------------------
    const agent = spawnCli(['agent', '--home', shop.home]);
    await waitFor(async () => ((await owners(c.client, ['shop'])).get('shop')!.node ? true : undefined), 20_000, 'shop to have a session');
    const holder = (await owners(c.client, ['shop'])).get('shop')!.node!;
    const sent = new Map<string, string>();
    for (const [i, api] of apis.entries()) {
      const body = randomData(1000 + i);
      const t0 = Date.now();
      const r = await api.send('shop', `hello-${i}.txt`, body);
      expect(r.status).toBe(202);
      const m = await api.until(r.json.id as string, ['handled']);
      const at = (st: string) => Date.parse((m.history as { status: string; at: string }[]).find((h) => h.status === st)!.at);
      console.log(`posted on node${i + 1}, session on ${holder}: queued -> sent ${at('sent') - at('queued')} ms (the wake-up), handled after ${Date.now() - t0} ms`);
      sent.set(r.json.id as string, sha256(body));
      expect(m.status).toBe('handled');
    }
    // The same answers from every node.
    for (const id of sent.keys()) {
      const views = await Promise.all(apis.map((a) => a.message(id)));
      for (const v of views) expect(v).toEqual(views[0]);
    }
    const devices = await Promise.all(apis.map((a) => a.get('/v1/devices')));
    for (const d of devices) expect(d.json).toMatchObject({ devices: [{ name: 'shop', online: true, queued: 0 }] });

    // A long-poll on one node wakes when another node's session finishes the message.
    const notHolder = c.nodes.filter((n) => n.name !== holder);
    const waiter = new Api(notHolder[0]!.http, sender);
    const poster = new Api(notHolder[1]!.http, sender);
    const body = randomData(4096);
    const posted = await poster.send('shop', 'wait.txt', body);
    const t0 = Date.now();
    const waited = await waiter.message(posted.json.id as string, 30);
    console.log(`?wait=30 on ${notHolder[0]!.name} answered after ${Date.now() - t0} ms with ${String(waited.status)}`);
    expect(waited.status).toBe('handled');
    expect(Date.now() - t0).toBeLessThan(25_000);
    sent.set(posted.json.id as string, sha256(body));

    // The event stream of any node, resumed on another with Last-Event-ID: no gap, no repeat.
    const first = await readEvents(`http://${n3.http}/v1/events?after=0`, sender, { until: (e) => e.filter((x) => x.type === 'message.handled').length >= 4 });
    console.log(`events from node3: ${first.map((e) => `${e.id}:${e.type}`).join(' ')}`);
    const cut = first.find((e) => e.type === 'message.received')!.id;
    const rest = await readEvents(`http://${n1.http}/v1/events`, sender, { lastEventId: cut, until: (e) => e.some((x) => x.id === first.at(-1)!.id) });
    expect(rest.map((e) => e.id)).toEqual(first.filter((e) => e.id > cut).map((e) => e.id).slice(0, rest.length));
    expect(rest.length).toBeGreaterThan(0);

    // --- hand-over: the agent comes back on another node while the first still holds its session ----
    const big = randomData(48 * MiB);
    const bigPost = await apis[0]!.send('shop', 'big.bin', big);
    expect(bigPost.status).toBe(202);
    const bigId = bigPost.json.id as string;
    // A large body lives in Redis, where every node can read it, not on the disk of the node that took it.
    expect(await c.client.exists(`dw:blob:{${bigId}}`)).toBe(1);
    expect(c.nodes.some((n) => fs.existsSync(path.join(n.data, 'blobs')) && fs.readdirSync(path.join(n.data, 'blobs'), { recursive: true }).some((f) => String(f).includes(bigId)))).toBe(false);
    const part = path.join(shop.home, 'spool', `${bigId}.part`);
    await waitFor(() => ((fs.existsSync(part) && fs.statSync(part).size > 4 * MiB) ? true : undefined), 60_000, 'part of the big file on the agent');
    await agent.kill('SIGKILL');
    const have = fs.statSync(part).size;
    const from = c.nodes.find((n) => n.name === holder)!;
    const to = c.nodes.find((n) => n.name !== holder)!;
    c.front.backends = () => [to.agentsPort];
    const again2 = spawnCli(['agent', '--home', shop.home]);
    await from.proc!.waitLog((l) => l.msg === 'session retired: the device has a session on another node now' && l.device === 'shop', 20_000);
    const done = await apis[2]!.until(bigId, ['handled'], 120_000);
    expect(done.status).toBe('handled');
    // The new node sent the file on from the bytes the agent had (history: `sent` with the offset).
    const resumedAt = (done.history as { status: string; detail?: { offset?: number } }[]).filter((h) => h.status === 'sent').map((h) => h.detail?.offset ?? 0);
    console.log(`hand-over ${from.name} -> ${to.name}: the agent had ${have} bytes; sent from offsets ${resumedAt.join(', ')}`);
    expect(Math.max(...resumedAt)).toBeGreaterThanOrEqual(have - 2 * MiB);
    expect(Math.max(...resumedAt)).toBeGreaterThan(0);
    sent.set(bigId, sha256(big));
    expect((await owners(c.client, ['shop'])).get('shop')!.node).toBe(to.name);

    // Every message handled exactly once, bytes intact.
    const runs = shop.rec.runs();
    expect(runs.map((r) => r.id).sort()).toEqual([...sent.keys()].sort());
    for (const r of runs) expect(r.sha).toBe(sent.get(r.id));

    // --- remove: every node forgets the device, its session is dropped -----------------------------
    await cliOk(['relay', 'device', 'remove', 'shop', '--store', c.url]);
    // The node that held its session dropped it (and gave up its claim).
    await waitFor(async () => ((await owners(c.client, ['shop'])).get('shop')!.node === undefined ? true : undefined), 10_000, 'session dropped');
    for (const a of apis) await waitFor(async () => ((await a.get('/v1/devices/shop')).status === 404 ? true : undefined), 10_000, 'device gone');

    // --- a node killed is shown dead after 10 s ---------------------------------------------------
    const killedAt = Date.now();
    await c.killNode(n2);
    const dead = await waitFor(async () => {
      const l = JSON.parse(await cliOk(['relay', 'nodes', '--json', '--store', c.url])) as { name: string; state: string }[];
      return l.find((n) => n.name === 'node2' && n.state === 'dead');
    }, 30_000, 'node2 shown dead');
    expect(dead).toBeDefined();
    expect(Date.now() - killedAt).toBeGreaterThanOrEqual(8_000); // heartbeats every 2 s: dead 10 s after the last one

    // A node stopped cleanly (SIGTERM) leaves the list at once and gives its sessions and lease up.
    await n3.proc!.kill('SIGTERM');
    const left = JSON.parse(await cliOk(['relay', 'nodes', '--json', '--store', c.url])) as { name: string }[];
    expect(left.map((n) => n.name)).not.toContain('node3');
    await again2.kill();
  }, 300_000);

  it('a node refuses a Redis that does not fsync every write, unless started with --unsafe-redis (then it warns)', async () => {
    const r = await startRedis({ durable: false });
    onTestFinished(() => r.dispose());
    const dir = tempDir();
    await cliOk(['relay', 'cluster', 'init', '--store', r.url, '--data', path.join(dir, 'key'), '--public', '127.0.0.1:7390']);
    const args = ['relay', 'start', '--store', r.url, '--key', path.join(dir, 'key', 'relay.key'), '--node', 'n1', '--data', path.join(dir, 'n1'), '--listen', '127.0.0.1:0', '--http', '127.0.0.1:0'];
    const refused = await cli(args);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain('DW_STORE_UNSAFE');
    const node = spawnCli([...args, '--unsafe-redis']);
    const warned = await node.waitLog((l) => l.level === 40 && /unsafe/.test(String(l.msg)), 20_000);
    expect(warned).toMatchObject({ appendfsync: 'everysec' });
    await node.waitLog((l) => l.msg === 'relay node listening', 20_000);
    await node.kill();
  });
});
