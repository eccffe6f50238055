/**
 * Presence of agents on raw TCP (PROTOCOL 4.5): their idle heartbeats come every 20 s and only every third
 * one is a PING, with TCP keep-alive on the agent's socket. A real relay and real agents (CLI processes),
 * through a TCP relay in the test that can stop forwarding without sending FIN or RST (a path cut somewhere
 * between the two hosts: both kernels keep their sockets open).
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { describe, expect, it, onTestFinished } from 'vitest';
import { cliOk, setup, spawnCli, waitFor } from '../helpers/cli.js';
import { WebhookReceiver } from '../helpers/webhook.js';

/** Forwards TCP to `target`; `freeze()` stops moving bytes both ways (sockets stay open), `thaw()` resumes. */
async function pathProxy(target: string): Promise<{ port: number; freeze(): void; thaw(): void; close(): Promise<void> }> {
  const [host, port] = [target.slice(0, target.lastIndexOf(':')), Number(target.slice(target.lastIndexOf(':') + 1))];
  const pairs = new Set<[net.Socket, net.Socket]>();
  let frozen = false;
  const server = net.createServer((a) => {
    const b = net.connect({ host, port });
    const pair: [net.Socket, net.Socket] = [a, b];
    pairs.add(pair);
    for (const [from, to] of [
      [a, b],
      [b, a],
    ] as const) {
      from.on('data', (d) => to.write(d));
      from.on('end', () => to.end());
      from.on('error', () => to.destroy());
      from.on('close', () => {
        to.destroy();
        pairs.delete(pair);
      });
      if (frozen) from.pause();
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as net.AddressInfo).port,
    freeze() {
      frozen = true;
      for (const [a, b] of pairs) (a.pause(), b.pause());
    },
    thaw() {
      frozen = false;
      for (const [a, b] of pairs) (a.resume(), b.resume());
    },
    async close() {
      for (const [a, b] of pairs) (a.destroy(), b.destroy());
      await new Promise((r) => server.close(r));
    },
  };
}

describe('presence on raw TCP (PROTOCOL 4.5)', () => {
  it('online through 65 s of idle heartbeats; a path that stops forwarding: offline within 30 s, online again when it forwards; SIGKILL: offline at once', async () => {
    const hook = new WebhookReceiver();
    await hook.start();
    const s = await setup();
    const out = await cliOk(['relay', 'token', 'add', 'presence-site', '--webhook', hook.url, '--data', s.data]);
    s.api.token = out.split('\n')[0]!;
    const proxy = await pathProxy(s.relay.info.agents);
    onTestFinished(() => proxy.close());
    // The agent dials the relay through the proxy, over TCP only.
    const cfgFile = path.join(s.home, 'config.json');
    const cfg = JSON.parse(fs.readFileSync(cfgFile, 'utf8')) as Record<string, unknown>;
    const via = `127.0.0.1:${proxy.port}`;
    fs.writeFileSync(cfgFile, JSON.stringify({ ...cfg, relay: via, relays: [via], transport: 'tcp' }, null, 2));
    fs.rmSync(path.join(s.home, 'route.json'), { force: true });
    const agent = spawnCli(['agent', '--home', s.home]);
    await agent.waitLog((l) => l.msg === 'session started');
    await waitFor(async () => ((await s.api.get(`/v1/devices/${s.device}`)).json.online === true ? true : undefined), 20_000, 'online');

    // Idle for longer than the relay's idle timeout (25 s) twice over: the heartbeats (ACKs at 20 and 40 s,
    // a PING at 60 s) keep the connection, so no reconnect and no offline.
    await new Promise((r) => setTimeout(r, 65_000));
    expect(hook.of('device.offline', s.device)).toHaveLength(0);
    expect(agent.logs.filter((l) => l.msg === 'connection to relay lost')).toHaveLength(0);
    expect((await s.api.get(`/v1/devices/${s.device}`)).json.online).toBe(true);
    const r1 = await s.api.send(s.device, 'after-idle.xml', '<idle/>');
    await s.api.until(r1.json.id as string, ['handled'], 20_000);

    // The path stops forwarding: no FIN, no RST; the proxy's kernel even acknowledges what the agent sends.
    const onlineBefore = hook.of('device.online', s.device).length;
    const frozenAt = Date.now();
    proxy.freeze();
    await waitFor(() => (hook.of('device.offline', s.device).length === 1 ? true : undefined), 40_000, 'device.offline');
    const offlineAfter = hook.of('device.offline', s.device)[0]!.at - frozenAt;
    console.log(`device.offline ${(offlineAfter / 1000).toFixed(1)} s after the path stopped forwarding`);
    expect(offlineAfter).toBeLessThan(30_000);
    // A message queued meanwhile is delivered once the path forwards again: the relay's close reaches the
    // agent, which redials and resumes its session.
    const queued = await s.api.send(s.device, 'while-cut.xml', '<cut/>');
    expect(queued.status).toBe(202);
    proxy.thaw();
    await waitFor(() => (hook.of('device.online', s.device).length === onlineBefore + 1 ? true : undefined), 30_000, 'device.online again');
    await s.api.until(queued.json.id as string, ['handled'], 30_000);

    // A killed agent: its kernel closes the socket, the relay tells offline after the 1.5 s grace.
    const killedAt = Date.now();
    await agent.kill('SIGKILL');
    await waitFor(() => (hook.of('device.offline', s.device).length === 2 ? true : undefined), 20_000, 'device.offline after SIGKILL');
    const killedAfter = hook.of('device.offline', s.device)[1]!.at - killedAt;
    console.log(`device.offline ${(killedAfter / 1000).toFixed(1)} s after SIGKILL`);
    expect(killedAfter).toBeLessThan(10_000);
  }, 240_000);
});
