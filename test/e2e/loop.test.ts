import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { cli, cliOk, randomData, recordingHandler, setup, sha256, spawnCli, tempDir, waitFor } from '../helpers/cli.js';

describe('dropwire up (npm start)', () => {
  it('prints a curl command that delivers a file into the inbox, status handled', async () => {
    const dir = tempDir();
    const up = spawnCli(['up', '--dir', path.join(dir, '.dropwire'), '--http', '127.0.0.1:0'], { cwd: dir });
    let out = '';
    up.child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    const curlLine = await waitFor(() => out.split('\n').find((l) => l.includes('curl') && l.includes('--data-binary')), 20_000, 'curl line');
    fs.writeFileSync(path.join(dir, 'package.json'), '{"order": 42}\n');
    const answer = await new Promise<string>((resolve, reject) =>
      execFile('sh', ['-c', curlLine.trim()], { cwd: dir, timeout: 20_000 }, (err, stdout) => (err ? reject(err) : resolve(stdout))),
    );
    const sent = JSON.parse(answer) as { id: string; status: string };
    expect(sent.status).toBe('queued');
    const statusLine = out.split('\n').find((l) => l.includes('/v1/messages/ID'))!.trim().replace('ID', sent.id);
    const final = await waitFor(async () => {
      const text = await new Promise<string>((resolve, reject) =>
        execFile('sh', ['-c', statusLine], { cwd: dir, timeout: 20_000 }, (err, stdout) => (err ? reject(err) : resolve(stdout))),
      );
      const m = JSON.parse(text) as { status: string };
      return m.status === 'handled' ? m : undefined;
    });
    expect(final.status).toBe('handled');
    expect(fs.readFileSync(path.join(dir, '.dropwire', 'agent', 'inbox', 'package.json'), 'utf8')).toBe('{"order": 42}\n');
    // Ctrl-C stops both cleanly.
    up.child.kill('SIGINT');
    const code = await new Promise<number | null>((r) => up.child.once('exit', (c) => r(c)));
    expect(code).toBe(0);
    expect(out).toContain('dropwire stopped.');
  });
});

describe('relay and agent', () => {
  it('messages sent while the agent is stopped are delivered in order when it starts', async () => {
    const dir = tempDir();
    const rec = recordingHandler(dir);
    const s = await setup({ rules: [rec.rule] });
    const ids: string[] = [];
    for (let i = 0; i < 30; i++) {
      const r = await s.api.send(s.device, `order-${String(i).padStart(2, '0')}.xml`, `<order n="${i}"/>`);
      expect(r.status).toBe(202);
      ids.push(r.json.id as string);
    }
    expect((await s.api.get(`/v1/devices/${s.device}`)).json).toMatchObject({ name: s.device, online: false, queued: 30 });
    const agent = spawnCli(['agent', '--home', s.home]);
    for (const id of ids) await s.api.until(id, ['handled']);
    expect(rec.runs().map((r) => r.id)).toEqual(ids);
    expect((await s.api.get(`/v1/devices/${s.device}`)).json).toMatchObject({ online: true, queued: 0 });
    const m = await s.api.message(ids[0]!);
    expect((m.history as { status: string }[]).map((h) => h.status)).toEqual(['queued', 'sent', 'received', 'handled']);
    await agent.kill();
  });

  it('multipart uploads and idempotency keys', async () => {
    const s = await setup();
    const agent = spawnCli(['agent', '--home', s.home]);
    const form = new FormData();
    form.append('file', new Blob(['a;b;c\n1;2;3\n']), 'export.dlm');
    const res = await fetch(`${s.api.base}/v1/messages?to=${s.device}`, { method: 'POST', headers: { authorization: `Bearer ${s.token}` }, body: form });
    expect(res.status).toBe(202);
    const sent = (await res.json()) as { id: string; filename: string; sha256: string };
    expect(sent.filename).toBe('export.dlm');
    expect(sent.sha256).toBe(sha256('a;b;c\n1;2;3\n'));
    await s.api.until(sent.id, ['handled']);
    expect(fs.readFileSync(path.join(s.home, 'inbox', 'export.dlm'), 'utf8')).toBe('a;b;c\n1;2;3\n');
    const a = await s.api.send(s.device, 'x.xml', '<x/>', { 'idempotency-key': 'order-7' });
    const b = await s.api.send(s.device, 'x.xml', '<x/>', { 'idempotency-key': 'order-7' });
    expect(a.status).toBe(202);
    expect(b.status).toBe(200);
    expect(b.json.id).toBe(a.json.id);
    await s.api.until(a.json.id as string, ['handled']);
    expect(fs.readdirSync(path.join(s.home, 'inbox')).filter((f) => f.startsWith('x')).length).toBe(1);
    await agent.kill();
  });
});

describe('bad input', () => {
  it('answers 404, 401, 413 with coded errors and stores nothing', async () => {
    const s = await setup({ relayArgs: ['--max-body', String(1024 * 1024)] });
    const err = (r: { json: Record<string, unknown> }) => (r.json.error as { code: string }).code;
    let r = await s.api.send('nobody', 'a.xml', '<a/>');
    expect([r.status, err(r)]).toEqual([404, 'DW_UNKNOWN_DEVICE']);
    const noAuth = await fetch(`${s.api.base}/v1/messages?to=${s.device}&filename=a.xml`, { method: 'POST', body: 'x' });
    expect(noAuth.status).toBe(401);
    expect(((await noAuth.json()) as { error: { code: string } }).error.code).toBe('DW_UNAUTHORIZED');
    const wrong = await fetch(`${s.api.base}/v1/messages?to=${s.device}&filename=a.xml`, { method: 'POST', body: 'x', headers: { authorization: 'Bearer dwt_nope' } });
    expect(wrong.status).toBe(401);
    const scoped = await cliOk(['relay', 'token', 'add', 'other', '--to', 'kitchen-*', '--data', s.data]);
    const other = await fetch(`${s.api.base}/v1/messages?to=${s.device}&filename=a.xml`, { method: 'POST', body: 'x', headers: { authorization: `Bearer ${scoped}` } });
    // Outside the token's scope answers like a missing device (no probing of device names).
    expect(other.status).toBe(404);
    expect(((await other.json()) as { error: { code: string } }).error.code).toBe('DW_UNKNOWN_DEVICE');
    // A removed token stops working at once (the running relay is told).
    await cliOk(['relay', 'token', 'remove', 'other', '--data', s.data]);
    const removed = await fetch(`${s.api.base}/v1/devices`, { headers: { authorization: `Bearer ${scoped}` } });
    expect(removed.status).toBe(401);
    r = await s.api.send(s.device, 'big.pdf', randomData(1024 * 1024 + 1));
    expect([r.status, err(r)]).toEqual([413, 'DW_TOO_LARGE']);
    // Streamed without a length: refused the same way.
    const chunks = async function* () {
      for (let i = 0; i < 20; i++) yield randomData(128 * 1024);
    };
    const streamed = await fetch(`${s.api.base}/v1/messages?to=${s.device}&filename=big.pdf`, {
      method: 'POST',
      headers: { authorization: `Bearer ${s.token}` },
      body: ReadableStream.from(chunks()),
      duplex: 'half',
    } as RequestInit);
    expect(streamed.status).toBe(413);
    r = await s.api.send(s.device, '', 'x');
    expect([r.status, err(r)]).toEqual([400, 'DW_BAD_NAME']);
    expect((await s.api.get(`/v1/devices/${s.device}`)).json.queued).toBe(0);
    expect(fs.readdirSync(path.join(s.data, 'blobs')).filter((f) => f !== 'tmp')).toEqual([]);
    expect(fs.readdirSync(path.join(s.data, 'blobs', 'tmp'))).toEqual([]);
  });

  it('hostile file names never leave the spool or the target folder', async () => {
    const s = await setup();
    const agent = spawnCli(['agent', '--home', s.home]);
    const names = ['../../etc/passwd', 'a/b', 'CON', 'con.txt', 'x\u0001\u001f\u007f.xml', 'ü'.repeat(150) + '.xml', 'n'.repeat(300), '..', '-rf', 'a\\..\\b'];
    const ids: string[] = [];
    for (const n of names) {
      const r = await s.api.send(s.device, n, `data for ${JSON.stringify(n)}`);
      expect(r.status).toBe(202);
      ids.push(r.json.id as string);
    }
    for (const id of ids) await s.api.until(id, ['handled', 'rejected', 'failed']);
    const inbox = path.join(s.home, 'inbox');
    const saved = fs.readdirSync(inbox);
    expect(saved.length).toBe(names.length);
    for (const f of saved) {
      expect(f.includes('/') || f.includes('\\') || f === '..' || f.startsWith('-') || /[\u0000-\u001f\u007f]/.test(f)).toBe(false);
      expect(Buffer.byteLength(f)).toBeLessThanOrEqual(200);
      expect(/^(con|prn|aux|nul|com\d|lpt\d)(\.|$)/i.test(f)).toBe(false);
    }
    // Nothing was written next to the agent folder or above it.
    expect(fs.readdirSync(path.dirname(s.home)).sort()).toEqual(['agent', 'relay'].sort());
    expect(fs.readdirSync(path.join(s.home, 'spool')).filter((f) => !/^[0-9a-z]+$/.test(f))).toEqual([]);
    await agent.kill();
  });

  it('refuses a wrong or reused enrollment secret', async () => {
    const s = await setup();
    const token = await cliOk(['relay', 'device', 'add', 'kiosk', '--data', s.data]);
    // Tamper with the secret inside the token.
    const o = JSON.parse(Buffer.from(token.slice(4), 'base64url').toString()) as Record<string, unknown>;
    o.s = 'not-the-secret';
    const forged = 'dw1.' + Buffer.from(JSON.stringify(o)).toString('base64url');
    const dir = tempDir();
    let r = await cli(['init', forged, '--home', path.join(dir, 'a')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('DW_ENROLL_UNKNOWN');
    await cliOk(['init', token, '--home', path.join(dir, 'b')]);
    r = await cli(['init', token, '--home', path.join(dir, 'c')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('DW_ENROLL_USED');
    // The device enrolled once, with the key of home b.
    const list = JSON.parse(await cliOk(['relay', 'device', 'list', '--json', '--data', s.data])) as { name: string; enrolled: boolean }[];
    expect(list.find((d) => d.name === 'kiosk')?.enrolled).toBe(true);
  });

  it('an agent of a removed device is dropped and refused', async () => {
    const s = await setup();
    const agent = spawnCli(['agent', '--home', s.home]);
    await waitFor(async () => ((await s.api.get(`/v1/devices/${s.device}`)).json.online === true ? true : undefined));
    await cliOk(['relay', 'device', 'remove', s.device, '--data', s.data]);
    // Said once, with what to do (test/e2e/agent-field.test.ts covers the slower redial and `status`).
    await agent.waitLog((l) => l.code === 'DW_UNKNOWN_DEVICE' && String(l.msg).includes("'dropwire init TOKEN'"));
    expect((await s.api.get(`/v1/devices/${s.device}`)).status).toBe(404);
    await agent.kill();
  });
});
