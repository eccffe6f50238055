/**
 * The sender HTTP API against a real relay (`relay start` as a child process) and real agents on loopback:
 * what a new operator and a hostile client meet first (issue 11).
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { cli, cliOk, randomData, recordingHandler, setup, sha256, spawnCli, startRelay, tempDir, waitFor } from '../helpers/cli.js';

type Answer = { status: number; json: Record<string, unknown> };
const code = (r: Answer) => (r.json.error as { code: string } | undefined)?.code;
const historyOf = (m: Record<string, unknown>) => (m.history as { status: string; detail?: Record<string, unknown> }[]);

async function call(base: string, token: string, method: string, pathname: string): Promise<Answer> {
  const res = await fetch(`${base}${pathname}`, { method, headers: { authorization: `Bearer ${token}` } });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

/** Writes raw bytes to the HTTP port and reads until the relay closes: status line, headers and body. */
async function raw(http: string, bytes: Buffer | string, o: { end?: boolean } = {}): Promise<{ status: number; headers: string; body: string }> {
  const [host, port] = [http.slice(0, http.lastIndexOf(':')), Number(http.slice(http.lastIndexOf(':') + 1))];
  const text = await new Promise<string>((resolve, reject) => {
    const socket = net.connect({ host, port });
    let got = '';
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no answer; got so far: ${got.slice(0, 200)}`));
    }, 20_000);
    socket.on('data', (d: Buffer) => (got += d.toString('latin1')));
    socket.on('error', () => {});
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(got);
    });
    socket.write(bytes, () => {
      if (o.end) socket.end();
    });
  });
  const head = text.slice(0, text.indexOf('\r\n\r\n'));
  return { status: Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0), headers: head, body: text.slice(text.indexOf('\r\n\r\n') + 4) };
}

describe('POST /v1/messages: bodies and names', () => {
  it('an empty body is refused with 400 DW_EMPTY_BODY and stores nothing; allowEmpty=1 takes it', async () => {
    const s = await setup();
    let r = await s.api.send(s.device, 'order.xml', '');
    expect([r.status, code(r)]).toEqual([400, 'DW_EMPTY_BODY']);
    expect((r.json.error as { message: string }).message).toContain('allowEmpty=1');
    // The same through multipart (an empty file field).
    const form = new FormData();
    form.append('file', new Blob([]), 'order.xml');
    const res = await fetch(`${s.api.base}/v1/messages?to=${s.device}`, { method: 'POST', headers: { authorization: `Bearer ${s.token}` }, body: form });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe('DW_EMPTY_BODY');
    expect((await s.api.get(`/v1/devices/${s.device}`)).json.queued).toBe(0);
    r = await s.api.send(s.device, 'marker.flag', '', {}, '&allowEmpty=1');
    expect(r.status).toBe(202);
    expect(r.json).toMatchObject({ size: 0, status: 'queued' });
    expect((await s.api.get(`/v1/devices/${s.device}`)).json.queued).toBe(1);
  });

  it('a POST without a file name says that one is required; a bad name is still DW_BAD_NAME', async () => {
    const s = await setup();
    const res = await fetch(`${s.api.base}/v1/messages?to=${s.device}`, { method: 'POST', headers: { authorization: `Bearer ${s.token}` }, body: '<order/>' });
    const r = { status: res.status, json: (await res.json()) as Record<string, unknown> };
    expect([r.status, code(r)]).toEqual([400, 'DW_BAD_NAME']);
    expect((r.json.error as { message: string }).message).toMatch(/required.*\?filename=NAME/);
    const long = await s.api.send(s.device, 'n'.repeat(1025), '<order/>');
    expect([long.status, code(long)]).toEqual([400, 'DW_BAD_NAME']);
    expect((long.json.error as { message: string }).message).toContain('1 to 1024 bytes');
    expect((await s.api.get(`/v1/devices/${s.device}`)).json.queued).toBe(0);
  });

  it('Idempotency-Key: the same request again is 200 with the first message; another body, to or filename is 422', async () => {
    const s = await setup();
    await cliOk(['relay', 'device', 'add', 'kiosk', '--data', s.data]);
    const key = { 'idempotency-key': 'order-7' };
    const first = await s.api.send(s.device, 'order-7.xml', '<order n="7"/>', key);
    expect(first.status).toBe(202);
    const again = await s.api.send(s.device, 'order-7.xml', '<order n="7"/>', key);
    expect(again.status).toBe(200);
    expect(again.json.id).toBe(first.json.id);
    for (const [to, filename, body, what] of [
      [s.device, 'order-7.xml', '<order n="8"/>', 'body'],
      ['kiosk', 'order-7.xml', '<order n="7"/>', 'to'],
      [s.device, 'order-8.xml', '<order n="7"/>', 'filename'],
    ] as const) {
      const r = await s.api.send(to, filename, body, key);
      expect([r.status, code(r)]).toEqual([422, 'DW_IDEMPOTENCY_MISMATCH']);
      expect((r.json.error as { message: string }).message).toContain(what);
      expect((r.json.error as { message: string }).message).toContain(String(first.json.id));
    }
    // Only the first message exists; no body file was left behind by the refused ones.
    expect((await s.api.get(`/v1/devices/${s.device}`)).json.queued).toBe(1);
    expect((await s.api.get('/v1/devices/kiosk')).json.queued).toBe(0);
    expect(fs.readdirSync(path.join(s.data, 'blobs', 'tmp'))).toEqual([]);
    // Keys of the relay's own retries are reserved.
    const reserved = await s.api.send(s.device, 'a.xml', '<a/>', { 'idempotency-key': 'dropwire:retry:x' });
    expect([reserved.status, code(reserved)]).toEqual([400, 'DW_BAD_REQUEST']);
  });
});

describe('sent means written to a live connection', () => {
  it('a message posted while the agent is stopped stays queued (online: false), and is sent once it is back', async () => {
    const dir = tempDir();
    const rec = recordingHandler(dir);
    const s = await setup({ rules: [rec.rule] });
    let agent = spawnCli(['agent', '--home', s.home]);
    await agent.waitLog((l) => l.msg === 'session started');
    const live = await s.api.send(s.device, 'first.xml', '<first/>');
    expect(live.json).toMatchObject({ status: 'queued', online: true });
    await s.api.until(live.json.id as string, ['handled']);
    // An orderly stop: the relay keeps the session for a resume (it lingers), but the device is offline.
    await agent.kill('SIGTERM');
    await waitFor(async () => ((await s.api.get(`/v1/devices/${s.device}`)).json.online === false ? true : undefined), 20_000, 'offline');
    const later = await s.api.send(s.device, 'later.xml', '<later/>');
    expect(later.status).toBe(202);
    expect(later.json).toMatchObject({ status: 'queued', online: false });
    // Give a delivery loop every chance to write it into the lingering session.
    await new Promise((r) => setTimeout(r, 2_000));
    const waiting = await s.api.message(later.json.id as string);
    expect(waiting.status).toBe('queued');
    expect(historyOf(waiting).map((h) => h.status)).toEqual(['queued']);
    agent = spawnCli(['agent', '--home', s.home]);
    const done = await s.api.until(later.json.id as string, ['handled']);
    expect(historyOf(done).map((h) => h.status)).toEqual(['queued', 'sent', 'received', 'handled']);
    expect(rec.runs().map((r) => r.name)).toEqual(['first.xml', 'later.xml']);
    await agent.kill();
  });
});

describe('long poll', () => {
  it('?wait= answers as soon as the message expires, and as soon as it is cancelled', async () => {
    const s = await setup(); // no agent: nothing is delivered
    const short = await s.api.send(s.device, 'short.xml', '<short/>', {}, '&ttl=1');
    let t0 = Date.now();
    const expired = await s.api.message(short.json.id as string, 30);
    const expiredAfter = Date.now() - t0;
    expect(expired.status).toBe('expired');
    const other = await s.api.send(s.device, 'other.xml', '<other/>');
    t0 = Date.now();
    const poll = s.api.message(other.json.id as string, 30);
    await new Promise((r) => setTimeout(r, 500));
    const del = await call(s.api.base, s.token, 'DELETE', `/v1/messages/${other.json.id}`);
    expect(del.status).toBe(200);
    const cancelled = await poll;
    const cancelledAfter = Date.now() - t0;
    expect(cancelled.status).toBe('cancelled');
    console.log(`long poll (wait=30) answered ${expiredAfter} ms after a ttl=1 post (expired), ${cancelledAfter} ms after the poll began (cancelled at 500 ms)`);
    // Both answered on the change, not at the end of the 30 s wait.
    expect(expiredAfter).toBeLessThan(20_000);
    expect(cancelledAfter).toBeLessThan(20_000);
  });
});

describe('existence leak', () => {
  it('a scoped token gets the same 404 DW_UNKNOWN_DEVICE for a device outside its scope as for a missing one', async () => {
    const s = await setup();
    const scoped = await cliOk(['relay', 'token', 'add', 'other', '--to', 'other*', '--data', s.data]);
    const post = async (to: string) => {
      const res = await fetch(`${s.api.base}/v1/messages?to=${to}&filename=a.xml`, { method: 'POST', body: '<a/>', headers: { authorization: `Bearer ${scoped}` } });
      return { status: res.status, json: (await res.json()) as Record<string, unknown> };
    };
    const existing = await post(s.device);
    const missing = await post('nosuch');
    expect([existing.status, code(existing)]).toEqual([404, 'DW_UNKNOWN_DEVICE']);
    expect([missing.status, code(missing)]).toEqual([404, 'DW_UNKNOWN_DEVICE']);
    // The texts differ only by the name asked for.
    const text = (r: Answer, name: string) => (r.json.error as { message: string }).message.replace(name, 'NAME');
    expect(text(existing, s.device)).toBe(text(missing, 'nosuch'));
    const dev = await call(s.api.base, scoped, 'GET', `/v1/devices/${s.device}`);
    const noDev = await call(s.api.base, scoped, 'GET', '/v1/devices/nosuch');
    expect([dev.status, code(dev)]).toEqual([404, 'DW_UNKNOWN_DEVICE']);
    expect([noDev.status, code(noDev)]).toEqual([404, 'DW_UNKNOWN_DEVICE']);
    expect(text(dev, s.device)).toBe(text(noDev, 'nosuch'));
  });
});

describe('malformed requests get a 4xx with a coded JSON body', () => {
  it('bad escapes, truncated multipart, huge headers and URLs, unknown methods, non-HTTP bytes; an aborted upload is an info line', async () => {
    const s = await setup();
    const http = s.relay.info.http;
    const auth = `authorization: Bearer ${s.token}\r\n`;
    const cases: { what: string; bytes: Buffer | string; status: number; code: string }[] = [
      { what: 'GET /v1/%', bytes: `GET /v1/% HTTP/1.1\r\nhost: x\r\n${auth}connection: close\r\n\r\n`, status: 400, code: 'DW_BAD_REQUEST' },
      { what: 'GET /v1/messages/%E0%A4%A', bytes: `GET /v1/messages/%E0%A4%A HTTP/1.1\r\nhost: x\r\n${auth}connection: close\r\n\r\n`, status: 400, code: 'DW_BAD_REQUEST' },
      { what: '20 KB header', bytes: `GET /v1/devices HTTP/1.1\r\nhost: x\r\nx-big: ${'a'.repeat(20_000)}\r\n\r\n`, status: 431, code: 'DW_HEADERS_TOO_LARGE' },
      { what: '70 KB URL', bytes: `GET /v1/messages/${'a'.repeat(70_000)} HTTP/1.1\r\nhost: x\r\n\r\n`, status: 414, code: 'DW_URL_TOO_LONG' },
      { what: 'unknown method', bytes: `BREW /v1/messages HTTP/1.1\r\nhost: x\r\n\r\n`, status: 405, code: 'DW_METHOD_NOT_ALLOWED' },
      { what: 'known method, wrong endpoint', bytes: `PUT /v1/messages HTTP/1.1\r\nhost: x\r\n${auth}content-length: 0\r\nconnection: close\r\n\r\n`, status: 405, code: 'DW_METHOD_NOT_ALLOWED' },
      { what: 'TLS ClientHello', bytes: Buffer.from('160301020001000200030300000000000000000000000000', 'hex'), status: 400, code: 'DW_BAD_REQUEST' },
      { what: 'random bytes', bytes: Buffer.from([0, 1, 2, 255, 254, 13, 10, 13, 10]), status: 400, code: 'DW_BAD_REQUEST' },
    ];
    const boundary = 'dwtestboundary';
    const partial = `--${boundary}\r\ncontent-disposition: form-data; name="file"; filename="cut.xml"\r\ncontent-type: text/xml\r\n\r\n<order>cut here`;
    cases.push({
      what: 'truncated multipart',
      bytes: `POST /v1/messages?to=${s.device} HTTP/1.1\r\nhost: x\r\n${auth}content-type: multipart/form-data; boundary=${boundary}\r\ncontent-length: ${partial.length}\r\nconnection: close\r\n\r\n${partial}`,
      status: 400,
      code: 'DW_BAD_REQUEST',
    });
    for (const c of cases) {
      const r = await raw(http, c.bytes);
      expect({ what: c.what, status: r.status }).toEqual({ what: c.what, status: c.status });
      expect(r.headers.toLowerCase()).toContain('content-type: application/json');
      expect({ what: c.what, code: (JSON.parse(r.body) as { error: { code: string } }).error.code }).toEqual({ what: c.what, code: c.code });
    }
    expect((await s.api.get(`/v1/devices/${s.device}`)).json.queued).toBe(0);

    // An upload the client gives up on halfway: an info line, no error, nothing stored.
    const head = `POST /v1/messages?to=${s.device}&filename=half.bin HTTP/1.1\r\nhost: x\r\n${auth}content-length: 1000000\r\n\r\n`;
    const socket = net.connect({ host: '127.0.0.1', port: Number(http.slice(http.lastIndexOf(':') + 1)) });
    socket.on('error', () => {});
    await new Promise<void>((r) => socket.once('connect', () => r()));
    socket.write(head + 'x'.repeat(300_000));
    await new Promise((r) => setTimeout(r, 300));
    socket.destroy();
    const line = await s.relay.proc.waitLog((l) => l.msg === 'request aborted by the client');
    expect(line.level).toBe(30);
    await new Promise((r) => setTimeout(r, 300));
    expect(s.relay.proc.logs.filter((l) => (l.level as number) >= 50)).toEqual([]);
    expect(fs.readdirSync(path.join(s.data, 'blobs', 'tmp'))).toEqual([]);
    expect((await s.api.get(`/v1/devices/${s.device}`)).json.queued).toBe(0);
  });

  it('GET /v1/events?after= takes only an event id', async () => {
    const s = await setup();
    for (const q of ['?after=abc', '?after=-1', '?after=1e3']) {
      const res = await fetch(`${s.api.base}/v1/events${q}`, { headers: { authorization: `Bearer ${s.token}` } });
      expect({ q, status: res.status }).toEqual({ q, status: 400 });
      expect(((await res.json()) as { error: { code: string; message: string } }).error).toMatchObject({ code: 'DW_BAD_REQUEST', message: expect.stringContaining('after') });
    }
    const res = await fetch(`${s.api.base}/v1/events`, { headers: { authorization: `Bearer ${s.token}`, 'last-event-id': 'x' } });
    expect(res.status).toBe(400);
    const ok = new AbortController();
    const stream = await fetch(`${s.api.base}/v1/events?after=0`, { headers: { authorization: `Bearer ${s.token}` }, signal: ok.signal });
    expect(stream.status).toBe(200);
    ok.abort();
  });
});

/** A handler that fails the first time it runs and succeeds after (a marker file remembers). */
function flakyHandler(dir: string): unknown {
  const script = path.join(dir, 'flaky.mjs');
  fs.writeFileSync(
    script,
    `import fs from 'node:fs';
const marker = ${JSON.stringify(path.join(dir, 'ran-once'))};
if (!fs.existsSync(marker)) { fs.writeFileSync(marker, ''); process.exit(3); }
fs.appendFileSync(${JSON.stringify(path.join(dir, 'handled.log'))}, process.argv[2] + '\\n');\n`,
  );
  return { match: '*', action: { type: 'exec', command: process.execPath, args: [script, '{id}'], timeoutS: 60 } };
}

describe('cancel and retry', () => {
  it('DELETE cancels a message the host does not have (200, again 200); never delivered; 409 DW_TOO_LATE once handled', async () => {
    const dir = tempDir();
    const rec = recordingHandler(dir);
    const s = await setup({ rules: [rec.rule] });
    const doomed = await s.api.send(s.device, 'doomed.xml', '<doomed/>');
    const del = await call(s.api.base, s.token, 'DELETE', `/v1/messages/${doomed.json.id}`);
    expect(del.status).toBe(200);
    expect(del.json.status).toBe('cancelled');
    expect(historyOf(del.json).at(-1)).toMatchObject({ status: 'cancelled', detail: { reason: 'cancelled by token web' } });
    const again = await call(s.api.base, s.token, 'DELETE', `/v1/messages/${doomed.json.id}`);
    expect([again.status, again.json.status]).toEqual([200, 'cancelled']);
    // The agent starts: the next message is handled, the cancelled one never ran.
    const agent = spawnCli(['agent', '--home', s.home]);
    const next = await s.api.send(s.device, 'next.xml', '<next/>');
    await s.api.until(next.json.id as string, ['handled']);
    expect(rec.runs().map((r) => r.name)).toEqual(['next.xml']);
    expect((await s.api.message(doomed.json.id as string)).status).toBe('cancelled');
    const late = await call(s.api.base, s.token, 'DELETE', `/v1/messages/${next.json.id}`);
    expect([late.status, code(late)]).toEqual([409, 'DW_TOO_LATE']);
    // Someone else's message is not there at all.
    const stranger = await cliOk(['relay', 'token', 'add', 'stranger', '--to', 'nothing-*', '--data', s.data]);
    const foreign = await call(s.api.base, stranger, 'DELETE', `/v1/messages/${next.json.id}`);
    expect([foreign.status, code(foreign)]).toEqual([404, 'DW_NOT_FOUND']);
    await agent.kill();
  });

  it('a cancel while the real agent is mid-file: granted, the handler never runs, the partial spool is removed', async () => {
    const dir = tempDir();
    const rec = recordingHandler(dir);
    const s = await setup({ rules: [rec.rule] });
    const agent = spawnCli(['agent', '--home', s.home]);
    await agent.waitLog((l) => l.msg === 'session started');
    const size = 128 * 1024 * 1024;
    const file = path.join(dir, 'big.bin');
    fs.writeFileSync(file, Buffer.alloc(size, 7));
    const posted = fetch(`${s.api.base}/v1/messages?to=${s.device}&filename=big.bin`, { method: 'POST', headers: { authorization: `Bearer ${s.token}` }, body: await fs.openAsBlob(file) });
    posted.catch(() => {});
    // The file reaches the host while it is uploaded (PROTOCOL 7.18): the host stalls mid-file, during the
    // upload or after it; the relay lets the stalled delivery go and stores the message (202) meanwhile.
    const spool = path.join(s.home, 'spool');
    const partName = await waitFor(() => fs.readdirSync(spool).find((f) => f.endsWith('.part') && fs.statSync(path.join(spool, f)).size > 2 * 1024 * 1024), 60_000, 'part of the file on the host');
    process.kill(agent.pid, 'SIGSTOP'); // the host stalls mid-file
    let del: Answer;
    let onHost = 0;
    let id = '';
    let part = '';
    try {
      const res = await posted;
      expect(res.status).toBe(202);
      id = ((await res.json()) as { id: string }).id;
      part = path.join(spool, `${id}.part`);
      expect(path.basename(part)).toBe(partName);
      onHost = fs.statSync(part).size;
      del = await call(s.api.base, s.token, 'DELETE', `/v1/messages/${id}`);
    } finally {
      process.kill(agent.pid, 'SIGCONT');
    }
    expect([del.status, del.json.status]).toEqual([200, 'cancelled']);
    console.log(`cancelled with ${(onHost / 1024 / 1024).toFixed(1)} of 128 MiB on the host`);
    await waitFor(() => (fs.existsSync(part) ? undefined : true), 20_000, 'the partial spool removed');
    // Later messages flow; the cancelled one never reached a handler.
    const next = await s.api.send(s.device, 'next.xml', '<next/>');
    await s.api.until(next.json.id as string, ['handled']);
    expect(rec.runs().map((r) => r.name)).toEqual(['next.xml']);
    expect(fs.existsSync(path.join(s.home, 'spool', id))).toBe(false);
    expect((await s.api.message(id)).status).toBe('cancelled');
    await agent.kill();
  });

  it('POST …/retry queues a failed message again as a new message linked both ways; asked twice, the same retry', async () => {
    const dir = tempDir();
    const s = await setup({ rules: [flakyHandler(dir)] });
    const agent = spawnCli(['agent', '--home', s.home]);
    const first = await s.api.send(s.device, 'order.xml', '<order/>');
    const failed = await s.api.until(first.json.id as string, ['failed', 'handled']);
    expect(failed.status).toBe('failed');
    const retry = await call(s.api.base, s.token, 'POST', `/v1/messages/${first.json.id}/retry`);
    expect(retry.status).toBe(202);
    expect(retry.json).toMatchObject({ status: 'queued', retryOf: first.json.id, filename: 'order.xml', sha256: first.json.sha256, online: true });
    expect(retry.json.id).not.toBe(first.json.id);
    const twice = await call(s.api.base, s.token, 'POST', `/v1/messages/${first.json.id}/retry`);
    expect([twice.status, twice.json.id]).toEqual([200, retry.json.id]);
    const handled = await s.api.until(retry.json.id as string, ['handled', 'failed']);
    expect(handled.status).toBe('handled');
    expect(handled.retryOf).toBe(first.json.id);
    expect(historyOf(handled)[0]).toMatchObject({ status: 'queued', detail: { retryOf: first.json.id } });
    const old = await s.api.message(first.json.id as string);
    expect(old).toMatchObject({ status: 'failed', retriedAs: retry.json.id });
    expect(fs.readFileSync(path.join(dir, 'handled.log'), 'utf8').trim().split('\n')).toEqual([retry.json.id]);
    // Only failed, rejected or expired messages.
    const notAgain = await call(s.api.base, s.token, 'POST', `/v1/messages/${retry.json.id}/retry`);
    expect([notAgain.status, code(notAgain)]).toEqual([409, 'DW_NOT_RETRYABLE']);
    await agent.kill();
  });

  it('`dropwire relay message cancel|retry ID` on the relay host: through the running relay, or on the store when it is stopped', async () => {
    const s = await setup(); // no agent
    const a = await s.api.send(s.device, 'a.xml', '<a/>');
    const out = await cliOk(['relay', 'message', 'cancel', a.json.id as string, '--data', s.data, '--json']);
    expect(JSON.parse(out)).toMatchObject({ id: a.json.id, status: 'cancelled' });
    expect((await s.api.message(a.json.id as string)).status).toBe('cancelled');
    // A body over 64 KiB (a file in blobs/), expired before any host took it, then retried and delivered.
    const big = randomData(300 * 1024);
    const expiring = await s.api.send(s.device, 'b.bin', big, {}, '&ttl=1');
    await s.api.until(expiring.json.id as string, ['expired']);
    // The retry gets the same 1 s to live from its own creation: have the host online first.
    const agent = spawnCli(['agent', '--home', s.home]);
    await agent.waitLog((l) => l.msg === 'session started');
    const retried = JSON.parse(await cliOk(['relay', 'message', 'retry', expiring.json.id as string, '--data', s.data, '--json'])) as Record<string, unknown>;
    expect(retried).toMatchObject({ status: 'queued', retryOf: expiring.json.id });
    expect((await s.api.message(expiring.json.id as string)).retriedAs).toBe(retried.id);
    const delivered = await s.api.until(retried.id as string, ['handled', 'failed', 'rejected', 'expired']);
    await agent.kill();
    expect(delivered).toMatchObject({ status: 'handled', sha256: sha256(big), retryOf: expiring.json.id });
    expect(fs.readFileSync(path.join(s.home, 'inbox', 'b.bin')).equals(Buffer.from(big))).toBe(true);
    const handledNot = await cli(['relay', 'message', 'retry', retried.id as string, '--data', s.data]);
    expect(handledNot.code).toBe(1);
    expect(handledNot.stderr).toContain('DW_NOT_RETRYABLE');
    // The relay stopped: the CLI works on the store; a queued message can still be cancelled.
    const c = await s.api.send(s.device, 'c.xml', '<c/>');
    await s.relay.proc.kill('SIGTERM');
    const offline = await cliOk(['relay', 'message', 'cancel', c.json.id as string, '--data', s.data]);
    expect(offline).toBe(`${c.json.id}\tcancelled`);
    const unknown = await cli(['relay', 'message', 'cancel', 'nosuch', '--data', s.data]);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toContain('DW_NOT_FOUND');
    // Started again, the relay agrees.
    const again = await startRelay(s.data);
    const seen = await call(`http://${again.info.http}`, s.token, 'GET', `/v1/messages/${c.json.id}`);
    expect(seen.json.status).toBe('cancelled');
  });
});
