/**
 * TCP to the relay blocked: the agent (and `dropwire init`) falls back to WSS within 10 s, says so in its log
 * and in `status`, and tries the address that worked first next time. Two kinds of block: a closed port
 * (refused at once) and a port whose SYNs go unanswered (a listener that never accepts, its queue full),
 * where the fallback waits for the TCP dial's few seconds.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { describe, expect, it, onTestFinished } from 'vitest';
import { cli, cliOk, setup, spawnCli, startRelay, tempDir, waitFor } from '../helpers/cli.js';
import { freePort, hasOpenssl, makeCa, serverCert } from '../helpers/reach.js';

/** A loopback port that takes no new connection: a listener that never accepts, with its queue filled. */
async function silentPort(): Promise<number | undefined> {
  const py = ['/usr/bin/python3', '/usr/local/bin/python3'].find((f) => fs.existsSync(f));
  if (!py) return undefined;
  const child = spawn(py, ['-c', 'import socket,sys,time\ns=socket.socket()\ns.bind(("127.0.0.1",0))\ns.listen(0)\nprint(s.getsockname()[1],flush=True)\ntime.sleep(600)'], { stdio: ['ignore', 'pipe', 'ignore'] });
  onTestFinished(() => void child.kill('SIGKILL'));
  const port = await new Promise<number>((resolve, reject) => {
    child.stdout!.once('data', (d: Buffer) => resolve(Number(d.toString().trim())));
    child.once('exit', () => reject(new Error('python exited')));
  });
  // Fill the accept queue; after that the kernel drops new SYNs and a dial just waits.
  for (let i = 0; i < 4; i++) {
    const s = net.connect({ host: '127.0.0.1', port });
    s.on('error', () => {});
    onTestFinished(() => void s.destroy());
  }
  const probe = await new Promise<boolean>((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    const t = setTimeout(() => (s.destroy(), resolve(true)), 1500);
    s.once('connect', () => (clearTimeout(t), s.destroy(), resolve(false)));
    s.once('error', () => (clearTimeout(t), resolve(false)));
  });
  return probe ? port : undefined;
}

async function relayWithTls() {
  const dir = tempDir();
  const ca = makeCa(dir);
  const cert = serverCert(ca);
  const data = path.join(dir, 'relay');
  const relay = await startRelay(data, ['--tls-cert', cert.cert, '--tls-key', cert.key]);
  const wss = (relay.info as unknown as { websocket: string }).websocket;
  return { dir, ca, data, relay, wss };
}

describe.skipIf(!hasOpenssl())('TCP blocked: fallback to WSS', () => {
  it('a closed TCP port: init and the agent fall back to WSS within 10 s, say so in the log and status, and remember it', async () => {
    const { dir, ca, data, wss } = await relayWithTls();
    const home = path.join(dir, 'agent');
    const closed = `127.0.0.1:${await freePort()}`;
    // The token carries both addresses (--public takes a list).
    const enrollToken = await cliOk(['relay', 'device', 'add', 'shop', '--data', data, '--public', `${closed},${wss}`]);
    const r = JSON.parse(Buffer.from(enrollToken.slice(4), 'base64url').toString()) as { r: unknown };
    expect(r.r).toEqual([closed, wss]);
    // Enrollment goes through the same dialing: TCP refused, then WSS.
    const init = await cliOk(['init', enrollToken, '--home', home, '--ca', ca.caCert]);
    expect(init).toContain(`with the relay at ${wss} (wss)`);
    const cfg = JSON.parse(fs.readFileSync(path.join(home, 'config.json'), 'utf8')) as Record<string, unknown>;
    expect(cfg.relays).toEqual([closed, wss]);
    expect(cfg.ca).toBe(ca.caCert);

    // Forget what enrollment learned, so the agent starts with TCP as a fresh host would.
    fs.rmSync(path.join(home, 'route.json'));
    const t0 = Date.now();
    const agent = spawnCli(['agent', '--home', home]);
    const fell = await agent.waitLog((l) => l.msg === 'TCP to the relay failed; falling back to WSS', 10_000);
    expect(fell).toMatchObject({ from: closed, to: wss, code: 'DW_RELAY_UNREACHABLE' });
    const started = await agent.waitLog((l) => l.msg === 'session started', 10_000);
    const took = Date.now() - t0;
    console.log(`closed TCP port: session over WSS ${took} ms after the agent started`);
    expect(took).toBeLessThan(10_000);
    expect(started).toMatchObject({ relay: wss, transport: 'wss' });

    const status = await cli(['status', '--home', home]);
    expect(status.stdout).toMatch(new RegExp(`relay\\s+${wss.replace(/[/.]/g, '\\$&')}: connected since`));
    expect(status.stdout).toMatch(/transport\s+wss \(addresses: /);
    const json = JSON.parse((await cli(['status', '--json', '--home', home])).stdout) as Record<string, unknown>;
    expect(json).toMatchObject({ connected: true, transport: 'wss', relay: wss, relays: [closed, wss] });
    await agent.kill();

    // Next start: the address that worked comes first; TCP is not tried at all.
    expect(JSON.parse(fs.readFileSync(path.join(home, 'route.json'), 'utf8'))).toMatchObject({ address: wss });
    const again = spawnCli(['agent', '--home', home]);
    await again.waitLog((l) => l.msg === 'session started' && l.transport === 'wss');
    expect(again.logs.filter((l) => l.msg === 'TCP to the relay failed; falling back to WSS')).toEqual([]);
    await again.kill();
  });

  it('TCP that never connects (SYNs unanswered): the agent gives up on it after a few seconds and is on WSS within 10 s', async () => {
    const silent = await silentPort();
    if (silent === undefined) {
      console.log('skipped: no python3 for a never-accepting listener, or this kernel answers its SYNs');
      return;
    }
    const { dir, ca, data, wss } = await relayWithTls();
    const home = path.join(dir, 'agent');
    const blocked = `127.0.0.1:${silent}`;
    const enrollToken = await cliOk(['relay', 'device', 'add', 'shop', '--data', data]);
    await cliOk(['init', enrollToken, '--home', home, '--relay', wss, '--ca', ca.caCert]);
    fs.rmSync(path.join(home, 'route.json'));
    const t0 = Date.now();
    const agent = spawnCli(['agent', '--home', home, '--relay', `${blocked},${wss}`, '--transport', 'auto']);
    const fell = await agent.waitLog((l) => l.msg === 'TCP to the relay failed; falling back to WSS', 10_000);
    expect(String(fell.reason)).toContain('no connection within');
    await agent.waitLog((l) => l.msg === 'session started' && l.transport === 'wss', 10_000);
    const took = Date.now() - t0;
    console.log(`unanswered TCP: session over WSS ${took} ms after the agent started`);
    expect(took).toBeLessThan(10_000);
    await waitFor(async () => {
      const s = JSON.parse((await cli(['status', '--json', '--home', home])).stdout) as Record<string, unknown>;
      return s.connected && s.transport === 'wss' ? true : undefined;
    }, 10_000, 'status to show wss');
    await agent.kill();
  });

  it('--transport tcp never falls back; a list with no address for the chosen transport, or an unknown transport, is refused', async () => {
    const { dir, ca, data, wss } = await relayWithTls();
    const home = path.join(dir, 'agent');
    const closed = `127.0.0.1:${await freePort()}`;
    const enrollToken = await cliOk(['relay', 'device', 'add', 'shop', '--data', data]);
    const tcpOnly = await cli(['init', enrollToken, '--home', home, '--relay', `${closed},${wss}`, '--transport', 'tcp', '--ca', ca.caCert]);
    expect(tcpOnly.code).toBe(1);
    expect(tcpOnly.stderr).toContain('DW_RELAY_UNREACHABLE');
    expect(tcpOnly.stderr).not.toContain('wss://');
    const bad = await cli(['init', enrollToken, '--home', home, '--relay', 'wss://127.0.0.1:1/v1/connect', '--transport', 'tcp']);
    expect(bad.stderr).toContain('DW_BAD_ADDRESS');
    const badMode = await cli(['init', enrollToken, '--home', home, '--transport', 'udp']);
    expect(badMode.code).toBe(2);
  });
});

describe('configs from before address lists', () => {
  it('an old config with one "relay": "HOST:PORT" still works, over TCP, and status says tcp', async () => {
    const s = await setup();
    const file = path.join(s.home, 'config.json');
    const cfg = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
    expect(cfg.relays).toEqual([s.relay.info.agents]);
    delete cfg.relays;
    cfg.relay = s.relay.info.agents;
    fs.writeFileSync(file, JSON.stringify(cfg, null, 2));
    fs.rmSync(path.join(s.home, 'route.json'), { force: true });
    const agent = spawnCli(['agent', '--home', s.home]);
    expect(await agent.waitLog((l) => l.msg === 'session started')).toMatchObject({ relay: s.relay.info.agents, transport: 'tcp' });
    const st = JSON.parse((await cli(['status', '--json', '--home', s.home])).stdout) as Record<string, unknown>;
    expect(st).toMatchObject({ connected: true, transport: 'tcp', relay: s.relay.info.agents, relays: [s.relay.info.agents] });
    const r = await s.api.send(s.device, 'old.txt', 'still delivered');
    await s.api.until(r.json.id as string, ['handled']);
    await agent.kill();
    // A bad address in the list is named, and the agent refuses to start (exit 78, EX_CONFIG).
    cfg.relay = 'relay.example.com';
    fs.writeFileSync(file, JSON.stringify(cfg, null, 2));
    const bad = await cli(['agent', '--home', s.home]);
    expect(bad.code).toBe(78);
    expect(bad.stderr).toContain("DW_BAD_CONFIG");
    expect(bad.stderr).toContain("field 'relay'");
  });
});
