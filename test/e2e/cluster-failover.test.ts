import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { decodeEnrollmentToken } from '../../src/shared/enrollment.js';
import { Api, cliOk, randomData, recordingHandler, sha256, spawnCli, tempDir, waitFor } from '../helpers/cli.js';
import { owners, startCluster } from '../helpers/cluster.js';
import { redisUnavailableReason } from '../helpers/redis.js';

const why = redisUnavailableReason();
if (why) console.log(`skipping the cluster failover test: ${why}`);

describe.skipIf(why !== undefined)('agents fail over between the nodes their token names', () => {
  it('no front: agents enrolled with the cluster token dial its addresses; a node SIGKILLed, its agents are on the others within 5 s, nothing lost or handled twice', async () => {
    const c = await startCluster({ nodes: 3 });
    const token = await cliOk(['relay', 'token', 'add', 'web', '--store', c.url]);
    const devices = ['a1', 'a2', 'a3', 'a4', 'a5', 'a6'];
    const agents = new Map<string, { runs: () => { id: string; sha: string }[]; kill: () => Promise<void> }>();
    for (const d of devices) {
      const enroll = await cliOk(['relay', 'device', 'add', d, '--store', c.url]);
      expect(decodeEnrollmentToken(enroll).relays).toHaveLength(3);
      const dir = tempDir();
      const home = path.join(dir, 'agent');
      await cliOk(['init', enroll, '--home', home]); // the token's own list, tried in a random order
      const rec = recordingHandler(dir);
      const cfg = JSON.parse(fs.readFileSync(path.join(home, 'config.json'), 'utf8')) as Record<string, unknown>;
      cfg.rules = [rec.rule];
      fs.writeFileSync(path.join(home, 'config.json'), JSON.stringify(cfg, null, 2));
      const proc = spawnCli(['agent', '--home', home]);
      agents.set(d, { runs: rec.runs, kill: () => proc.kill() });
    }
    await waitFor(async () => ([...(await owners(c.client, devices)).values()].every((o) => o.node) ? true : undefined), 60_000, 'every agent to have a session');
    const before = await owners(c.client, devices);
    const count = new Map<string, number>();
    for (const o of before.values()) count.set(o.node!, (count.get(o.node!) ?? 0) + 1);
    const victim = c.nodes.find((n) => n.name === [...count].sort((x, y) => y[1] - x[1])[0]![0])!;
    const on = devices.filter((d) => before.get(d)!.node === victim.name);
    console.log(`agents per node: ${JSON.stringify(Object.fromEntries(count))}; killing ${victim.name} with ${on.length}`);

    const survivors = c.nodes.filter((n) => n !== victim).map((n) => new Api(n.http, token));
    const sent = new Map<string, { device: string; sha: string }>();
    const t0 = Date.now();
    await c.killNode(victim);
    // Messages posted meanwhile, on the nodes still up.
    for (const [i, d] of devices.entries()) {
      const body = randomData(2048 + i);
      const r = await survivors[i % 2]!.send(d, `after-${i}.bin`, body);
      expect(r.status).toBe(202);
      sent.set(r.json.id as string, { device: d, sha: sha256(body) });
    }
    const back = await waitFor(async () => {
      const now = await owners(c.client, on);
      return on.every((d) => now.get(d)!.epoch > before.get(d)!.epoch && now.get(d)!.node !== victim.name) ? now : undefined;
    }, 30_000, 'the agents of the killed node on the others');
    const took = Math.max(0, ...[...back.values()].map((o) => o.at - t0));
    console.log(`${on.length} agents of ${victim.name} back on other nodes ${took} ms after the kill`);
    expect(took).toBeLessThanOrEqual(5_000);
    for (const id of sent.keys()) expect((await survivors[0]!.until(id, ['handled'], 60_000)).status).toBe('handled');
    await new Promise((r) => setTimeout(r, 1_000));
    for (const d of devices) {
      const runs = agents.get(d)!.runs();
      const mine = [...sent].filter(([, m]) => m.device === d);
      expect(runs.map((r) => r.id).sort()).toEqual(mine.map(([id]) => id).sort());
      for (const r of runs) expect(r.sha).toBe(sent.get(r.id)!.sha);
    }
    for (const a of agents.values()) await a.kill();
  }, 300_000);
});
