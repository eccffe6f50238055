/**
 * PROTOCOL 7.18 on real processes (relay and agent children of the CLI, loopback TCP, SQLite): a large upload
 * reaches the device while it arrives, and nothing of it is handled before the relay stored it and sent the
 * hash. Aborted uploads, a relay killed mid-way and a device that stalls never lead to a wrong or double
 * handling.
 */
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { Api, cliOk, randomData, recordingHandler, setup, sha256, spawnCli, startRelay, tempDir, waitFor, type Proc } from '../helpers/cli.js';
import { owners, recordingAgent, startCluster } from '../helpers/cluster.js';
import { redisUnavailableReason } from '../helpers/redis.js';

const MiB = 1024 * 1024;

type Setup = Awaited<ReturnType<typeof setup>>;

/** A raw POST with a Content-Length, written piece by piece by the test. */
function openUpload(s: Pick<Setup, 'api' | 'device'>, filename: string, size: number): { write(b: Uint8Array): Promise<void>; end(): void; req: http.ClientRequest; answer: Promise<{ status: number; json: Record<string, unknown> }> } {
  const url = new URL(`${s.api.base}/v1/messages?to=${s.device}&filename=${filename}`);
  const req = http.request({ host: url.hostname, port: Number(url.port), method: 'POST', path: `${url.pathname}${url.search}`, headers: { authorization: `Bearer ${s.api.token}`, 'content-length': size } });
  const answer = new Promise<{ status: number; json: Record<string, unknown> }>((resolve, reject) => {
    req.once('error', reject);
    req.once('response', (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (text += c));
      res.once('end', () => resolve({ status: res.statusCode!, json: JSON.parse(text) as Record<string, unknown> }));
    });
  });
  answer.catch(() => {});
  return {
    req,
    answer,
    write: (b) => new Promise((resolve) => (req.write(b) ? resolve() : req.once('drain', () => resolve()))),
    end: () => req.end(),
  };
}

/** Writes `body` from `from` to `to` in 256 KiB pieces. */
async function writeRange(u: { write(b: Uint8Array): Promise<void> }, body: Uint8Array, from: number, to: number): Promise<void> {
  for (let pos = from; pos < to; pos += 256 * 1024) await u.write(body.subarray(pos, Math.min(to, pos + 256 * 1024)));
}

const parts = (home: string): { id: string; size: number }[] => {
  const dir = path.join(home, 'spool');
  if (!fs.existsSync(dir)) return [];
  return fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.part'))
    .map((f) => ({ id: f.slice(0, -5), size: fs.statSync(path.join(dir, f)).size }));
};

/** A relay, an agent that handles by recording, and one small file handled first (HELLO read, delivery idle). */
async function ready(): Promise<{ s: Setup; agent: Proc; rec: ReturnType<typeof recordingHandler> }> {
  const dir = tempDir();
  const rec = recordingHandler(dir);
  const s = await setup({ rules: [rec.rule] });
  const agent = spawnCli(['agent', '--home', s.home]);
  const warm = await s.api.send(s.device, 'warm.txt', 'first');
  expect(warm.status).toBe(202);
  await s.api.until(warm.json.id as string, ['handled']);
  return { s, agent, rec };
}

describe('cut-through (PROTOCOL 7.18)', () => {
  it('delivers while the upload arrives, and handles the file only after the 202, once, with its SHA-256', async () => {
    const { s, agent, rec } = await ready();
    const size = 8 * MiB + 123;
    const body = randomData(size);
    const u = openUpload(s, 'big.bin', size);
    await writeRange(u, body, 0, size - 1000);
    // Every byte sent so far is on the host's disk while the upload is still open: cut through.
    const part = await waitFor(() => parts(s.home).find((p) => p.size === size - 1000), 30_000, 'the part to hold what was uploaded so far');
    // ... and nothing is handled, nor is there a message yet: the file ends with the hash, after the store.
    await new Promise((r) => setTimeout(r, 300));
    expect(rec.runs().length).toBe(1);
    expect((await s.api.get(`/v1/messages/${part.id}`)).status).toBe(404);
    await u.write(body.subarray(size - 1000));
    u.end();
    const answer = await u.answer;
    expect(answer.status).toBe(202);
    expect(answer.json).toMatchObject({ id: part.id, sha256: sha256(body), size });
    const done = await s.api.until(part.id, ['handled']);
    expect(done.status).toBe('handled');
    const runs = rec.runs().filter((r) => r.id === part.id);
    expect(runs).toEqual([{ id: part.id, sha: sha256(body), name: 'big.bin' }]);
    const received = await agent.waitLog((l) => l.msg === 'message received' && l.id === part.id);
    expect(received.resumedFrom).toBe(0); // one transfer from the first byte, no store-and-forward
    expect(parts(s.home)).toEqual([]);
    await agent.kill();
  });

  it('a sealed file (PROTOCOL 12) cut through is opened after FILE_END and handled as its plaintext', async () => {
    const { s, agent, rec } = await ready();
    const { Sealer, sealedSize } = await import('../../src/protocol/seal.js');
    const dev = (await s.api.get(`/v1/devices/${s.device}`)).json as { publicKey: string };
    const plain = randomData(3 * MiB + 5);
    const sealer = new Sealer({ recipientPublic: new Uint8Array(Buffer.from(dev.publicKey, 'hex')), ephemeralPrivate: randomData(32), sender: 'web', filename: 'sealed.bin' });
    const body = Buffer.concat([...sealer.push(plain), ...sealer.finish()]);
    expect(body.length).toBe(sealedSize(plain.length));
    const url = new URL(`${s.api.base}/v1/messages?to=${s.device}&filename=sealed.bin&sealed=1`);
    const req = http.request({ host: url.hostname, port: Number(url.port), method: 'POST', path: `${url.pathname}${url.search}`, headers: { authorization: `Bearer ${s.api.token}`, 'content-length': body.length } });
    const answer = new Promise<number>((resolve, reject) => {
      req.once('error', reject);
      req.once('response', (res) => {
        res.resume();
        resolve(res.statusCode!);
      });
    });
    req.write(body.subarray(0, body.length - 1000));
    const part = await waitFor(() => parts(s.home).find((p) => p.size === body.length - 1000), 30_000, 'the envelope on the host while it is uploaded');
    expect(rec.runs().length).toBe(1);
    req.end(body.subarray(body.length - 1000));
    expect(await answer).toBe(202);
    expect((await s.api.until(part.id, ['handled'])).status).toBe('handled');
    expect(rec.runs().filter((r) => r.id === part.id)).toEqual([{ id: part.id, sha: sha256(plain), name: 'sealed.bin' }]);
    await agent.kill();
  });

  it('an upload aborted mid-way is never handled: the agent drops its part, the stream goes on', async () => {
    const { s, agent, rec } = await ready();
    const size = 4 * MiB;
    const body = randomData(size);
    const u = openUpload(s, 'cut.bin', size);
    await writeRange(u, body, 0, size / 2);
    const part = await waitFor(() => parts(s.home).find((p) => p.size === size / 2), 30_000, 'half of the upload on the host');
    u.req.destroy(); // the sender goes away: fewer bytes than its Content-Length
    await expect(u.answer).rejects.toThrow();
    await waitFor(() => (parts(s.home).length === 0 ? true : undefined), 20_000, 'the part to be dropped');
    expect((await s.api.get(`/v1/messages/${part.id}`)).status).toBe(404);
    expect((await s.api.get(`/v1/devices/${s.device}`)).json.queued).toBe(0);
    // The same stream carries the next file (another cut-through) normally.
    const next = randomData(3 * MiB);
    const r = await s.api.send(s.device, 'next.bin', next);
    expect(r.status).toBe(202);
    await s.api.until(r.json.id as string, ['handled']);
    expect(rec.runs().map((x) => x.name)).toEqual(['warm.txt', 'next.bin']);
    expect(rec.runs()[1]!.sha).toBe(sha256(next));
    await agent.kill();
  });

  it('kill -9 of the relay mid cut-through: nothing handled, the part dropped on the new session, the retry handled once', async () => {
    const { s, agent, rec } = await ready();
    const size = 6 * MiB;
    const body = randomData(size);
    const u = openUpload(s, 'crash.bin', size);
    await writeRange(u, body, 0, size / 2);
    await waitFor(() => parts(s.home).find((p) => p.size === size / 2), 30_000, 'half of the upload on the host');
    s.relay.proc.child.kill('SIGKILL');
    await new Promise((r) => s.relay.proc.child.once('exit', r));
    await expect(u.answer).rejects.toThrow(); // no 202: the sender will send again
    const again = await startRelay(s.data, [], s.relay.info.agents);
    s.api.base = `http://${again.info.http}`;
    // The agent's next session is a new one (the relay's sessions died with it): the part goes.
    await waitFor(() => (agent.logs.filter((l) => l.msg === 'session started').length >= 2 ? true : undefined), 30_000, 'a new session');
    await waitFor(() => (parts(s.home).length === 0 ? true : undefined), 20_000, 'the part to be dropped');
    expect((await s.api.get(`/v1/devices/${s.device}`)).json.queued).toBe(0);
    expect(rec.runs().length).toBe(1);
    const retry = await s.api.send(s.device, 'crash.bin', body);
    expect(retry.status).toBe(202);
    await s.api.until(retry.json.id as string, ['handled']);
    const runs = rec.runs();
    expect(runs.map((r) => r.name)).toEqual(['warm.txt', 'crash.bin']);
    expect(runs[1]!.sha).toBe(sha256(body));
    await agent.kill();
  });

  it('a device that stalls is let go and gets the rest from the stored body; a part corrupted on its disk is caught by the hash', async () => {
    const { s, agent, rec } = await ready();
    const size = 48 * MiB;
    const body = randomData(size);
    const u = openUpload(s, 'stall.bin', size);
    await writeRange(u, body, 0, 2 * MiB);
    const part = await waitFor(() => parts(s.home).find((p) => p.size >= MiB), 30_000, 'the start of the upload on the host');
    agent.child.kill('SIGSTOP');
    try {
      await writeRange(u, body, 2 * MiB, size);
      u.end();
      const answer = await u.answer;
      expect(answer.status).toBe(202);
      expect(answer.json.id).toBe(part.id); // the upload did not wait for the stopped device
      // Bit rot on the host while it is stopped: the bytes it kept no longer match the file.
      const fd = fs.openSync(path.join(s.home, 'spool', `${part.id}.part`), 'r+');
      const first = Buffer.alloc(1);
      fs.readSync(fd, first, 0, 1, 0);
      fs.writeSync(fd, Uint8Array.of(first[0]! ^ 0xff), 0, 1, 0);
      fs.closeSync(fd);
    } finally {
      agent.child.kill('SIGCONT');
    }
    await s.relay.proc.waitLog((l) => l.msg === 'cut-through let go; the rest follows from the stored body' && l.id === part.id, 30_000);
    await agent.waitLog((l) => l.msg === 'transfer resumed from the bytes on disk' && l.id === part.id, 30_000);
    await agent.waitLog((l) => l.msg === 'SHA-256 mismatch; asking for the file again' && l.id === part.id, 60_000);
    const done = await s.api.until(part.id, ['handled'], 120_000);
    expect(done.status).toBe('handled');
    // Handled once, with the bytes the sender sent (the corrupted ones never were).
    expect(rec.runs().filter((r) => r.id === part.id)).toEqual([{ id: part.id, sha: sha256(body), name: 'stall.bin' }]);
    await agent.kill();
  });

  it('a file whose stored bytes are wrong fails the host\'s check every time and ends failed (DW_CHECKSUM), handled nowhere', async () => {
    const dir = tempDir();
    const rec = recordingHandler(dir);
    const s = await setup({ rules: [rec.rule] });
    // Stored while the host is away (store and forward), then the relay's copy rots on its disk.
    const body = randomData(2 * MiB + 7);
    const posted = await s.api.send(s.device, 'rotten.bin', body);
    expect(posted.status).toBe(202);
    const id = posted.json.id as string;
    const blob = path.join(s.data, 'blobs', id);
    const fd = fs.openSync(blob, 'r+');
    fs.writeSync(fd, Uint8Array.of(0x55, 0xaa), 0, 2, MiB);
    fs.closeSync(fd);
    const agent = spawnCli(['agent', '--home', s.home]);
    const done = await s.api.until(id, ['failed', 'handled'], 60_000);
    expect(done.status).toBe('failed');
    expect(done.result).toMatchObject({ code: 'DW_CHECKSUM' });
    const mismatches = agent.logs.filter((l) => l.msg === 'SHA-256 mismatch; asking for the file again' && l.id === id);
    expect(mismatches.length).toBe(3);
    expect(rec.runs().filter((r) => r.id === id)).toEqual([]);
    await waitFor(() => parts(s.home).length === 0, 10_000, 'the agent to drop the part');
    await agent.kill();
  });
});

const why = redisUnavailableReason();
if (why) console.log(`skipping the cluster cut-through test: ${why}`);

describe.skipIf(why !== undefined)('cut-through on a cluster node (bodies in Redis)', () => {
  it('the node holding the device cuts the upload through, stores the body in Redis, and the host handles it once', async () => {
    const c = await startCluster({ nodes: 2 });
    const [a] = c.nodes as [(typeof c.nodes)[0]];
    c.front.backends = () => [a.agentsPort]; // the agent on node1, where the upload comes
    const agent = await recordingAgent(c, 'plant');
    const token = await cliOk(['relay', 'token', 'add', 'web', '--store', c.url]);
    const api = new Api(a.http, token);
    await waitFor(async () => ((await owners(c.client, ['plant'])).get('plant')!.node === a.name ? true : undefined), 20_000, 'the device on node1');
    const warm = await api.send('plant', 'warm.txt', 'first');
    await api.until(warm.json.id as string, ['handled']);
    const size = 6 * MiB + 7;
    const body = randomData(size);
    const u = openUpload({ api, device: 'plant' }, 'big.bin', size);
    await writeRange(u, body, 0, size - 1000);
    const part = await waitFor(() => parts(agent.home).find((p) => p.size === size - 1000), 30_000, 'the part to hold what was uploaded so far');
    expect(agent.runs().length).toBe(1);
    await u.write(body.subarray(size - 1000));
    u.end();
    expect((await u.answer).status).toBe(202);
    await api.until(part.id, ['handled']);
    expect(agent.runs().filter((r) => r.id === part.id)).toEqual([{ id: part.id, sha: sha256(body), name: 'big.bin' }]);
    await agent.proc.kill();
  }, 120_000);
});
