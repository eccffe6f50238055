import { createHmac, timingSafeEqual } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { cli, cliOk, setup, spawnCli, tempDir, waitFor } from '../helpers/cli.js';
import { WebhookReceiver, type Received } from '../helpers/webhook.js';

/** A relay, an enrolled agent home, and a sender token with a webhook pointing at `hook`. */
async function withWebhook(hook: WebhookReceiver, rules?: unknown[]) {
  const s = await setup(rules ? { rules } : {});
  const out = await cliOk(['relay', 'token', 'add', 'shop-site', '--webhook', hook.url, '--data', s.data]);
  const [token, secretLine] = out.split('\n');
  const secret = secretLine!.replace('webhook secret: ', '');
  s.api.token = token!;
  return { ...s, secret };
}

/** README "Verifying a webhook", step by step. */
function verify(r: Received, secret: string, toleranceMs = 5 * 60_000): boolean {
  // 1. Read the Dropwire-Signature header: t=<ms>,v1=<hex>.
  const header = String(r.headers['dropwire-signature'] ?? '');
  const parts = Object.fromEntries(header.split(',').map((p) => p.split('=', 2) as [string, string]));
  const t = Number(parts.t);
  // 2. Compute HMAC-SHA256 with the webhook secret over `<t>.<raw body>`, hex.
  const expected = createHmac('sha256', secret).update(`${parts.t}.${r.raw}`).digest('hex');
  // 3. Compare in constant time, and refuse old timestamps (replays).
  const a = Buffer.from(expected);
  const b = Buffer.from(parts.v1 ?? '');
  return a.length === b.length && timingSafeEqual(a, b) && Math.abs(Date.now() - t) < toleranceMs;
}

describe('presence', () => {
  it('SIGSTOP: offline within 30 s with a webhook; SIGCONT: online and queued messages flow', async () => {
    const hook = new WebhookReceiver();
    await hook.start();
    const s = await withWebhook(hook);
    const agent = spawnCli(['agent', '--home', s.home]);
    await waitFor(async () => ((await s.api.get(`/v1/devices/${s.device}`)).json.online === true ? true : undefined), 20_000, 'online');
    const api = `http://${s.relay.info.http}`;
    expect((await cli(['online', s.device, '--api', api, '--token', s.api.token])).code).toBe(0);
    // On an enrolled host, without a token: through the local agent and its session.
    const other = await cliOk(['relay', 'device', 'add', 'kiosk', '--data', s.data]);
    const kioskHome = path.join(tempDir(), 'kiosk');
    await cliOk(['init', other, '--home', kioskHome]);
    const kiosk = spawnCli(['agent', '--home', kioskHome]);
    await kiosk.waitLog((l) => l.msg === 'session started');
    const fromHost = await cli(['online', s.device, '--home', kioskHome, '--json']);
    expect(fromHost.code).toBe(0);
    expect(JSON.parse(fromHost.stdout)).toMatchObject({ name: s.device, online: true });
    const stoppedAt = Date.now();
    process.kill(agent.pid, 'SIGSTOP');
    try {
      await waitFor(() => (hook.of('device.offline', s.device).length === 1 ? true : undefined), 35_000, 'device.offline');
      const offlineAfter = hook.of('device.offline', s.device)[0]!.at - stoppedAt;
      console.log(`device.offline ${(offlineAfter / 1000).toFixed(1)} s after SIGSTOP`);
      expect(offlineAfter).toBeLessThan(30_000);
      expect((await s.api.get(`/v1/devices/${s.device}`)).json).toMatchObject({ online: false });
      const r = await cli(['online', s.device, '--api', api, '--token', s.api.token]);
      expect(r.code).toBe(1);
      expect(r.stdout).toContain('offline');
      expect((await cli(['online', s.device, '--home', kioskHome])).code).toBe(1);
      expect((await cli(['online', 'nobody', '--home', kioskHome])).code).toBe(3);
      const queued = await s.api.send(s.device, 'while-stopped.xml', '<q/>');
      expect(queued.status).toBe(202);
      process.kill(agent.pid, 'SIGCONT');
      await waitFor(() => (hook.of('device.online', s.device).length === 1 ? true : undefined), 30_000, 'device.online again');
      expect(hook.of('device.online', s.device)[0]!.body.id).toBeGreaterThan(hook.of('device.offline', s.device)[0]!.body.id);
      await s.api.until(queued.json.id as string, ['handled'], 30_000);
      await waitFor(() => (hook.of('message.handled', queued.json.id as string).length === 1 ? true : undefined), 10_000, 'message.handled');
    } finally {
      process.kill(agent.pid, 'SIGCONT');
    }
    await agent.kill();
    await kiosk.kill();
  });
});

describe('deadlines', () => {
  it('deadline=5 to a stopped agent: overdue within 6 s; ttl=5: expired and never delivered', async () => {
    const hook = new WebhookReceiver();
    await hook.start();
    const s = await withWebhook(hook);
    const sentAt = Date.now();
    const late = await s.api.send(s.device, 'late.xml', '<late/>', {}, '&deadline=5');
    const short = await s.api.send(s.device, 'short.xml', '<short/>', {}, '&ttl=5&deadline=60');
    await waitFor(() => (hook.of('message.overdue', late.json.id as string).length === 1 ? true : undefined), 10_000, 'overdue');
    const overdueAfter = hook.of('message.overdue', late.json.id as string)[0]!.at - sentAt;
    await waitFor(() => (hook.of('message.expired', short.json.id as string).length === 1 ? true : undefined), 10_000, 'expired');
    console.log(`overdue after ${overdueAfter} ms (deadline 5 s)`);
    expect(overdueAfter).toBeGreaterThanOrEqual(5_000);
    expect(overdueAfter).toBeLessThan(6_000);
    expect(await s.api.message(late.json.id as string)).toMatchObject({ status: 'queued', overdue: true });
    const agent = spawnCli(['agent', '--home', s.home]);
    await s.api.until(late.json.id as string, ['handled']);
    expect(await s.api.message(short.json.id as string)).toMatchObject({ status: 'expired' });
    expect(fs.readdirSync(path.join(s.home, 'inbox'))).toEqual(['late.xml']);
    await agent.kill();
  });
});

describe('long poll', () => {
  it('GET /v1/messages/ID?wait=S answers as soon as the status is final', async () => {
    const dir = tempDir();
    const script = path.join(dir, 'slow.mjs');
    fs.writeFileSync(script, `await new Promise((r) => setTimeout(r, 1500));\n`);
    const s = await setup({ rules: [{ match: '*', action: { type: 'exec', command: process.execPath, args: [script] } }] });
    const agent = spawnCli(['agent', '--home', s.home]);
    const r = await s.api.send(s.device, 'slow.xml', '<s/>');
    const asked = Date.now();
    const m = await s.api.message(r.json.id as string, 30);
    const took = Date.now() - asked;
    console.log(`long poll answered after ${took} ms (handler takes 1.5 s, wait=30)`);
    expect(m.status).toBe('handled');
    expect(took).toBeGreaterThanOrEqual(1_000);
    expect(took).toBeLessThan(15_000);
    // A final message answers at once even with a long wait.
    const again = Date.now();
    expect((await s.api.message(r.json.id as string, 30)).status).toBe('handled');
    expect(Date.now() - again).toBeLessThan(5_000);
    await agent.kill();
  });
});

describe('webhooks', () => {
  it('a failing exec handler: message.failed with the exit code within 1 s of the exit', async () => {
    const dir = tempDir();
    const stamp = path.join(dir, 'exit-at');
    const script = path.join(dir, 'fail.mjs');
    fs.writeFileSync(script, `import fs from 'node:fs'; console.error('printer on fire'); fs.writeFileSync(${JSON.stringify(stamp)}, String(Date.now())); process.exitCode = 7;\n`);
    const hook = new WebhookReceiver();
    await hook.start();
    const s = await withWebhook(hook, [{ match: '*', action: { type: 'exec', command: process.execPath, args: [script, '{file}'] } }]);
    const agent = spawnCli(['agent', '--home', s.home]);
    const r = await s.api.send(s.device, 'order.xml', '<o/>');
    await waitFor(() => (hook.of('message.failed', r.json.id as string).length === 1 ? true : undefined), 20_000, 'message.failed');
    const event = hook.of('message.failed', r.json.id as string)[0]!;
    const lag = event.at - Number(fs.readFileSync(stamp, 'utf8'));
    console.log(`message.failed reached the webhook ${lag} ms after the handler exited`);
    expect(lag).toBeLessThan(1_000);
    expect(event.body.message).toMatchObject({ id: r.json.id, status: 'failed', detail: { code: 'DW_EXEC_FAILED', exitCode: 7 } });
    expect(verify(event, s.secret)).toBe(true);
    await agent.kill();
  });

  it('a receiver down for 20 s gets every event after it returns, in order per message, signed', async () => {
    const hook = new WebhookReceiver();
    await hook.start();
    const s = await withWebhook(hook);
    const agent = spawnCli(['agent', '--home', s.home]);
    await waitFor(async () => ((await s.api.get(`/v1/devices/${s.device}`)).json.online === true ? true : undefined), 20_000, 'online');
    await hook.stop();
    const downAt = Date.now();
    const ids: string[] = [];
    for (let i = 0; i < 10; i++) ids.push((await s.api.send(s.device, `m${i}.xml`, `<m n="${i}"/>`)).json.id as string);
    for (const id of ids) await s.api.until(id, ['handled']);
    await new Promise((r) => setTimeout(r, Math.max(0, 20_000 - (Date.now() - downAt))));
    await hook.start(); // same port
    await waitFor(() => (ids.every((id) => hook.of('message.handled', id).length === 1) ? true : undefined), 30_000, 'all events after the return');
    for (const id of ids) {
      const types = hook.received.filter((r) => r.body.message?.id === id).map((r) => r.body.type);
      expect(types).toEqual(['message.received', 'message.handled']);
    }
    const seqs = hook.received.map((r) => r.body.id);
    expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
    expect(new Set(seqs).size).toBe(seqs.length);
    for (const r of hook.received) expect(verify(r, s.secret)).toBe(true);
    // A forged body does not verify.
    const forged = { ...hook.received[1]!, raw: hook.received[1]!.raw.replace('"message.', '"messagE.') };
    expect(verify(forged, s.secret)).toBe(false);
    await agent.kill();
  });
});

/** Reads an SSE stream until `count` events arrived or the time is up. */
async function readEvents(url: string, token: string, count: number, lastEventId?: string, ms = 20_000): Promise<{ id: string; type: string; data: Record<string, unknown> }[]> {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), ms);
  const res = await fetch(url, { headers: { authorization: `Bearer ${token}`, ...(lastEventId ? { 'last-event-id': lastEventId } : {}) }, signal: ac.signal });
  const out: { id: string; type: string; data: Record<string, unknown> }[] = [];
  let buf = '';
  try {
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      buf += Buffer.from(chunk).toString();
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const f = Object.fromEntries(block.split('\n').filter((l) => !l.startsWith(':')).map((l) => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 2)]));
        if (f.id && out.length < count) out.push({ id: f.id, type: f.event!, data: JSON.parse(f.data!) as Record<string, unknown> });
      }
      if (out.length >= count) break; // the client goes away here: a disconnect
    }
  } catch (err) {
    if (!ac.signal.aborted) throw err;
  } finally {
    clearTimeout(timer);
    ac.abort();
  }
  return out;
}

describe('live events (SSE)', () => {
  it('shows the webhook events and resumes with Last-Event-ID without gaps', async () => {
    const hook = new WebhookReceiver();
    await hook.start();
    const s = await withWebhook(hook);
    const url = `http://${s.relay.info.http}/v1/events?after=0`;
    const agent = spawnCli(['agent', '--home', s.home]);
    const ids: string[] = [];
    for (let i = 0; i < 6; i++) ids.push((await s.api.send(s.device, `e${i}.xml`, `<e/>`)).json.id as string);
    for (const id of ids) await s.api.until(id, ['handled']);
    await waitFor(() => (ids.every((id) => hook.of('message.handled', id).length === 1) ? true : undefined));
    // Everything the token may see: queued, sent, received, handled per message, and presence.
    const all = await readEvents(url, s.api.token, ids.length * 4 + 1);
    console.log(all.map((e) => e.type).join(' '));
    expect(all.filter((e) => e.type === 'message.handled').map((e) => (e.data.message as { id: string }).id)).toEqual(ids);
    // The same events as the webhook got (the webhook gets a subset of types).
    const webhookIds = hook.received.map((r) => String(r.body.id));
    const sseIds = all.map((e) => e.id);
    for (const id of webhookIds) expect(sseIds).toContain(id);
    // Disconnect after a few, resume from the last one seen: no gap, no repeat.
    const first = await readEvents(url, s.api.token, 5);
    const rest = await readEvents(`http://${s.relay.info.http}/v1/events`, s.api.token, all.length - 5, first.at(-1)!.id);
    expect([...first, ...rest].map((e) => e.id)).toEqual(sseIds);
    // Another token sees none of this token's messages.
    const other = await cliOk(['relay', 'token', 'add', 'other', '--to', 'nothing-*', '--data', s.data]);
    expect(await readEvents(url, other, 1, undefined, 1_500)).toEqual([]);
    await agent.kill();
  });
});
