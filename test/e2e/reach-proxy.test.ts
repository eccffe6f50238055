/**
 * Agents behind a company proxy: `dropwire init --proxy` and the agent with HTTPS_PROXY reach the relay's
 * wss://…/v1/connect through a real squid and a real tinyproxy (CONNECT, basic authentication); files
 * arrive exactly once; `status` says "wss via proxy"; a wrong proxy password is a clear DW_PROXY_AUTH.
 */
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { cli, cliOk, recordingHandler, randomData, sha256, spawnCli, startRelay, tempDir, waitFor } from '../helpers/cli.js';
import { freePort, hasBinary, hasOpenssl, makeCa, serverCert, SQUID, SQUID_NCSA, startSquid, startTinyproxy, TINYPROXY, type Daemon } from '../helpers/reach.js';

const USER = 'kitchen';
const PASSWORD = 's3cret.pw';
const proxyUrl = (port: number, password = PASSWORD) => `http://${USER}:${encodeURIComponent(password)}@127.0.0.1:${port}`;

const proxies: { name: string; available: boolean; why: string; start: (dir: string, port: number) => Promise<Daemon> }[] = [
  { name: 'tinyproxy', available: hasBinary(TINYPROXY), why: `${TINYPROXY} not installed`, start: (dir, port) => startTinyproxy(dir, { port, user: USER, password: PASSWORD }) },
  { name: 'squid', available: hasBinary(SQUID) && hasBinary(SQUID_NCSA), why: `${SQUID} or ${SQUID_NCSA} not installed`, start: (dir, port) => startSquid(dir, { port, user: USER, password: PASSWORD }) },
];

for (const p of proxies) {
  if (!p.available) console.log(`reach-proxy: ${p.name} skipped: ${p.why}`);
  describe.skipIf(!p.available || !hasOpenssl())(`through ${p.name} (CONNECT, basic auth)`, () => {
    it('enrolls with --proxy, runs with HTTPS_PROXY, delivers exactly once, status says "wss via proxy"; a wrong password is DW_PROXY_AUTH', async () => {
      const dir = tempDir();
      fs.chmodSync(dir, 0o755); // the proxy may run as another user
      const ca = makeCa(dir);
      const cert = serverCert(ca);
      const data = path.join(dir, 'relay');
      const home = path.join(dir, 'agent');
      const relay = await startRelay(data, ['--tls-cert', cert.cert, '--tls-key', cert.key]);
      const wss = (relay.info as unknown as { websocket: string }).websocket;
      const proxy = await p.start(dir, await freePort());
      // Nothing from the machine's own proxy settings.
      const env = { HTTPS_PROXY: '', https_proxy: '', HTTP_PROXY: '', http_proxy: '', NO_PROXY: '', no_proxy: '' };

      const enrollToken = await cliOk(['relay', 'device', 'add', 'shop', '--data', data]);
      // A wrong password: refused by the proxy, said plainly, nothing written.
      const wrong = await cli(['init', enrollToken, '--home', home, '--relay', wss, '--ca', ca.caCert, '--proxy', proxyUrl(proxy.port, 'wrong')], { env });
      expect(wrong.code).toBe(1);
      expect(wrong.stderr).toContain('DW_PROXY_AUTH');
      expect(wrong.stderr).toMatch(/refused the user name and password in the proxy URL \(HTTP 40[17]\)/);
      expect(wrong.stderr).not.toContain('wrong'); // the password is never printed
      expect(fs.existsSync(path.join(home, 'config.json'))).toBe(false);

      const init = await cliOk(['init', enrollToken, '--home', home, '--relay', wss, '--ca', ca.caCert, '--proxy', proxyUrl(proxy.port)], { env });
      expect(init).toContain('(wss via proxy)');
      // The agent takes the proxy from HTTPS_PROXY (the config's copy removed to show it).
      const cfgFile = path.join(home, 'config.json');
      const cfg = JSON.parse(fs.readFileSync(cfgFile, 'utf8')) as Record<string, unknown>;
      expect(cfg.proxy).toBe(proxyUrl(proxy.port));
      delete cfg.proxy;
      const rec = recordingHandler(dir);
      cfg.rules = [rec.rule];
      fs.writeFileSync(cfgFile, JSON.stringify(cfg, null, 2));
      const agent = spawnCli(['agent', '--home', home], { env: { ...env, HTTPS_PROXY: proxyUrl(proxy.port) } });
      const started = await agent.waitLog((l) => l.msg === 'session started');
      expect(started).toMatchObject({ relay: wss, transport: 'wss via proxy', proxy: `http://${USER}:***@127.0.0.1:${proxy.port}` });

      const token = await cliOk(['relay', 'token', 'add', 'web', '--data', data]);
      // Senders post to the HTTPS API directly, trusting the test CA.
      const sent = new Map<string, string>();
      for (let i = 0; i < 20; i++) {
        const body = randomData(1000 + i * 5000);
        const id = await postHttps(relay.info.http, ca.caCert, token, `p${i}.bin`, body);
        sent.set(id, sha256(body));
      }
      await waitFor(() => (rec.runs().length >= sent.size ? true : undefined), 60_000, 'every file handled');
      const runs = rec.runs();
      expect(runs.length).toBe(sent.size);
      for (const r of runs) expect(r.sha).toBe(sent.get(r.id));

      const status = JSON.parse((await cli(['status', '--json', '--home', home])).stdout) as Record<string, unknown>;
      expect(status).toMatchObject({ connected: true, transport: 'wss via proxy', relay: wss });
      expect((await cli(['status', '--home', home])).stdout).toMatch(/transport\s+wss via proxy/);
      // The proxy really carried it: its log names the CONNECT to the relay's port.
      const relayPort = relay.info.http.split(':').pop()!;
      expect(proxy.log()).toMatch(new RegExp(`CONNECT.*127\\.0\\.0\\.1:${relayPort}|127\\.0\\.0\\.1:${relayPort}.*CONNECT|CONNECT 127\\.0\\.0\\.1:${relayPort}`));
      await agent.kill();

      // The running agent with a wrong password: a coded line in its log and in status, and it keeps trying.
      const bad = spawnCli(['agent', '--home', home, '--proxy', proxyUrl(proxy.port, 'wrong')], { env });
      const line = await bad.waitLog((l) => l.msg === 'cannot reach the relay');
      expect(line.code).toBe('DW_PROXY_AUTH');
      const st = await cli(['status', '--json', '--home', home]);
      expect(st.code).toBe(4);
      expect(JSON.parse(st.stdout)).toMatchObject({ connected: false, lastError: 'DW_PROXY_AUTH' });
      await bad.kill();
    });
  });
}

function postHttps(http: string, ca: string, token: string, filename: string, body: Uint8Array): Promise<string> {
  return import('node:https').then(
    (https) =>
      new Promise<string>((resolve, reject) => {
        const req = https.request(
          `https://${http}/v1/messages?to=shop&filename=${filename}`,
          { method: 'POST', ca: fs.readFileSync(ca), headers: { authorization: `Bearer ${token}`, 'content-length': body.length } },
          (res) => {
            let text = '';
            res.on('data', (d: Buffer) => (text += d.toString()));
            res.on('end', () => (res.statusCode === 202 ? resolve((JSON.parse(text) as { id: string }).id) : reject(new Error(`HTTP ${res.statusCode}: ${text}`))));
          },
        );
        req.once('error', reject);
        req.end(body);
      }),
  );
}
