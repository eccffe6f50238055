import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { Api, cliOk, peakRssMiB, randomData, tempDir } from '../helpers/cli.js';
import { owners, recordingAgent, startCluster } from '../helpers/cluster.js';
import { redisUnavailableReason } from '../helpers/redis.js';

const why = redisUnavailableReason();
if (why) console.log(`skipping the cluster 1 GiB test: ${why}`);
const MiB = 1024 * 1024;

describe.skipIf(why !== undefined)('a large file across nodes', () => {
  it('1 GiB posted on one node, delivered by another through Redis: each dropwire process under 200 MiB RSS', async () => {
    const c = await startCluster({ nodes: 2 });
    const [a, b] = c.nodes as [(typeof c.nodes)[0], (typeof c.nodes)[0]];
    c.front.backends = () => [b.agentsPort]; // the agent on node2, the upload on node1
    const agent = await recordingAgent(c, 'plant');
    const token = await cliOk(['relay', 'token', 'add', 'web', '--store', c.url]);
    const dir = tempDir();
    const file = path.join(dir, 'huge.bin');
    const h = createHash('sha256');
    const fd = fs.openSync(file, 'w');
    const block = randomData(MiB);
    for (let i = 0; i < 1024; i++) {
      block[0] = i & 0xff;
      fs.writeSync(fd, block);
      h.update(block);
    }
    fs.closeSync(fd);
    const sha = h.digest('hex');
    await (async () => {
      for (let i = 0; i < 200 && (await owners(c.client, ['plant'])).get('plant')!.node !== b.name; i++) await new Promise((r) => setTimeout(r, 100));
    })();
    expect((await owners(c.client, ['plant'])).get('plant')!.node).toBe(b.name);
    const res = await fetch(`http://${a.http}/v1/messages?to=plant&filename=huge.bin`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}` },
      body: await fs.openAsBlob(file),
    });
    expect(res.status).toBe(202);
    const { id } = (await res.json()) as { id: string };
    fs.rmSync(file);
    await new Api(a.http, token).until(id, ['handled'], 600_000);
    const rss = { [a.name]: peakRssMiB(a.proc!.pid)!, [b.name]: peakRssMiB(b.proc!.pid)!, agent: peakRssMiB(agent.proc.pid)! };
    const redisRss = c.redis?.pid() ? peakRssMiB(c.redis.pid()!) : undefined;
    console.log(`1 GiB ${a.name} -> Redis -> ${b.name} -> agent: peak RSS ${Object.entries(rss).map(([k, v]) => `${k} ${v.toFixed(0)} MiB`).join(', ')}; redis-server ${redisRss?.toFixed(0)} MiB (it holds the body)`);
    expect(agent.runs()).toEqual([{ id, sha, name: 'huge.bin' }]);
    for (const v of Object.values(rss)) expect(v).toBeLessThan(200);
    await agent.proc.kill();
  }, 900_000);
});
