import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Redis } from 'ioredis';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { Bus, type BusMessage } from '../../../src/relay/cluster/bus.js';
import { checkNodeKey, initCluster, readClusterConfig } from '../../../src/relay/cluster/config.js';
import { openRedis } from '../../../src/relay/cluster/connect.js';
import { DeviceOwnership } from '../../../src/relay/cluster/handover.js';
import { Lease } from '../../../src/relay/cluster/lease.js';
import { ClusterPresence } from '../../../src/relay/cluster/presence.js';
import { listNodes, NodeRegistry } from '../../../src/relay/cluster/registry.js';
import { redisUnavailableReason, startRedis, type PrivateRedis } from '../../helpers/redis.js';
import { waitFor } from '../../helpers/cli.js';

const log = pino({ level: 'silent' });
const why = redisUnavailableReason();
if (why) console.log(`skipping the cluster runtime tests: ${why}`);

describe.skipIf(why !== undefined)('cluster runtime against a real redis-server', () => {
  let r: PrivateRedis;
  const conns: Redis[] = [];
  const buses: Bus[] = [];
  beforeAll(async () => {
    r = await startRedis();
  });
  afterAll(async () => {
    for (const b of buses) await b.close();
    for (const c of conns) c.disconnect();
    await r.dispose();
  });
  const connect = async (o: { subscriber?: boolean } = {}) => {
    const c = await openRedis(r.url, o);
    conns.push(c);
    return c;
  };
  /** One node's command connection, bus, and every bus message it received. */
  const node = async (name: string) => {
    const redis = await connect();
    const bus = await Bus.open({ pub: redis, sub: await connect({ subscriber: true }), node: name, log });
    buses.push(bus);
    const got: BusMessage[] = [];
    bus.on((m) => got.push(m));
    return { name, redis, bus, got };
  };

  it('cluster init records the public key and addresses, refuses a second init; a node with another key is refused', async () => {
    const redis = await connect();
    await redis.select(3);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dw-cl-'));
    onTestFinished(() => fs.rmSync(dir, { recursive: true, force: true }));
    const cfg = await initCluster(redis, { dataDir: dir, agents: ['10.0.0.1:7390', '10.0.0.2:7390'] });
    const stored = await readClusterConfig(redis);
    expect(stored).toMatchObject({ publicKey: cfg.publicKey, agents: ['10.0.0.1:7390', '10.0.0.2:7390'] });
    const privateKey = (JSON.parse(fs.readFileSync(cfg.keyFile, 'utf8')) as { privateKey: string }).privateKey;
    const dump = JSON.stringify(await redis.hgetall('dw:cluster'));
    expect(dump).not.toContain(privateKey);
    await expect(initCluster(redis, { dataDir: dir, agents: ['10.0.0.1:7390'] })).rejects.toMatchObject({ code: 'DW_CLUSTER_EXISTS' });
    expect(checkNodeKey(stored!, cfg.keyFile).publicKey).toBeDefined();
    const other = path.join(dir, 'other.key');
    fs.writeFileSync(other, JSON.stringify({ privateKey: '11'.repeat(32) }));
    expect(() => checkNodeKey(stored!, other)).toThrow(expect.objectContaining({ code: 'DW_CLUSTER_KEY_MISMATCH' }));
    await redis.flushdb();
  });

  it('hand-over: a second node taking a device over makes the first retire its session and answer; stale retires are ignored', async () => {
    const a = await node('a');
    const b = await node('b');
    const retiredAtA: string[] = [];
    const retiredAtB: string[] = [];
    const oa = new DeviceOwnership({ redis: a.redis, bus: a.bus, node: 'a' });
    const ob = new DeviceOwnership({ redis: b.redis, bus: b.bus, node: 'b' });
    oa.attach({ retireSession: (d, code) => retiredAtA.push(`${d}:${code}`) });
    ob.attach({ retireSession: (d, code) => retiredAtB.push(`${d}:${code}`) });
    const first = await oa.takeOver({ device: 'shop', reason: 'reconnect' });
    expect(first.from).toBeUndefined();
    expect(await first.retired).toBe(true);
    const second = await ob.takeOver({ device: 'shop', reason: 'reconnect' });
    expect(second).toMatchObject({ from: 'a' });
    expect(second.epoch).toBeGreaterThan(first.epoch);
    expect(await second.retired).toBe(true);
    expect(retiredAtA).toEqual(['shop:DW_SESSION_MOVED']);
    expect(oa.holds('shop')).toBe(false);
    expect(await ob.holder('shop')).toBe('b');
    // A's late release of its old claim changes nothing.
    await oa.release('shop');
    expect(await ob.holder('shop')).toBe('b');
    // Back to A, then a retire from B's older claim arrives late: A keeps its session.
    const third = await oa.takeOver({ device: 'shop', reason: 'reconnect' });
    expect(await third.retired).toBe(true);
    expect(retiredAtB).toEqual(['shop:DW_SESSION_MOVED']);
    await b.redis.publish('dw:ch:node:a', b.bus.envelope({ t: 'retire', device: 'shop', epoch: second.epoch, by: 'b', reason: 'reconnect' }));
    await new Promise((res) => setTimeout(res, 200));
    expect(retiredAtA).toEqual(['shop:DW_SESSION_MOVED']);
    expect(oa.holds('shop')).toBe(true);
    // Work for the device is routed to its holder only, never back to the sender.
    expect(await ob.route('shop', { t: 'cancel', device: 'shop', id: 'm1' })).toBe(true);
    await waitFor(() => (a.got.some((m) => m.t === 'cancel' && m.device === 'shop') ? true : undefined), 5_000, 'cancel at a');
    expect(await oa.route('shop', { t: 'cancel', device: 'shop', id: 'm1' })).toBe(false);
    // A released claim routes nowhere.
    await oa.release('shop');
    expect(await ob.holder('shop')).toBeUndefined();
    expect(await ob.route('shop', { t: 'cancel', device: 'shop', id: 'm1' })).toBe(false);
  });

  it('a retire nobody answers (the holder is dead) resolves false after the wait', async () => {
    const c = await node('c');
    const oc = new DeviceOwnership({ redis: c.redis, bus: c.bus, node: 'c' });
    await c.redis.hset('dw:owner:{till}', 'node', 'dead-node', 'epoch', '7');
    const h = await oc.takeOver({ device: 'till', reason: 'reconnect' });
    expect(h).toMatchObject({ from: 'dead-node', epoch: 8 });
    expect(await h.retired).toBe(false);
  });

  it('presence: online once per cluster, no event when the agent only moves, offline once', async () => {
    const a = await node('pa');
    const b = await node('pb');
    const pa = new ClusterPresence({ redis: a.redis, bus: a.bus, node: 'pa', log });
    const pb = new ClusterPresence({ redis: b.redis, bus: b.bus, node: 'pb', log });
    const oa = new DeviceOwnership({ redis: a.redis, bus: a.bus, node: 'pa' });
    const ob = new DeviceOwnership({ redis: b.redis, bus: b.bus, node: 'pb' });
    oa.attach({ retireSession: () => {} });
    ob.attach({ retireSession: () => {} });
    await oa.takeOver({ device: 'kiosk', reason: 'reconnect' });
    expect(await pa.change('kiosk', true)).toBe(true);
    await waitFor(() => (pb.nodeOf('kiosk') === 'pa' ? true : undefined), 5_000, 'pb to hear kiosk online at pa');
    await ob.takeOver({ device: 'kiosk', reason: 'reconnect' });
    expect(await pb.change('kiosk', true)).toBe(false); // moved: no second online
    expect(await pa.change('kiosk', false)).toBe(false); // pa's link closed, but pb holds it now
    await waitFor(() => (pa.nodeOf('kiosk') === 'pb' ? true : undefined), 5_000, 'pa to hear kiosk at pb');
    expect(await pb.change('kiosk', false)).toBe(true);
    expect(await pb.change('kiosk', false)).toBe(false);
    await waitFor(() => (pa.nodeOf('kiosk') === undefined ? true : undefined), 5_000, 'pa to hear kiosk offline');
  });

  it('registry: each node listed with its figures; one that stops heart-beating is shown dead after 10 s', async () => {
    const redis = await connect();
    let now = 1_000_000;
    const reg = new NodeRegistry({ redis, node: { name: 'n1', agents: '127.0.0.1:7390', http: '127.0.0.1:7391', pid: 42, startedAt: now }, connected: () => 3, log, now: () => now });
    onTestFinished(() => reg.close());
    for (let i = 0; i < 10; i++) reg.countDelivered();
    now += 2_000;
    await reg.beat();
    const [n] = (await listNodes(redis, now)).filter((x) => x.name === 'n1');
    expect(n).toMatchObject({ name: 'n1', agents: '127.0.0.1:7390', http: '127.0.0.1:7391', connected: 3, messagesPerS: 5, alive: true, lastHeartbeat: now });
    expect((await listNodes(redis, now + 9_000)).find((x) => x.name === 'n1')?.alive).toBe(true);
    expect((await listNodes(redis, now + 10_500)).find((x) => x.name === 'n1')?.alive).toBe(false);
    await reg.close();
    expect((await listNodes(redis, now)).find((x) => x.name === 'n1')).toBeUndefined();
  });

  it('lease: one holder at a time with rising fences; taken over within seconds when the holder goes silent', async () => {
    const events: string[] = [];
    const mk = async (nodeName: string) => {
      const redis = await connect();
      const lease = new Lease({
        redis,
        name: 'test',
        node: nodeName,
        log,
        ttlMs: 1_500,
        tickMs: 250,
        holder: { gained: (f) => events.push(`${nodeName}+${f}`), lost: () => events.push(`${nodeName}-`) },
      });
      return { redis, lease };
    };
    const x = await mk('x');
    const y = await mk('y');
    onTestFinished(async () => {
      await x.lease.close();
      await y.lease.close();
    });
    await waitFor(() => (x.lease.held() || y.lease.held() ? true : undefined), 5_000, 'a holder');
    await new Promise((res) => setTimeout(res, 1_000));
    expect([x.lease.held(), y.lease.held()].filter(Boolean)).toHaveLength(1);
    const [holder, other] = x.lease.held() ? [x, y] : [y, x];
    const firstFence = holder.lease.fence;
    // The holder's Redis connection dies (as with a SIGKILL or a partition): it stops by itself, the other takes over.
    holder.redis.disconnect();
    const t0 = Date.now();
    await waitFor(() => (other.lease.held() ? true : undefined), 10_000, 'takeover');
    const took = Date.now() - t0;
    expect(holder.lease.held()).toBe(false);
    expect(other.lease.fence).toBeGreaterThan(firstFence);
    // Never two holders: the old one said `lost` before the new one said `gained`.
    const lostAt = events.findIndex((e) => e.endsWith('-'));
    const gainedAt = events.findIndex((e, i) => i > 0 && e.includes('+') && !e.startsWith(events[0]!.slice(0, 1)));
    expect(lostAt).toBeGreaterThanOrEqual(0);
    expect(lostAt).toBeLessThan(gainedAt);
    console.log(`lease taken over ${took} ms after the holder went silent (TTL 1.5 s); events ${events.join(' ')}`);
  });
});
