import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { describe, expect, it, onTestFinished } from 'vitest';
import { BIN, cli, cliOk, randomData, sha256 } from '../helpers/cli.js';
import { hosts } from '../helpers/hosts.js';

/** `dropwire send` as a child process running in the background; resolves with its exit and output. */
function sendInBackground(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [BIN, 'send', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  onTestFinished(() => void (child.exitCode === null && child.kill('SIGKILL')));
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve) => child.once('exit', (code) => resolve({ code, stdout, stderr })));
}

describe('sites receive files from hosts (issue 16)', () => {
  it('pushed: a signed POST of the raw file, retried while the site answers 500, then handled', async () => {
    const got: { headers: http.IncomingHttpHeaders; body: Buffer }[] = [];
    let answered500 = 0;
    const site = http.createServer((req, res) => {
      const parts: Buffer[] = [];
      req.on('data', (c: Buffer) => parts.push(c));
      req.on('end', () => {
        if (answered500 < 3) {
          answered500++;
          res.writeHead(500).end('not yet');
          return;
        }
        got.push({ headers: req.headers, body: Buffer.concat(parts) });
        res.writeHead(200).end('ok');
      });
    });
    await new Promise<void>((r) => site.listen(0, '127.0.0.1', r));
    onTestFinished(() => void site.close());
    const url = `http://127.0.0.1:${(site.address() as AddressInfo).port}/dropwire`;
    const h = await hosts(['till'], { allow: { till: '*' } });
    const out = await cliOk(['relay', 'token', 'add', 'shop', '--receive', '--deliver-url', url, '--data', h.data]);
    const secret = /delivery secret: (\S+)/.exec(out)![1]!;
    await h.start('till');
    const file = path.join(h.dir, 'receipt 7.pdf');
    const body = Buffer.from(randomData(150_000));
    fs.writeFileSync(file, body);
    const r = await cli(['send', file, '--to', 'shop', '--wait=60', '--home', h.homes.till!]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const [id, status] = r.stdout.trim().split('\t');
    expect(status).toBe('handled');
    expect(answered500).toBe(3);
    expect(got.length).toBe(1);
    const [req] = got;
    expect(req!.body.equals(body)).toBe(true);
    expect(req!.headers).toMatchObject({ 'dropwire-id': id, 'dropwire-from': 'till', 'dropwire-filename': encodeURIComponent('receipt 7.pdf'), 'dropwire-sha256': sha256(body) });
    const sig = /^t=(\d+),v1=([0-9a-f]{64})$/.exec(req!.headers['dropwire-signature'] as string)!;
    expect(sig[2]).toBe(createHmac('sha256', secret).update(`${sig[1]}.${id}.${sha256(body)}`).digest('hex'));
    expect(h.relay.proc.logs.filter((l) => l.msg === 'push to the site failed; retrying').length).toBe(3);
  });

  it('pulled: GET /v1/inbox gives the next file with its headers; ack marks it handled, nack failed; the sender sees it', async () => {
    const h = await hosts(['till'], { allow: { till: 'shop' } });
    const token = await cliOk(['relay', 'token', 'add', 'shop', '--receive', '--data', h.data]);
    await h.start('till');
    const api = `http://${h.relay.info.http}`;
    const auth = { authorization: `Bearer ${token}` };
    const a = path.join(h.dir, 'a.csv');
    const b = path.join(h.dir, 'b.csv');
    fs.writeFileSync(a, 'a;1\n');
    fs.writeFileSync(b, 'b;2\n');
    const sendingA = sendInBackground([a, '--to', 'shop', '--wait=60', '--home', h.homes.till!]);
    let res = await fetch(`${api}/v1/inbox?wait=20`, { headers: auth });
    expect(res.status).toBe(200);
    expect(await res.text()).toBe('a;1\n');
    expect(res.headers.get('dropwire-from')).toBe('till');
    expect(res.headers.get('dropwire-filename')).toBe('a.csv');
    expect(res.headers.get('dropwire-sha256')).toBe(sha256('a;1\n'));
    const idA = res.headers.get('dropwire-id')!;
    // Not acknowledged yet: the same file again.
    res = await fetch(`${api}/v1/inbox`, { headers: auth });
    expect(res.headers.get('dropwire-id')).toBe(idA);
    await res.arrayBuffer();
    res = await fetch(`${api}/v1/inbox/${idA}/ack`, { method: 'POST', headers: auth });
    expect(await res.json()).toEqual({ id: idA, status: 'handled' });
    const doneA = await sendingA;
    expect(doneA.code).toBe(0);
    expect(doneA.stdout).toContain(`${idA}\thandled\ta.csv`);

    const sendingB = sendInBackground([b, '--to', 'shop', '--wait=60', '--json', '--home', h.homes.till!]);
    res = await fetch(`${api}/v1/inbox?wait=20`, { headers: auth });
    expect(await res.text()).toBe('b;2\n');
    const idB = res.headers.get('dropwire-id')!;
    res = await fetch(`${api}/v1/inbox/${idB}/nack`, { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ reason: 'unknown article 2' }) });
    expect(await res.json()).toEqual({ id: idB, status: 'failed' });
    const doneB = await sendingB;
    expect(doneB.code).toBe(4);
    expect(JSON.parse(doneB.stdout.trim())).toMatchObject({ id: idB, status: 'failed', result: { code: 'DW_NACK', reason: 'unknown article 2' } });

    res = await fetch(`${api}/v1/inbox?wait=1`, { headers: auth });
    expect(res.status).toBe(204);
    // A token that does not receive, and a file that is not the site's, are refused with codes.
    const web = await cliOk(['relay', 'token', 'add', 'web', '--data', h.data]);
    res = await fetch(`${api}/v1/inbox`, { headers: { authorization: `Bearer ${web}` } });
    expect(res.status).toBe(403);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe('DW_FORBIDDEN');
    res = await fetch(`${api}/v1/inbox/nosuchid/ack`, { method: 'POST', headers: auth });
    expect(res.status).toBe(404);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe('DW_NOT_FOUND');
  });
});
