/**
 * Agent → real nginx (TLS with a certificate from a test CA, README's snippet) → relay /v1/connect: the agent
 * enrolls through it, 100 files and one of 50 MiB arrive exactly once, and `nginx -s reload` and killing
 * nginx's workers in the middle of the big transfer cost a resumed session each, never a new one.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { cli, cliOk, randomData, recordingHandler, sha256, spawnCli, startRelay, tempDir, waitFor } from '../helpers/cli.js';
import { freePort, hasBinary, hasOpenssl, makeCa, NGINX, serverCert, startNginx } from '../helpers/reach.js';

const MiB = 1024 * 1024;

/** POST through nginx's HTTPS (the sender side of the snippet), trusting the test CA. */
function post(base: string, ca: Buffer, token: string, filename: string, body: Uint8Array | string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = https.request(`${base}/v1/messages?to=shop&filename=${encodeURIComponent(filename)}`, { method: 'POST', ca, agent: false, headers: { authorization: `Bearer ${token}` } }, (res) => {
      let text = '';
      res.on('data', (d: Buffer) => (text += d.toString()));
      res.on('end', () => (res.statusCode === 202 ? resolve((JSON.parse(text) as { id: string }).id) : reject(new Error(`HTTP ${res.statusCode}: ${text}`))));
    });
    req.once('error', reject);
    if (typeof body === 'string') fs.createReadStream(body).pipe(req);
    else req.end(body);
  });
}

function bigFile(dir: string, size: number): { file: string; sha: string } {
  const file = path.join(dir, 'big.bin');
  const fd = fs.openSync(file, 'w');
  const h = createHash('sha256');
  const block = randomData(MiB);
  for (let pos = 0; pos < size; pos += MiB) {
    block[0] = (pos / MiB) & 0xff;
    fs.writeSync(fd, block);
    h.update(block);
  }
  fs.closeSync(fd);
  return { file, sha: h.digest('hex') };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe.skipIf(!hasBinary(NGINX) || !hasOpenssl())('through nginx (TLS terminated, WebSocket proxied)', () => {
  it('enrolls, delivers 100 files and one of 50 MiB exactly once; nginx reload and killed workers mid-transfer resume the session', async () => {
    const dir = tempDir();
    const ca = makeCa(dir);
    const cert = serverCert(ca);
    const caPem = fs.readFileSync(ca.caCert);
    const data = path.join(dir, 'relay');
    const home = path.join(dir, 'agent');
    const relay = await startRelay(data);
    const nginx = await startNginx(dir, { port: await freePort(), upstream: relay.info.http, cert: cert.cert, key: cert.key });
    const base = `https://127.0.0.1:${nginx.port}`;
    const wss = `wss://127.0.0.1:${nginx.port}/v1/connect`;

    // Enrollment goes through nginx too.
    const enrollToken = await cliOk(['relay', 'device', 'add', 'shop', '--data', data]);
    expect(await cliOk(['init', enrollToken, '--home', home, '--relay', wss, '--ca', ca.caCert])).toContain('(wss)');
    const rec = recordingHandler(dir);
    const cfgFile = path.join(home, 'config.json');
    fs.writeFileSync(cfgFile, JSON.stringify({ ...(JSON.parse(fs.readFileSync(cfgFile, 'utf8')) as object), rules: [rec.rule] }, null, 2));
    const agent = spawnCli(['agent', '--home', home]);
    expect(await agent.waitLog((l) => l.msg === 'session started')).toMatchObject({ relay: wss, transport: 'wss' });
    await relay.proc.waitLog((l) => l.msg === 'session started' && l.transport === 'ws'); // nginx speaks plain ws to the relay

    const token = await cliOk(['relay', 'token', 'add', 'web', '--data', data]);
    const sent = new Map<string, string>();
    for (let i = 0; i < 100; i++) {
      const body = randomData(512 + ((i * 7919) % (128 * 1024)));
      sent.set(await post(base, caPem, token, `f${i}.bin`, body), sha256(body));
    }
    const big = bigFile(dir, 50 * MiB);
    const bigId = await post(base, caPem, token, 'big.bin', big.file);
    sent.set(bigId, big.sha);

    // While the big file is on its way: kill nginx's workers (the connection dies at once), and once the
    // session has resumed through a new worker, reload nginx (the old worker ends it shortly after).
    const part = path.join(home, 'spool', `${bigId}.part`);
    const partSize = () => (fs.existsSync(part) ? fs.statSync(part).size : -1);
    const resumes = () => agent.logs.filter((l) => l.msg === 'session resumed').length;
    const cuts: string[] = [];
    await waitFor(() => (partSize() > 0 ? true : undefined), 60_000, 'the big file to start arriving');
    const atKill = partSize();
    const killedWorkers = nginx.killWorkers();
    cuts.push(`killed ${killedWorkers.length} workers at ${(atKill / MiB).toFixed(1)} MiB`);
    await waitFor(() => (resumes() >= 1 ? true : undefined), 30_000, 'a resume after the workers died');
    const atReload = partSize();
    nginx.reload();
    cuts.push(`reload at ${atReload < 0 ? 'the end' : `${(atReload / MiB).toFixed(1)} MiB`}`);
    await waitFor(() => (resumes() >= 2 ? true : undefined), 30_000, 'a resume after the reload');
    for (const id of sent.keys()) await waitFor(() => (rec.runs().some((r) => r.id === id) ? true : undefined), 120_000, `message ${id} handled`);

    const runs = rec.runs();
    expect(runs.length).toBe(101);
    expect(new Set(runs.map((r) => r.id)).size).toBe(101);
    for (const r of runs) expect(r.sha).toBe(sent.get(r.id));

    const started = agent.logs.filter((l) => l.msg === 'session started').length;
    console.log(`nginx: ${cuts.join(', ')}; ${resumes()} sessions resumed, ${started} started`);
    expect(killedWorkers.length).toBeGreaterThanOrEqual(1);
    expect(atKill).toBeGreaterThan(0);
    expect(atKill).toBeLessThan(50 * MiB); // the cut came mid-transfer
    expect(started).toBe(1);
    expect(resumes()).toBeGreaterThanOrEqual(2);
    expect(agent.logs.filter((l) => l.msg === 'session resumed').every((l) => l.transport === 'wss')).toBe(true);
    expect(relay.proc.logs.filter((l) => l.msg === 'session resumed').length).toBeGreaterThanOrEqual(2);
    const status = JSON.parse((await cli(['status', '--json', '--home', home])).stdout) as Record<string, unknown>;
    expect(status).toMatchObject({ connected: true, transport: 'wss', relay: wss, sessions: 1 });
    expect(status.resumes as number).toBeGreaterThanOrEqual(2);
    await agent.kill();
  });
});
