import { createHash } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { describe, expect, it, onTestFinished } from 'vitest';
import { peakRssMiB, randomData, recordingHandler, setup, sha256, spawnCli, startRelay, tempDir, waitFor } from '../helpers/cli.js';

const MiB = 1024 * 1024;

/** Sizes spread evenly on a log scale from 1 KiB to 5 MiB. */
function sizes(n: number): number[] {
  return Array.from({ length: n }, (_, i) => Math.round(1024 * Math.pow(5 * 1024, ((i * 37) % n) / (n - 1))));
}

async function uploadFile(api: { base: string; token: string }, to: string, filename: string, file: string): Promise<Record<string, unknown>> {
  const res = await fetch(`${api.base}/v1/messages?to=${to}&filename=${filename}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${api.token}` },
    body: await fs.openAsBlob(file),
  });
  expect(res.status).toBe(202);
  return (await res.json()) as Record<string, unknown>;
}

/** A file of `size` bytes made of random 1 MiB blocks, and its SHA-256. */
function bigFile(dir: string, size: number): { file: string; sha: string } {
  const file = path.join(dir, 'big.bin');
  const fd = fs.openSync(file, 'w');
  const block = randomData(MiB);
  for (let pos = 0; pos < size; pos += MiB) {
    block[0] = (pos / MiB) & 0xff;
    fs.writeSync(fd, block, 0, Math.min(MiB, size - pos));
  }
  fs.closeSync(fd);
  return { file, sha: sha256File(file) };
}

function sha256File(file: string): string {
  const h = createHash('sha256');
  const fd = fs.openSync(file, 'r');
  const buf = Buffer.allocUnsafe(4 * MiB);
  for (let n; (n = fs.readSync(fd, buf, 0, buf.length, null)) > 0; ) h.update(buf.subarray(0, n));
  fs.closeSync(fd);
  return h.digest('hex');
}


describe('crash safety', () => {
  it('kill -9 of the relay with 200 messages in flight: each handled exactly once, bytes intact', async () => {
    const dir = tempDir();
    const rec = recordingHandler(dir);
    const s = await setup({ rules: [rec.rule] });
    const agent = spawnCli(['agent', '--home', s.home]);
    const sent = new Map<string, string>();
    for (const [i, n] of sizes(200).entries()) {
      const body = randomData(n);
      const r = await s.api.send(s.device, `m${i}.bin`, body);
      expect(r.status).toBe(202);
      sent.set(r.json.id as string, sha256(body));
    }
    await waitFor(() => (rec.runs().length >= 20 ? true : undefined), 60_000, '20 handled');
    const handledBefore = rec.runs().length;
    s.relay.proc.child.kill('SIGKILL');
    await new Promise((r) => s.relay.proc.child.once('exit', r));
    const again = await startRelay(s.data, [], s.relay.info.agents);
    s.api.base = `http://${again.info.http}`;
    for (const id of sent.keys()) await s.api.until(id, ['handled'], 120_000);
    const runs = rec.runs();
    expect(runs.length).toBe(200);
    expect(new Set(runs.map((r) => r.id)).size).toBe(200);
    for (const r of runs) expect(r.sha).toBe(sent.get(r.id));
    console.log(`relay killed after ${handledBefore}/200 handled; all 200 handled once after restart`);
    await agent.kill();
  });

  it('kill -9 of the agent in the middle of a 200 MiB file: the transfer resumes from the disk', async () => {
    const dir = tempDir();
    const rec = recordingHandler(dir);
    const s = await setup({ rules: [rec.rule] });
    const { file, sha } = bigFile(dir, 200 * MiB);
    const sent = await uploadFile(s.api, s.device, 'big.bin', file);
    expect(sent.sha256).toBe(sha);
    let agent = spawnCli(['agent', '--home', s.home]);
    const spool = path.join(s.home, 'spool', `${sent.id}.part`);
    await waitFor(() => (fs.existsSync(spool) && fs.statSync(spool).size > 60 * MiB ? true : undefined), 60_000, 'part of the file on disk');
    agent.child.kill('SIGKILL');
    await new Promise((r) => agent.child.once('exit', r));
    const onDisk = fs.statSync(spool).size;
    agent = spawnCli(['agent', '--home', s.home]);
    const resumed = await agent.waitLog((l) => l.msg === 'transfer resumed from the bytes on disk', 30_000);
    await s.api.until(sent.id as string, ['handled'], 120_000);
    const relayLine = await s.relay.proc.waitLog((l) => l.msg === 'file transfer resumed' && l.id === sent.id);
    const resent = relayLine.resent as number;
    console.log(`agent killed with ${(onDisk / MiB).toFixed(1)} MiB on disk; resumed at ${((resumed.offset as number) / MiB).toFixed(1)} MiB; re-sent ${(resent / MiB).toFixed(2)} MiB`);
    expect(resumed.offset).toBe(onDisk);
    expect(resent).toBeLessThan(16 * MiB);
    const runs = rec.runs();
    expect(runs).toEqual([{ id: sent.id, sha, name: 'big.bin' }]);
    await agent.kill();
  });
});

/** A TCP proxy that cuts every connection through it every `everyMs`. */
async function cuttingProxy(target: string, everyMs: number): Promise<{ port: number; cuts: () => number }> {
  const [host, port] = [target.slice(0, target.lastIndexOf(':')), Number(target.slice(target.lastIndexOf(':') + 1))];
  const sockets = new Set<net.Socket>();
  let cuts = 0;
  const server = net.createServer((client) => {
    const upstream = net.connect({ host, port });
    sockets.add(client).add(upstream);
    client.pipe(upstream).pipe(client);
    const gone = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', gone).on('close', gone);
    upstream.on('error', gone).on('close', gone);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const timer = setInterval(() => {
    if (sockets.size === 0) return;
    cuts++;
    // resetAndDestroy: an RST, like a router dropping the flow; data in flight is lost.
    for (const s of sockets) s.resetAndDestroy();
  }, everyMs);
  onTestFinished(() => {
    clearInterval(timer);
    for (const s of sockets) s.destroy();
    server.close();
  });
  return { port: (server.address() as net.AddressInfo).port, cuts: () => cuts };
}

describe('resume over TCP', () => {
  it('a connection cut every second while messages flow: sessions resume, nothing lost or duplicated', async () => {
    const dir = tempDir();
    const rec = recordingHandler(dir);
    const s = await setup({ rules: [rec.rule] });
    const proxy = await cuttingProxy(s.relay.info.agents, 1000);
    const agent = spawnCli(['agent', '--home', s.home, '--relay', `127.0.0.1:${proxy.port}`]);
    await agent.waitLog((l) => l.msg === 'session started');
    const sent = new Map<string, string>();
    const started = Date.now();
    for (let i = 0; Date.now() - started < 6000 && i < 2000; i++) {
      const body = randomData(1024 + ((i * 7919) % (256 * 1024)));
      const r = await s.api.send(s.device, `f${i}.bin`, body);
      sent.set(r.json.id as string, sha256(body));
      await new Promise((r) => setTimeout(r, 20));
    }
    for (const id of sent.keys()) await s.api.until(id, ['handled'], 60_000);
    const runs = rec.runs();
    expect(runs.length).toBe(sent.size);
    expect(new Set(runs.map((r) => r.id)).size).toBe(sent.size);
    for (const r of runs) expect(r.sha).toBe(sent.get(r.id));
    const resumed = agent.logs.filter((l) => l.msg === 'session resumed').length;
    const startedSessions = agent.logs.filter((l) => l.msg === 'session started').length;
    console.log(`${sent.size} messages, ${proxy.cuts()} cuts, ${resumed} sessions resumed, ${startedSessions} started`);
    expect(proxy.cuts()).toBeGreaterThanOrEqual(4);
    expect(resumed).toBeGreaterThanOrEqual(proxy.cuts() - 1);
    expect(startedSessions).toBe(1);
    await agent.kill();
  });
});

describe('memory', () => {
  it('a 1 GiB file streams relay to agent with each process under 200 MiB RSS', async () => {
    const dir = tempDir();
    const rec = recordingHandler(dir);
    const s = await setup({ rules: [rec.rule] });
    const { file, sha } = bigFile(dir, 1024 * MiB);
    const agent = spawnCli(['agent', '--home', s.home]);
    const sent = await uploadFile(s.api, s.device, 'huge.bin', file);
    fs.rmSync(file);
    await s.api.until(sent.id as string, ['handled'], 300_000);
    const relayRss = peakRssMiB(s.relay.proc.pid)!;
    const agentRss = peakRssMiB(agent.pid)!;
    console.log(`1 GiB relay -> agent: peak RSS relay ${relayRss.toFixed(0)} MiB, agent ${agentRss.toFixed(0)} MiB`);
    expect(rec.runs()).toEqual([{ id: sent.id, sha, name: 'huge.bin' }]);
    expect(relayRss).toBeLessThan(200);
    expect(agentRss).toBeLessThan(200);
    await agent.kill();
  });
});
