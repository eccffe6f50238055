import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { publishedAt } from '../../src/relay/metrics.js';
import { messageId } from '../../src/relay/http.js';
import { cliOk, setup, spawnCli, waitFor } from '../helpers/cli.js';

const PROMTOOL = '/usr/bin/promtool';
const hasPromtool = fs.existsSync(PROMTOOL);
if (!hasPromtool) console.log('promtool not installed (Debian package prometheus): the lint step is skipped');

/** `promtool check metrics` on a scrape: its exit code and what it said. */
function promtoolCheck(text: string): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    const child = execFile(PROMTOOL, ['check', 'metrics'], { timeout: 30_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, out: stdout + stderr });
    });
    child.stdin!.end(text);
  });
}

/** Sample values by series (`name{labels}`) from the Prometheus text format. */
function samples(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const sp = line.lastIndexOf(' ');
    out.set(line.slice(0, sp), Number(line.slice(sp + 1)));
  }
  return out;
}

describe('publishedAt', () => {
  it('reads the publish time back from a message id', () => {
    expect(publishedAt(messageId(1_780_000_000_123))).toBe(1_780_000_000_123);
    expect(publishedAt('short')).toBeUndefined();
  });
});

describe('GET /metrics', () => {
  it('after 1,000 messages the counters add up to what was sent; token rules; promtool clean', { timeout: 240_000 }, async () => {
    const s = await setup({ relayArgs: ['--metrics', '127.0.0.1:0'], rules: [] });
    const saved = path.join(s.dir, 'saved');
    const cfg = JSON.parse(fs.readFileSync(path.join(s.home, 'config.json'), 'utf8')) as Record<string, unknown>;
    // *.txt is saved (handled); anything else matches no rule (rejected).
    cfg.rules = [{ match: '*.txt', action: { type: 'save', dir: saved, ifExists: 'rename' } }];
    fs.writeFileSync(path.join(s.home, 'config.json'), JSON.stringify(cfg, null, 2));
    const metricsToken = await cliOk(['relay', 'token', 'add', 'prom', '--metrics', '--data', s.data]);
    const adminToken = await cliOk(['relay', 'token', 'add', 'ops', '--admin', '--data', s.data]);
    const info = JSON.parse(fs.readFileSync(path.join(s.data, 'relay.json'), 'utf8')) as { http: string; metrics: string };
    const onPort = `http://${info.http}/metrics`;
    const scrape = async (url = `http://${info.metrics}/metrics`, token?: string) => {
      const res = await fetch(url, token ? { headers: { authorization: `Bearer ${token}` } } : {});
      return { status: res.status, type: res.headers.get('content-type') ?? '', text: await res.text() };
    };

    // Who may read: on the HTTP port an admin or --metrics token; the sender token and no token may not.
    expect(JSON.parse((await scrape(onPort)).text)).toMatchObject({ error: { code: 'DW_UNAUTHORIZED' } });
    const bySender = await scrape(onPort, s.token);
    expect(bySender.status).toBe(403);
    expect(JSON.parse(bySender.text)).toMatchObject({ error: { code: 'DW_FORBIDDEN' } });
    expect((await scrape(onPort, adminToken)).status).toBe(200);
    const first = await scrape(onPort, metricsToken);
    expect(first.status).toBe(200);
    expect(first.type).toContain('text/plain');
    // A --metrics token cannot send.
    const sendRefused = await fetch(`http://${info.http}/v1/messages?to=${s.device}&filename=a.txt`, { method: 'POST', headers: { authorization: `Bearer ${metricsToken}` }, body: 'x' });
    expect(sendRefused.status).toBe(403);

    // `init` enrolled over one session already; the agent makes one more.
    const sessionsBefore = samples((await scrape()).text).get('dropwire_sessions_total{kind="new"}')!;
    const agent = spawnCli(['agent', '--home', s.home]);
    await waitFor(async () => ((await s.api.get(`/v1/devices/${s.device}`)).json.online === true ? true : undefined), 30_000, 'agent online');

    const TOTAL = 1_000;
    const REJECTED = 100;
    let bodyBytes = 0;
    for (let i = 0; i < TOTAL; i += 50) {
      await Promise.all(
        Array.from({ length: 50 }, async (_, j) => {
          const n = i + j;
          const body = `message ${n} `.repeat(20);
          bodyBytes += body.length;
          const r = await s.api.send(s.device, n < REJECTED ? `m${n}.bin` : `m${n}.txt`, body);
          expect(r.status).toBe(202);
        }),
      );
    }
    const final = (m: Map<string, number>) => ['handled', 'failed', 'rejected', 'expired', 'cancelled'].reduce((a, st) => a + (m.get(`dropwire_messages_total{status="${st}"}`) ?? 0), 0);
    const done = await waitFor(
      async () => {
        const m = samples((await scrape()).text);
        return final(m) >= TOTAL && m.get('dropwire_messages_queued') === 0 ? m : undefined;
      },
      180_000,
      'every message final in /metrics',
    );
    expect(final(done)).toBe(TOTAL);
    expect(done.get('dropwire_messages_total{status="handled"}')).toBe(TOTAL - REJECTED);
    expect(done.get('dropwire_messages_total{status="rejected"}')).toBe(REJECTED);
    expect(done.get('dropwire_messages_total{status="failed"}')).toBe(0);
    expect(done.get('dropwire_message_handled_seconds_count')).toBe(TOTAL - REJECTED);
    expect(done.get('dropwire_message_handled_seconds_bucket{le="+Inf"}')).toBe(TOTAL - REJECTED);
    expect(done.get('dropwire_devices_online')).toBe(1);
    expect(done.get('dropwire_sessions_total{kind="new"}')).toBe(sessionsBefore + 1);
    // Every message was stored (enqueue) and moved at least to sent and to its final status.
    expect(done.get('dropwire_store_write_seconds_count{op="enqueue"}')).toBe(TOTAL);
    expect(done.get('dropwire_store_write_seconds_count{op="set_status"}')).toBeGreaterThanOrEqual(2 * TOTAL);
    expect(done.get('dropwire_link_sent_bytes_total')).toBeGreaterThan(bodyBytes);
    expect(done.get('dropwire_link_received_bytes_total')).toBeGreaterThan(0);
    expect(done.get('process_resident_memory_bytes')).toBeGreaterThan(0);

    // A refused handshake is counted by its code: a second agent home with the same (used) token.
    const reused = await cliOk(['relay', 'device', 'add', 'spare', '--data', s.data]);
    const spareHome = path.join(s.dir, 'spare');
    await cliOk(['init', reused, '--home', spareHome]);
    await cliOk(['relay', 'device', 'remove', 'spare', '--data', s.data]);
    const ghost = spawnCli(['agent', '--home', spareHome]);
    await waitFor(async () => ((samples((await scrape()).text).get('dropwire_handshake_refusals_total{code="DW_UNKNOWN_DEVICE"}') ?? 0) >= 1 ? true : undefined), 30_000, 'refusal counted');
    await ghost.kill();
    await agent.kill();

    if (hasPromtool) {
      const lint = await promtoolCheck((await scrape(onPort, metricsToken)).text);
      expect(lint.out).toBe('');
      expect(lint.code).toBe(0);
    }
  });
});
