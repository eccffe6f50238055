/**
 * Stalled and flooding clients against a real relay (`relay start` as a child process) on loopback:
 * idle uploads end, uploads and agent connections are capped (issue 11, item 8).
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { describe, expect, it, onTestFinished } from 'vitest';
import { cliOk, setup, spawnCli, waitFor } from '../helpers/cli.js';

function hostPort(addr: string): { host: string; port: number } {
  const i = addr.lastIndexOf(':');
  return { host: addr.slice(0, i), port: Number(addr.slice(i + 1)) };
}

/** An upload that sends its head and `first` bytes of body, then nothing; collects what comes back. */
async function stalledUpload(http: string, head: string, first: string): Promise<{ socket: net.Socket; answer: () => string; closed: Promise<void> }> {
  const socket = net.connect(hostPort(http));
  onTestFinished(() => void socket.destroy());
  let got = '';
  socket.on('data', (d: Buffer) => (got += d.toString('latin1')));
  socket.on('error', () => {});
  const closed = new Promise<void>((r) => socket.once('close', () => r()));
  await new Promise<void>((r) => socket.once('connect', () => r()));
  socket.write(head + first);
  return { socket, answer: () => got, closed };
}

const fdCount = (pid: number) => fs.readdirSync(`/proc/${pid}/fd`).length;

function errorOf(raw: string): { status: number; code: string } {
  const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(raw)?.[1] ?? 0);
  const body = raw.slice(raw.indexOf('\r\n\r\n') + 4);
  return { status, code: (JSON.parse(body) as { error: { code: string } }).error.code };
}

describe('idle uploads', () => {
  it('a stalled body (length, chunked, multipart) ends with 408 DW_TIMEOUT after --body-timeout; nothing stored; descriptors freed', async () => {
    const s = await setup({ relayArgs: ['--body-timeout', '2'] });
    const auth = `authorization: Bearer ${s.token}\r\n`;
    const post = `POST /v1/messages?to=${s.device}&filename=slow.bin HTTP/1.1\r\nhost: x\r\n${auth}`;
    const boundary = 'dwb';
    const kinds = {
      length: [`${post}content-length: 100000\r\n\r\n`, 'x'.repeat(1000)],
      chunked: [`${post}transfer-encoding: chunked\r\n\r\n`, `3e8\r\n${'x'.repeat(1000)}\r\n`],
      multipart: [
        `POST /v1/messages?to=${s.device} HTTP/1.1\r\nhost: x\r\n${auth}content-type: multipart/form-data; boundary=${boundary}\r\ntransfer-encoding: chunked\r\n\r\n`,
        (() => {
          const part = `--${boundary}\r\ncontent-disposition: form-data; name="file"; filename="slow.bin"\r\n\r\n${'x'.repeat(1000)}`;
          return `${part.length.toString(16)}\r\n${part}\r\n`;
        })(),
      ],
    } as const;
    const before = fdCount(s.relay.proc.pid);
    // Fifty stalled uploads of each kind at once.
    const uploads = await Promise.all(
      Object.values(kinds).flatMap(([head, first]) => Array.from({ length: 50 }, () => stalledUpload(s.relay.info.http, head, first))),
    );
    await new Promise((r) => setTimeout(r, 500));
    const during = fdCount(s.relay.proc.pid);
    await Promise.all(uploads.map((u) => u.closed));
    const after = await waitFor(() => {
      const n = fdCount(s.relay.proc.pid);
      return n <= before + 2 ? n : undefined;
    }, 10_000, 'descriptors back');
    console.log(`150 stalled uploads: relay descriptors ${before} before, ${during} while stalled, ${after} after the body timeout`);
    for (const u of uploads) expect(errorOf(u.answer())).toEqual({ status: 408, code: 'DW_TIMEOUT' });
    expect((await s.api.get(`/v1/devices/${s.device}`)).json.queued).toBe(0);
    expect(fs.readdirSync(path.join(s.data, 'blobs', 'tmp'))).toEqual([]);
    expect(s.relay.proc.logs.filter((l) => (l.level as number) >= 50)).toEqual([]);
    // An upload that keeps sending, however slowly, is not cut.
    const slow = await stalledUpload(s.relay.info.http, `${post}content-length: 8\r\n\r\n`, 'ab');
    for (const piece of ['cd', 'ef', 'gh']) {
      await new Promise((r) => setTimeout(r, 1_000));
      slow.socket.write(piece);
    }
    await waitFor(() => (slow.answer().includes('\r\n\r\n{') ? true : undefined), 10_000, 'answer to the slow upload');
    expect(Number(/^HTTP\/1\.1 (\d{3})/.exec(slow.answer())?.[1])).toBe(202);
  });
});

describe('upload caps', () => {
  it('beyond --max-uploads-per-token or --max-uploads at once: 429 DW_BUSY; a finished upload frees its place', async () => {
    const s = await setup({ relayArgs: ['--max-uploads', '3', '--max-uploads-per-token', '2'] });
    const tokenB = await cliOk(['relay', 'token', 'add', 'other', '--data', s.data]);
    const head = (token: string) => `POST /v1/messages?to=${s.device}&filename=held.bin HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${token}\r\ncontent-length: 10\r\n\r\n`;
    const send = async (token: string) => {
      const res = await fetch(`${s.api.base}/v1/messages?to=${s.device}&filename=a.xml`, { method: 'POST', headers: { authorization: `Bearer ${token}` }, body: '<a/>' });
      return { status: res.status, retryAfter: res.headers.get('retry-after'), json: (await res.json()) as { error?: { code: string; message: string } } };
    };
    const a1 = await stalledUpload(s.relay.info.http, head(s.token), 'abc');
    await stalledUpload(s.relay.info.http, head(s.token), 'abc');
    await new Promise((r) => setTimeout(r, 300));
    let r = await send(s.token);
    expect([r.status, r.json.error?.code, r.retryAfter]).toEqual([429, 'DW_BUSY', '1']);
    expect(r.json.error?.message).toContain("token 'web'");
    await stalledUpload(s.relay.info.http, head(tokenB), 'abc');
    await new Promise((r) => setTimeout(r, 300));
    r = await send(tokenB);
    expect([r.status, r.json.error?.code]).toEqual([429, 'DW_BUSY']);
    expect(r.json.error?.message).toContain('3 uploads');
    // The first upload finishes: its place is free again, for either token.
    a1.socket.write('defghij');
    await waitFor(() => (a1.answer().includes('\r\n\r\n{') ? true : undefined), 10_000, 'first upload answered');
    expect(a1.answer()).toMatch(/^HTTP\/1\.1 202/);
    r = await send(tokenB);
    expect(r.status).toBe(202);
    expect((await s.api.get(`/v1/devices/${s.device}`)).json.queued).toBe(2);
  });
});

describe('agents port', () => {
  it('connections beyond --max-conns-per-ip from one address are closed at once; an agent gets in when places free up', async () => {
    const s = await setup({ relayArgs: ['--max-conns-per-ip', '3'] });
    const held = await Promise.all(
      Array.from({ length: 3 }, async () => {
        const socket = net.connect(hostPort(s.relay.info.agents));
        onTestFinished(() => void socket.destroy());
        socket.on('error', () => {});
        await new Promise<void>((r) => socket.once('connect', () => r()));
        return socket;
      }),
    );
    const extra = net.connect(hostPort(s.relay.info.agents));
    extra.on('error', () => {});
    await new Promise<void>((r) => extra.once('close', () => r()));
    const refused = await s.relay.proc.waitLog((l) => l.msg === 'connection refused: too many from one address');
    expect(refused).toMatchObject({ level: 40, open: 3 });
    const agent = spawnCli(['agent', '--home', s.home]);
    await waitFor(() => (s.relay.proc.logs.filter((l) => l.msg === 'connection refused: too many from one address').length >= 2 ? true : undefined), 20_000, 'the agent refused');
    expect((await s.api.get(`/v1/devices/${s.device}`)).json.online).toBe(false);
    for (const h of held) h.destroy();
    await waitFor(async () => ((await s.api.get(`/v1/devices/${s.device}`)).json.online === true ? true : undefined), 60_000, 'agent online');
    await agent.kill();
  });
});
