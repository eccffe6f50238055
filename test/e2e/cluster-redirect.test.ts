/**
 * Issue 13: moving agents between relay nodes without a gap (PROTOCOL 7.16, 7.17): `relay drain`, `relay move`,
 * `relay rebalance`, with three (four) real nodes, a private redis-server and real agent processes on loopback.
 * The drain runs 200 agents: 12 agent processes (spool, journal, handlers: the exactly-once checks) and 188 light
 * agents in the test process (bench/load-agents.ts, following REDIRECT with src/agent/redirect.ts); the other
 * tests use a few processes. `bench/redirect.ts` drains 2,000 idle agents.
 */
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it, onTestFinished } from 'vitest';
import { deviceKeys, deviceName } from '../../bench/common.js';
import { LightAgent } from '../../bench/load-agents.js';
import { fromHex, toHex } from '../../src/protocol/bytes.js';
import { nodeCrypto } from '../../src/protocol/crypto-node.js';
import { openClusterStore } from '../../src/relay/cluster/store.js';
import { Api, cli, cliOk, randomData, recordingHandler, sha256, spawnCli, tempDir, waitFor, type Proc } from '../helpers/cli.js';
import { owners, startCluster, type NodeHandle, type TestCluster } from '../helpers/cluster.js';
import { freePort, redisUnavailableReason } from '../helpers/redis.js';

const why = redisUnavailableReason();
if (why) console.log(`skipping the redirect end-to-end tests: ${why}`);
const MiB = 1024 * 1024;

interface TestAgent {
  device: string;
  home: string;
  proc: Proc;
  runs: () => { id: string; sha: string }[];
}

/** Enrolls and starts one agent through the cluster's front (`extra`: agent flags; `config`: config fields). */
async function startAgent(c: TestCluster, device: string, o: { extra?: string[]; config?: Record<string, unknown> } = {}): Promise<TestAgent> {
  const token = await cliOk(['relay', 'device', 'add', device, '--store', c.url]);
  const dir = tempDir();
  const home = path.join(dir, device);
  await cliOk(['init', token, '--home', home, '--relay', `127.0.0.1:${c.front.port}`]);
  const rec = recordingHandler(dir);
  const cfg = JSON.parse(fs.readFileSync(path.join(home, 'config.json'), 'utf8')) as Record<string, unknown>;
  Object.assign(cfg, { rules: [rec.rule] }, o.config ?? {});
  fs.writeFileSync(path.join(home, 'config.json'), JSON.stringify(cfg, null, 2));
  return { device, home, proc: spawnCli(['agent', '--home', home, ...(o.extra ?? [])]), runs: rec.runs };
}

async function startAgents(c: TestCluster, n: number, prefix = 'host'): Promise<TestAgent[]> {
  const agents: TestAgent[] = [];
  for (let i = 0; i < n; i++) agents.push(await startAgent(c, `${prefix}${i}`));
  await waitForSessions(c, agents);
  return agents;
}

/** Every agent process has its own session (not only the one its enrollment made), and the cluster knows where. */
async function waitForSessions(c: TestCluster, agents: TestAgent[]): Promise<void> {
  for (const a of agents) await a.proc.waitLog((l) => l.msg === 'session started', 60_000);
  await waitFor(async () => ([...(await owners(c.client, agents.map((a) => a.device))).values()].every((o) => o.node) ? true : undefined), 60_000, 'every agent to have a session');
  await new Promise((r) => setTimeout(r, 1_000)); // the enrollment sessions' ends are told meanwhile
}

async function holders(c: TestCluster, devices: string[]): Promise<Map<string, string | undefined>> {
  return new Map([...(await owners(c.client, devices))].map(([d, o]) => [d, o.node]));
}

/** Posts small files to every device, round-robin over `nodes`, until `stop()`; what was accepted is kept. */
function traffic(nodes: () => NodeHandle[], token: string, devices: string[]) {
  const sent = new Map<string, { device: string; sha: string }>();
  const failures: string[] = [];
  let stopped = false;
  let turn = 0;
  const running = devices.map(async (device) => {
    for (let i = 0; !stopped && i < 10_000; i++) {
      const body = randomData(512 + ((i * 7919) % (64 * 1024)));
      const live = nodes();
      const node = live[turn++ % live.length]!;
      try {
        const r = await new Api(node.http, token).send(device, `m${i}.bin`, body);
        if (r.status === 202) sent.set(r.json.id as string, { device, sha: sha256(body) });
        else failures.push(`${r.status} ${JSON.stringify(r.json)}`);
      } catch (err) {
        failures.push(String(err));
      }
      await new Promise((r) => setTimeout(r, 150));
    }
  });
  return {
    sent,
    failures,
    stop: async () => {
      stopped = true;
      await Promise.all(running);
    },
  };
}

/** Every message accepted was handled exactly once, by its own device, bytes intact. */
async function expectExactlyOnce(api: Api, agents: TestAgent[], sent: Map<string, { device: string; sha: string }>): Promise<void> {
  for (const id of sent.keys()) await api.until(id, ['handled'], 120_000);
  await new Promise((r) => setTimeout(r, 500));
  const byDevice = new Map(agents.map((a) => [a.device, a.runs()]));
  for (const [device, runs] of byDevice) {
    const ids = runs.map((r) => r.id);
    expect(new Set(ids).size, `${device}: no message handled twice`).toBe(ids.length);
    const want = [...sent].filter(([, s]) => s.device === device).map(([id]) => id);
    for (const id of want) expect(ids, `${device}: ${id} handled`).toContain(id);
    for (const r of runs) if (sent.has(r.id)) expect(r.sha).toBe(sent.get(r.id)!.sha);
  }
}

/** The cluster's event log so far (SSE from `after=0`, read for `ms`). */
async function eventsSoFar(http: string, token: string, ms = 2_000): Promise<{ id: number; type: string; data: Record<string, unknown> }[]> {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), ms);
  const events: { id: number; type: string; data: Record<string, unknown> }[] = [];
  try {
    const res = await fetch(`http://${http}/v1/events?after=0`, { headers: { authorization: `Bearer ${token}` }, signal: ac.signal });
    let buf = '';
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      buf += Buffer.from(chunk).toString();
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const f = Object.fromEntries(block.split('\n').filter((l) => !l.startsWith(':')).map((l) => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 2)]));
        if (f.id) events.push({ id: Number(f.id), type: f.event!, data: JSON.parse(f.data!) as Record<string, unknown> });
      }
    }
  } catch (err) {
    if (!ac.signal.aborted) throw err;
  } finally {
    clearTimeout(timer);
  }
  return events;
}

/**
 * `n` light agents (bench/load-agents.ts: the agent's protocol code and its redirect follower, no spool) in this
 * process, dialing the nodes round-robin: the drain test's crowd, besides the real agent processes.
 */
async function startLightAgents(c: TestCluster, n: number, from: number) {
  const store = await openClusterStore(c.url, { unsafe: true, replicas: 0 });
  const now = Date.now();
  for (let i = from; i < from + n; i++) await store.createDevice({ name: deviceName(i), publicKey: toHex(deviceKeys(nodeCrypto, i).publicKey), enrolledAt: now, createdAt: now });
  await store.close();
  const relayKey = fromHex((await c.client.hget('dw:cluster', 'publicKey'))!);
  const closes: string[] = [];
  const received = new Map<string, number>();
  const light: LightAgent[] = [];
  for (let i = from; i < from + n; i++) {
    const node = c.nodes[i % c.nodes.length]!;
    const a = new LightAgent({
      name: deviceName(i),
      keys: deviceKeys(nodeCrypto, i),
      relay: { host: '127.0.0.1', port: node.agentsPort },
      relayKey,
      crypto: nodeCrypto,
      hash: true,
      redirects: true,
      events: { established: () => {}, received: (_a, filename, _size, _at, ok) => void received.set(filename, (received.get(filename) ?? 0) + (ok ? 1 : 1000)), closed: (_a, code) => void closes.push(code) },
    });
    light.push(a);
    a.start();
    onTestFinished(() => a.close());
  }
  await waitFor(() => (light.every((a) => a.connected) ? true : undefined), 60_000, 'the light agents connected');
  return { light, closes, received, devices: light.map((a) => a.name) };
}

const handOverLines = (a: TestAgent) => a.proc.logs.filter((l) => l.msg === 'handed over to another relay node');

describe.skipIf(why !== undefined)('moving agents between relay nodes without a gap', () => {
  it('drain: every agent moves to the other two nodes, messages flowing and a large file in flight, no device.offline, nothing lost or handled twice, bytes re-sent reported', async () => {
    const c = await startCluster({ nodes: 3 });
    const agents = await startAgents(c, 12);
    const devices = agents.map((a) => a.device);
    const crowd = await startLightAgents(c, 188, 1000); // 200 agents in all, as in the issue
    const token = (await cliOk(['relay', 'token', 'add', 'site', '--store', c.url])).split('\n')[0]!;
    await new Promise((r) => setTimeout(r, 2_500)); // nodes re-read tokens every 2 s
    const before = await holders(c, devices);
    const crowdBefore = await holders(c, crowd.devices);
    console.log(`agents before the drain: ${[...before].map(([d, n]) => `${d}@${n}`).join(' ')}; light agents per node: ${JSON.stringify(Object.fromEntries(c.nodes.map((n) => [n.name, [...crowdBefore.values()].filter((x) => x === n.name).length])))}`);
    // Drain the node holding host0's session: its large file is in flight there.
    const drained = c.nodes.find((n) => n.name === before.get('host0'))!;
    const others = c.nodes.filter((n) => n !== drained);
    const onDrained = devices.filter((d) => before.get(d) === drained.name);
    const crowdOnDrained = crowd.devices.filter((d) => crowdBefore.get(d) === drained.name);
    // A file for each light agent, in flight around the drain.
    const api0 = new Api(others[0]!.http, token);
    const crowdSent = new Map<string, string>();
    for (const d of crowd.devices) {
      const r = await api0.send(d, `${d}.bin`, randomData(48 * 1024));
      expect(r.status).toBe(202);
      crowdSent.set(r.json.id as string, d);
    }
    // The enrollments' own short sessions may have been told offline during the set-up: only what follows counts.
    const lastBefore = Math.max(0, ...(await eventsSoFar(others[0]!.http, token)).map((e) => e.id));

    const flow = traffic(() => others, token, devices);
    const big = randomData(100 * MiB); // the issue's size
    const bigPost = await new Api(others[0]!.http, token).send('host0', 'big.bin', big);
    expect(bigPost.status).toBe(202);
    const bigId = bigPost.json.id as string;
    flow.sent.set(bigId, { device: 'host0', sha: sha256(big) });
    const part = path.join(agents[0]!.home, 'spool', `${bigId}.part`);
    await waitFor(() => (fs.existsSync(part) && fs.statSync(part).size > 4 * MiB ? true : undefined), 120_000, 'part of the large file at host0');
    const partBefore = fs.statSync(part).size;

    // While the drain runs, /healthz of the drained node says 503 draining.
    let health503 = false;
    const watching = (async () => {
      for (let i = 0; i < 400 && !health503 && drained.proc; i++) {
        try {
          const r = await fetch(`http://${drained.http}/healthz`);
          const j = (await r.json()) as { draining?: boolean };
          if (r.status === 503 && j.draining === true) health503 = true;
        } catch {
          // the node exits once empty
        }
        await new Promise((r) => setTimeout(r, 25));
      }
    })();
    const t0 = Date.now();
    const out = await cli(['relay', 'drain', '--node', drained.name, '--rate', '25', '--json', '--store', c.url]);
    expect(out.code, out.stderr).toBe(0);
    const summary = JSON.parse(out.stdout.trim().split('\n').at(-1)!) as { moved: number; refused: string[]; timedOut: string[]; unsupported: string[]; failed: string[]; resentBytes: number; unacknowledgedBytes: number; durationMs: number };
    console.log(`drain of ${drained.name} (${onDrained.length} agent processes and ${crowdOnDrained.length} light agents, large file at ${partBefore} bytes) in ${Date.now() - t0} ms: ${JSON.stringify(summary)}`);
    await watching;
    expect(health503).toBe(true);
    expect(summary.moved).toBe(onDrained.length + crowdOnDrained.length);
    expect(summary.refused).toEqual([]);
    expect(summary.timedOut).toEqual([]);
    expect(summary.unsupported).toEqual([]);
    expect(summary.failed).toEqual([]);
    if (summary.resentBytes > 0) {
      for (const a of agents) for (const l of a.proc.logs.filter((x) => x.msg === 'old relay connection closed during a hand-over')) console.log(`${a.device}: old connection closed with ${String(l.code)} (${String(l.reason)})`);
      for (const n of c.nodes) for (const l of n.proc?.logs.filter((x) => x.resent !== undefined && Number(x.resent) > 0) ?? []) console.log(`${n.name}: ${JSON.stringify(l)}`);
    }
    // The bytes sent again over the whole drain: at most what was unacknowledged at the swaps (goal 0).
    expect(summary.resentBytes).toBeLessThanOrEqual(summary.unacknowledgedBytes);
    // The node exits once empty and leaves the node list.
    await waitFor(() => (drained.proc!.child.exitCode !== null ? true : undefined), 20_000, 'the drained node to exit');
    expect(drained.proc!.child.exitCode).toBe(0);
    drained.proc = undefined;
    const listed = JSON.parse(await cliOk(['relay', 'nodes', '--json', '--store', c.url])) as { name: string }[];
    expect(listed.map((n) => n.name)).not.toContain(drained.name);

    // Every agent is on the other two; each moved one logged its hand-over as one line.
    const after = await holders(c, [...devices, ...crowd.devices]);
    for (const d of [...devices, ...crowd.devices]) expect(others.map((n) => n.name)).toContain(after.get(d));
    for (const a of crowd.light) expect(a.handovers, a.name).toBe(crowdOnDrained.includes(a.name) ? 1 : 0);
    expect(crowd.closes).toEqual([]); // no light agent lost its connection: each swapped to the new one
    for (const a of agents) {
      const lines = handOverLines(a);
      if (onDrained.includes(a.device)) {
        expect(lines).toHaveLength(1);
        expect(lines[0]).toMatchObject({ to: expect.stringMatching(/^127\.0\.0\.1:\d+$/), rid: expect.stringMatching(/^[0-9a-f]{32}$/), durationMs: expect.any(Number) });
        expect(lines[0]!.from).toBe(`127.0.0.1:${c.front.port}`);
      } else expect(lines).toHaveLength(0);
    }

    // The large file continued mid-file on the new node: complete, its SHA-256 right, never restarted.
    const bigDone = await new Api(others[0]!.http, token).until(bigId, ['handled'], 180_000);
    const offsets = (bigDone.history as { status: string; detail?: { offset?: number } }[]).filter((h) => h.status === 'sent').map((h) => h.detail?.offset ?? 0);
    console.log(`large file: sent from offsets ${offsets.join(', ')}`);
    expect(offsets.filter((o) => o === 0)).toHaveLength(1); // sent from 0 once only
    expect(Math.max(...offsets)).toBeGreaterThanOrEqual(partBefore);
    expect(agents[0]!.proc.logs.filter((l) => l.msg === 'spool could not resume; asking for the whole file')).toHaveLength(0);

    await new Promise((r) => setTimeout(r, 1_500));
    await flow.stop();
    console.log(`messages accepted during the test: ${flow.sent.size}; refused posts: ${flow.failures.length}`);
    expect(flow.failures).toEqual([]);
    await expectExactlyOnce(new Api(others[0]!.http, token), agents, flow.sent);
    // The light agents' files: each handled, received once, its SHA-256 right.
    for (const id of crowdSent.keys()) await api0.until(id, ['handled'], 60_000);
    for (const d of crowd.devices) expect(crowd.received.get(`${d}.bin`), d).toBe(1);
    expect(crowd.light.reduce((k, a) => k + a.redelivered, 0)).toBe(0);
    // No device.offline at all, for any agent, over the whole drain.
    const events = (await eventsSoFar(others[1]!.http, token, 3_000)).filter((e) => e.id > lastBefore);
    expect(events.length).toBeGreaterThan(0);
    expect(events.filter((e) => e.type === 'device.offline')).toEqual([]);
    // The agents' own count of bytes re-sent is what the relay reported: the large file's bytes came once.
    expect(fs.existsSync(part)).toBe(false);
  }, 400_000);

  it('refusal: an agent configured to refuse stays, the request is cancelled at the target, the drain lists it; a single node has nowhere to go', async () => {
    const c = await startCluster({ nodes: 3 });
    const [n1, n2] = c.nodes as [NodeHandle, NodeHandle];
    c.front.backends = () => [n1.agentsPort]; // everyone on node1
    const stubborn = await startAgent(c, 'stubborn', { extra: ['--refuse-redirects'] });
    const configured = await startAgent(c, 'configured', { config: { redirects: false } });
    const willing = await startAgent(c, 'willing');
    const agents = [stubborn, configured, willing];
    await waitForSessions(c, agents);
    c.front.backends = () => c.nodes.filter((n) => n.proc).map((n) => n.agentsPort);
    const token = (await cliOk(['relay', 'token', 'add', 'site', '--store', c.url])).split('\n')[0]!;
    await new Promise((r) => setTimeout(r, 2_500));
    const flow = traffic(() => [n2], token, agents.map((a) => a.device));

    // One agent asked to move: it refuses, stays on node1, the target sees the request cancelled.
    const moved = await cli(['relay', 'move', '--device', 'stubborn', '--to', n2.name, '--json', '--store', c.url]);
    expect(moved.code, moved.stderr).toBe(0);
    const s1 = JSON.parse(moved.stdout.trim().split('\n').at(-1)!) as { refused: string[]; moved: number };
    expect(s1).toMatchObject({ moved: 0, refused: ['stubborn'] });
    const cancelled = await n2.proc!.waitLog((l) => l.msg === 'redirect request cancelled by the source' && l.device === 'stubborn' && l.reason === 'refused', 10_000);
    expect(await c.client.hget(`dw:redirect:${cancelled.rid as string}`, 'state')).toBe('refused');
    expect((await holders(c, ['stubborn'])).get('stubborn')).toBe(n1.name);
    expect(handOverLines(stubborn)).toHaveLength(0);
    expect(stubborn.proc.logs.some((l) => l.msg === 'redirect refused: this agent is configured to stay (redirects: false)')).toBe(true);

    // An agent of an older version (no `caps` in its HELLO, a light agent of bench/load-agents.ts): it is never
    // sent REDIRECT (it would not know it: DW_BAD_MESSAGE), only disconnected by the drain.
    const store = await openClusterStore(c.url, { unsafe: true, replicas: 0 });
    await store.createDevice({ name: deviceName(900), publicKey: toHex(deviceKeys(nodeCrypto, 900).publicKey), enrolledAt: Date.now(), createdAt: Date.now() });
    await store.close();
    const closes: string[] = [];
    let oldUp = false;
    const old = new LightAgent({
      name: deviceName(900),
      keys: deviceKeys(nodeCrypto, 900),
      relay: { host: '127.0.0.1', port: n1.agentsPort },
      relayKey: fromHex((await c.client.hget('dw:cluster', 'publicKey'))!),
      crypto: nodeCrypto,
      hash: false,
      events: { established: () => void (oldUp = true), received: () => {}, closed: (_a, code) => void closes.push(code) },
    });
    old.start();
    onTestFinished(() => old.close());
    await waitFor(() => (oldUp ? true : undefined), 20_000, 'the older agent connected');

    // The drain of node1 moves the willing one and lists the two that refused, then disconnects them.
    const drain = await cli(['relay', 'drain', '--node', n1.name, '--store', c.url]);
    expect(drain.code, drain.stderr).toBe(0);
    console.log(drain.stdout);
    expect(drain.stdout).toContain('refused (disconnected or kept): configured, stubborn');
    expect(drain.stdout).toMatch(/1 moved/);
    expect(drain.stdout).toContain(`cannot be redirected (older agents): ${deviceName(900)}`);
    await waitFor(() => (closes.length > 0 ? true : undefined), 10_000, 'the older agent disconnected');
    expect(closes[0]).toBe('DW_PEER_CLOSED'); // CLOSE(DW_NODE_DRAINING) from the node, never a REDIRECT it cannot read
    expect(handOverLines(willing)).toHaveLength(1);
    await waitFor(() => (n1.proc!.child.exitCode !== null ? true : undefined), 20_000, 'node1 to exit');
    n1.proc = undefined;
    // The ones that refused were disconnected and came back on another node by themselves.
    await waitFor(async () => {
      const h = await holders(c, ['stubborn', 'configured']);
      return [...h.values()].every((n) => n !== undefined && n !== 'node1') ? true : undefined;
    }, 60_000, 'the refusing agents on another node');
    await new Promise((r) => setTimeout(r, 1_000));
    await flow.stop();
    await expectExactlyOnce(new Api(n2.http, token), agents, flow.sent);

    // A relay of one node: nowhere to go.
    const single = await startCluster({ nodes: 1 });
    const nowhere = await cli(['relay', 'drain', '--node', single.nodes[0]!.name, '--store', single.url]);
    expect(nowhere.code).toBe(1);
    expect(nowhere.stderr).toContain('DW_NOWHERE_TO_GO');
    expect(nowhere.stderr).toContain('nowhere to go');
    expect((await fetch(`http://${single.nodes[0]!.http}/healthz`)).status).toBe(200);
  }, 300_000);

  it('time-out: the target killed during the hand-over; the agent stays on the source, both ends cancel, nothing lost', async () => {
    const c = await startCluster({ nodes: 3 });
    const [n1, n2] = c.nodes as [NodeHandle, NodeHandle];
    c.front.backends = () => [n1.agentsPort];
    const a = await startAgent(c, 'shop');
    await waitForSessions(c, [a]);
    const token = (await cliOk(['relay', 'token', 'add', 'site', '--store', c.url])).split('\n')[0]!;
    await new Promise((r) => setTimeout(r, 2_500));
    const flow = traffic(() => [n1], token, ['shop']);
    await new Promise((r) => setTimeout(r, 1_000));

    // The target stops answering (its port still accepts), then is killed while the agent dials it.
    process.kill(n2.proc!.pid, 'SIGSTOP');
    const moving = cli(['relay', 'move', '--device', 'shop', '--to', n2.name, '--timeout', '4', '--json', '--store', c.url]);
    await a.proc.waitLog((l) => l.msg === 'redirect received; dialing the new relay node', 10_000);
    await new Promise((r) => setTimeout(r, 300));
    await c.killNode(n2);
    const out = await moving;
    expect(out.code, out.stderr).toBe(0);
    const s = JSON.parse(out.stdout.trim().split('\n').at(-1)!) as { moved: number; timedOut: string[] };
    expect(s).toMatchObject({ moved: 0, timedOut: ['shop'] });
    // Both ends gave it up by themselves.
    const agentSide = await a.proc.waitLog((l) => l.msg === 'hand-over did not happen; staying on the current relay node', 10_000);
    const sourceSide = await n1.proc!.waitLog((l) => l.msg === 'redirect timed out; the agent stays here' && l.device === 'shop', 10_000);
    expect(agentSide.rid).toBe(sourceSide.rid);
    expect(await c.client.hget(`dw:redirect:${sourceSide.rid as string}`, 'state')).toBe('timeout');
    expect((await holders(c, ['shop'])).get('shop')).toBe(n1.name);
    expect(handOverLines(a)).toHaveLength(0);
    // Still connected to node1 all along: messages keep coming.
    await new Promise((r) => setTimeout(r, 1_500));
    await flow.stop();
    expect(flow.failures).toEqual([]);
    await expectExactlyOnce(new Api(n1.http, token), [a], flow.sent);
    expect(a.proc.logs.filter((l) => l.msg === 'session started')).toHaveLength(1); // never lost its session
  }, 300_000);

  it('rebalance after adding a fourth node: every node within 10% of the mean, nothing lost or handled twice', async () => {
    const c = await startCluster({ nodes: 3 });
    const agents = await startAgents(c, 12, 'site');
    const devices = agents.map((a) => a.device);
    const token = (await cliOk(['relay', 'token', 'add', 'web', '--store', c.url])).split('\n')[0]!;
    await new Promise((r) => setTimeout(r, 2_500));
    const lastBefore = Math.max(0, ...(await eventsSoFar(c.nodes[0]!.http, token)).map((e) => e.id));
    const flow = traffic(() => c.nodes.filter((n) => n.proc), token, devices);

    // A fourth node joins with the cluster's key: `relay nodes` shows it at once.
    const n4: NodeHandle = { name: 'node4', data: path.join(c.dir, 'node4'), agentsPort: await freePort(), httpPort: await freePort(), proc: undefined, info: undefined, http: '' };
    n4.http = `127.0.0.1:${n4.httpPort}`;
    await c.startNode(n4);
    const listed = JSON.parse(await cliOk(['relay', 'nodes', '--json', '--store', c.url])) as { name: string; state: string }[];
    expect(listed.find((n) => n.name === 'node4')).toMatchObject({ state: 'alive' });
    const out = await cli(['relay', 'rebalance', '--json', '--store', c.url]);
    expect(out.code, out.stderr).toBe(0);
    const r = JSON.parse(out.stdout.trim().split('\n').at(-1)!) as { before: Record<string, number>; after: Record<string, number>; balanced: boolean; summaries: { moved: number; resentBytes: number; unacknowledgedBytes: number }[] };
    console.log(`rebalance: before ${JSON.stringify(r.before)} after ${JSON.stringify(r.after)}; ${JSON.stringify(r.summaries)}`);
    expect(r.before.node4).toBe(0);
    if (!r.balanced) for (const a of agents) console.log(a.device, (await holders(c, [a.device])).get(a.device), a.proc.logs.filter((l) => /hand|relay|session|redirect/.test(String(l.msg))).map((l) => `${String(l.msg)} ${String(l.code ?? '')} ${String(l.reason ?? '')}`).join(' | '));
    expect(r.balanced).toBe(true);
    const mean = devices.length / 4;
    for (const n of ['node1', 'node2', 'node3', 'node4']) expect(Math.abs(r.after[n]! - mean)).toBeLessThanOrEqual(0.1 * mean);
    // The owners in Redis say the same.
    const after = await holders(c, devices);
    const counts = new Map<string, number>();
    for (const n of after.values()) counts.set(n!, (counts.get(n!) ?? 0) + 1);
    for (const n of ['node1', 'node2', 'node3', 'node4']) expect(Math.abs((counts.get(n) ?? 0) - mean)).toBeLessThanOrEqual(0.1 * mean);
    for (const s of r.summaries) expect(s.resentBytes).toBeLessThanOrEqual(s.unacknowledgedBytes);
    expect(agents.reduce((k, a) => k + handOverLines(a).length, 0)).toBe(r.summaries.reduce((k, s) => k + s.moved, 0));
    await new Promise((r2) => setTimeout(r2, 1_500));
    await flow.stop();
    expect(flow.failures).toEqual([]);
    await expectExactlyOnce(new Api(n4.http, token), agents, flow.sent);
    const events = (await eventsSoFar(n4.http, token, 3_000)).filter((e) => e.id > lastBefore);
    expect(events.length).toBeGreaterThan(0);
    expect(events.filter((e) => e.type === 'device.offline')).toEqual([]);
  }, 300_000);
});
