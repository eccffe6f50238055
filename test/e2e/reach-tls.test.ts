/**
 * `relay start --tls-cert --tls-key`: the HTTP port serves HTTPS (curl with the test CA gets 202) and agents
 * enroll and connect over wss:// on it; a new certificate is picked up on SIGHUP and when the files change,
 * new connections see it, and connections already open (an HTTPS keep-alive socket, the agent's session)
 * stay up.
 */
import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import tls from 'node:tls';
import { describe, expect, it, onTestFinished } from 'vitest';
import { cli, cliOk, spawnCli, startRelay, tempDir, waitFor } from '../helpers/cli.js';
import { hasOpenssl, makeCa, serverCert } from '../helpers/reach.js';

const fingerprint = (file: string) => new X509Certificate(fs.readFileSync(file)).fingerprint256;

/** The certificate a new TLS connection to `port` is shown. */
function presented(port: number, ca: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, ca: fs.readFileSync(ca) }, () => {
      resolve(s.getPeerX509Certificate()!.fingerprint256);
      s.end();
    });
    s.once('error', reject);
  });
}

function curlPost(url: string, o: { ca: string; token: string; body: string }): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    execFile('curl', ['-sS', '--cacert', o.ca, '-H', `authorization: Bearer ${o.token}`, '--data-binary', o.body, '-w', '\n%{http_code}', url], { timeout: 30_000 }, (err, stdout, stderr) => {
      if (err) return reject(new Error(`curl failed: ${stderr}`));
      const i = stdout.lastIndexOf('\n');
      resolve({ status: Number(stdout.slice(i + 1)), body: stdout.slice(0, i) });
    });
  });
}

const hasCurl = fs.existsSync('/usr/bin/curl') || fs.existsSync('/bin/curl');

describe.skipIf(!hasOpenssl() || !hasCurl)('relay start --tls-cert', () => {
  it('serves HTTPS (curl gets 202), agents over wss, and a replaced certificate on SIGHUP or file change for new connections only', async () => {
    const dir = tempDir();
    const ca = makeCa(dir);
    const first = serverCert(ca, 'first');
    const cert = path.join(dir, 'relay.pem');
    const key = path.join(dir, 'relay.key');
    fs.copyFileSync(first.cert, cert);
    fs.copyFileSync(first.key, key);
    const data = path.join(dir, 'relay');
    const home = path.join(dir, 'agent');
    const relay = await startRelay(data, ['--tls-cert', cert, '--tls-key', key]);
    const port = Number(relay.info.http.split(':').pop());
    const wss = `wss://127.0.0.1:${port}/v1/connect`;
    expect((relay.info as unknown as { websocket: string }).websocket).toBe(wss);

    // Enroll and run the agent over wss on the HTTPS port, trusting the test CA with --ca.
    const enrollToken = await cliOk(['relay', 'device', 'add', 'shop', '--data', data]);
    const init = await cliOk(['init', enrollToken, '--home', home, '--relay', wss, '--ca', ca.caCert]);
    expect(init).toContain('(wss)');
    const agent = spawnCli(['agent', '--home', home]);
    const started = await agent.waitLog((l) => l.msg === 'session started');
    expect(started).toMatchObject({ relay: wss, transport: 'wss' });

    // curl with the test CA: 202.
    const token = await cliOk(['relay', 'token', 'add', 'web', '--data', data]);
    const body = path.join(dir, 'hello.txt');
    fs.writeFileSync(body, 'hello over https\n');
    const url = `https://127.0.0.1:${port}/v1/messages?to=shop&filename=hello.txt`;
    const r1 = await curlPost(url, { ca: ca.caCert, token, body: `@${body}` });
    expect(r1.status).toBe(202);
    expect(await presented(port, ca.caCert)).toBe(fingerprint(first.cert));

    // A long-lived HTTPS response opened before the change: the event feed.
    let feed = '';
    let feedClosed = false;
    const feedCert = await new Promise<string>((resolve, reject) => {
      const req = https.get(`https://127.0.0.1:${port}/v1/events`, { ca: fs.readFileSync(ca.caCert), headers: { authorization: `Bearer ${token}` }, agent: false }, (res) => {
        expect(res.statusCode).toBe(200);
        res.on('data', (d: Buffer) => (feed += d.toString()));
        res.once('close', () => (feedClosed = true));
        resolve((res.socket as tls.TLSSocket).getPeerX509Certificate()!.fingerprint256);
      });
      req.once('error', reject);
      onTestFinished(() => void req.destroy());
    });
    expect(feedCert).toBe(fingerprint(first.cert));

    // Replace the files and send SIGHUP.
    const second = serverCert(ca, 'second');
    fs.copyFileSync(second.cert, cert);
    fs.copyFileSync(second.key, key);
    process.kill(relay.proc.pid, 'SIGHUP');
    await relay.proc.waitLog((l) => l.msg === 'TLS certificate reloaded' && l.why === 'SIGHUP');
    expect(await presented(port, ca.caCert)).toBe(fingerprint(second.cert));
    const r2 = await curlPost(url, { ca: ca.caCert, token, body: `@${body}` });
    expect(r2.status).toBe(202);

    // The feed opened under the old certificate is still up and carries the new message's events.
    const id2 = (JSON.parse(r2.body) as { id: string }).id;
    await waitFor(() => (feed.includes(id2) ? true : undefined), 20_000, 'the new message on the old feed');
    expect(feedClosed).toBe(false);

    // Without a signal: a changed file is picked up by itself.
    const third = serverCert(ca, 'third');
    fs.copyFileSync(third.cert, cert);
    fs.copyFileSync(third.key, key);
    await relay.proc.waitLog((l) => l.msg === 'TLS certificate reloaded' && l.why === 'file changed', 20_000);
    await waitFor(async () => ((await presented(port, ca.caCert)) === fingerprint(third.cert) ? true : undefined), 10_000, 'the third certificate');

    // A broken pair is refused and the current one stays.
    fs.writeFileSync(key, 'not a key\n');
    process.kill(relay.proc.pid, 'SIGHUP');
    await relay.proc.waitLog((l) => l.msg === 'TLS certificate not reloaded; the previous one stays in use');
    expect(await presented(port, ca.caCert)).toBe(fingerprint(third.cert));

    // The agent's session was never interrupted by any of it.
    const status = await cli(['status', '--json', '--home', home]);
    const s = JSON.parse(status.stdout) as Record<string, unknown>;
    expect(s).toMatchObject({ connected: true, transport: 'wss', relay: wss, sessions: 1, resumes: 0 });
    expect(agent.logs.filter((l) => l.msg === 'connection to relay lost')).toEqual([]);
    expect(feedClosed).toBe(false);
    await agent.kill();
  });

  it('trusts a private CA from NODE_EXTRA_CA_CERTS as well as --ca; without either, DW_TLS_UNTRUSTED names the remedy; a trusted certificate does not replace the key pin', async () => {
    const dir = tempDir();
    const ca = makeCa(dir);
    const cert = serverCert(ca);
    const data = path.join(dir, 'relay');
    const relay = await startRelay(data, ['--tls-cert', cert.cert, '--tls-key', cert.key]);
    const wss = (relay.info as unknown as { websocket: string }).websocket;
    const token = await cliOk(['relay', 'device', 'add', 'shop', '--data', data]);
    const untrusted = await cli(['init', token, '--home', path.join(dir, 'a'), '--relay', wss]);
    expect(untrusted.code).toBe(1);
    expect(untrusted.stderr).toContain('DW_TLS_UNTRUSTED');
    expect(untrusted.stderr).toContain('--ca FILE or NODE_EXTRA_CA_CERTS');
    const home = path.join(dir, 'b');
    await cliOk(['init', token, '--home', home, '--relay', wss], { env: { NODE_EXTRA_CA_CERTS: ca.caCert } });
    const agent = spawnCli(['agent', '--home', home], { env: { NODE_EXTRA_CA_CERTS: ca.caCert } });
    expect(await agent.waitLog((l) => l.msg === 'session started')).toMatchObject({ transport: 'wss' });
    await agent.kill();

    // TLS is trusted, but the pinned relay key is what authenticates the relay: another key is refused.
    const file = path.join(home, 'config.json');
    const cfg = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
    cfg.relayKey = 'ab'.repeat(32);
    fs.writeFileSync(file, JSON.stringify(cfg, null, 2));
    const pinned = spawnCli(['agent', '--home', home], { env: { NODE_EXTRA_CA_CERTS: ca.caCert } });
    const st = await waitFor(async () => {
      const r = JSON.parse((await cli(['status', '--json', '--home', home])).stdout) as Record<string, unknown>;
      return (r.reconnects as number) >= 3 ? r : undefined;
    }, 30_000, 'three failed handshakes');
    // The relay cannot read message 1 (it is sealed to another key) and hangs up: never a session.
    expect(st).toMatchObject({ connected: false, transport: 'wss', sessions: 0 });
    expect(pinned.logs.filter((l) => l.msg === 'session started')).toEqual([]);
    await pinned.kill();
  });

  it('refuses to start with an unusable certificate (DW_BAD_TLS), with only one of the two options, or with a bad --public address', async () => {
    const dir = tempDir();
    const bad = path.join(dir, 'bad.pem');
    fs.writeFileSync(bad, 'nothing here\n');
    const r = await cli(['relay', 'start', '--data', path.join(dir, 'relay'), '--listen', '127.0.0.1:0', '--http', '127.0.0.1:0', '--tls-cert', bad, '--tls-key', bad]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('DW_BAD_TLS');
    const half = await cli(['relay', 'start', '--data', path.join(dir, 'relay'), '--listen', '127.0.0.1:0', '--http', '127.0.0.1:0', '--tls-cert', bad]);
    expect(half.code).toBe(1);
    expect(half.stderr).toContain('DW_BAD_TLS');
    const pub = await cli(['relay', 'start', '--data', path.join(dir, 'relay'), '--listen', '127.0.0.1:0', '--http', '127.0.0.1:0', '--public', '127.0.0.1:7390,https://relay/v1/connect']);
    expect(pub.code).toBe(1);
    expect(pub.stderr).toContain('DW_BAD_ADDRESS');
  });
});
