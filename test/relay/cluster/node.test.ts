import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { describe, expect, it, onTestFinished } from 'vitest';
import { initCluster } from '../../../src/relay/cluster/config.js';
import { openRedis } from '../../../src/relay/cluster/connect.js';
import { Relay } from '../../../src/relay/relay.js';
import { waitFor } from '../../helpers/cli.js';
import { redisUnavailableReason, startRedis } from '../../helpers/redis.js';

const log = pino({ level: 'silent' });
const why = redisUnavailableReason();
if (why) console.log(`skipping the cluster node tests: ${why}`);

describe.skipIf(why !== undefined)('a cluster node in this process', () => {
  it('tells device.offline once for devices left online by a node that restarted or died, and leaves live ones alone', async () => {
    const r = await startRedis();
    onTestFinished(() => r.dispose());
    const redis = await openRedis(r.url);
    onTestFinished(() => void redis.disconnect());
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dw-node-'));
    onTestFinished(() => fs.rmSync(dir, { recursive: true, force: true }));
    await initCluster(redis, { dataDir: dir, agents: ['127.0.0.1:7390'] });
    // What a previous life of node1 and a dead node left behind: devices shown online there.
    await redis.hset('dw:presence', 'left-at-node1', 'node1', 'left-at-dead', 'dead-node', 'live-elsewhere', 'node9');
    await redis.hset('dw:owner:{left-at-node1}', 'node', 'node1', 'epoch', '3');
    // node9 is alive: it heart-beats.
    await redis.zadd('dw:nodes', Date.now() + 60_000, 'node9');
    await redis.hset('dw:node:node9', 'name', 'node9', 'lastHeartbeat', String(Date.now() + 60_000));
    const node = await Relay.startNode({
      dataDir: path.join(dir, 'node1'),
      listen: { host: '127.0.0.1', port: 0 },
      http: { host: '127.0.0.1', port: 0 },
      log,
      store: r.url,
      keyFile: path.join(dir, 'relay.key'),
      node: 'node1',
    });
    onTestFinished(() => node.close());
    const offline = async () => (await node.store.eventsAfter(0, 100)).filter((e) => e.type === 'device.offline').map((e) => e.device).sort();
    await waitFor(async () => ((await offline()).length === 2 ? true : undefined), 20_000, 'two offline events');
    expect(await offline()).toEqual(['left-at-dead', 'left-at-node1']);
    expect(await redis.hgetall('dw:presence')).toEqual({ 'live-elsewhere': 'node9' });
    await new Promise((res) => setTimeout(res, 3_000));
    expect(await offline()).toEqual(['left-at-dead', 'left-at-node1']);
  }, 60_000);
});
