/**
 * POST /v1/messages/batch against a real relay (`relay start` as a child process) and real agents on
 * loopback: several files in one multipart POST, each to its own device, one answer listing every message
 * (issue 18).
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { describe, expect, it, onTestFinished } from 'vitest';
import { cliOk, randomData, recordingHandler, setup, sha256, spawnCli, startRelay, tempDir, waitFor } from '../helpers/cli.js';
import { recordingAgent, startCluster } from '../helpers/cluster.js';
import { redisUnavailableReason } from '../helpers/redis.js';

const KiB = 1024;
const MiB = 1024 * KiB;

type Entry = { part: string; id: string; status: string; to: string; filename: string; size: number; sha256: string; online: boolean; created: boolean };
type Answer = { status: number; json: { messages?: Entry[]; error?: { code: string; message: string } } };

/** One file of a batch: its label (undefined: a plain `file` part) and the fields sent before it. */
interface BatchFile {
  label?: string;
  body: Uint8Array | string;
  /** The part's own file name. */
  name?: string;
  fields?: Record<string, string>;
}

function form(files: BatchFile[]): FormData {
  const f = new FormData();
  for (const file of files) {
    for (const [k, v] of Object.entries(file.fields ?? {})) f.append(`${k}.${file.label}`, v);
    f.append(file.label === undefined ? 'file' : `file.${file.label}`, new Blob([file.body as unknown as string]), file.name ?? `${file.label ?? 'f'}.bin`);
  }
  return f;
}

async function postBatch(base: string, token: string, body: FormData | string, o: { query?: string; headers?: Record<string, string> } = {}): Promise<Answer> {
  const res = await fetch(`${base}/v1/messages/batch${o.query ?? ''}`, { method: 'POST', headers: { authorization: `Bearer ${token}`, ...o.headers }, body });
  return { status: res.status, json: (await res.json()) as Answer['json'] };
}

/** Message bodies on the relay's disk (large ones), and what is left in its temporary folder. */
function bodiesOnDisk(data: string): { bodies: string[]; tmp: string[] } {
  const dir = path.join(data, 'blobs');
  return { bodies: fs.readdirSync(dir).filter((f) => f !== 'tmp'), tmp: fs.readdirSync(path.join(dir, 'tmp')) };
}

/** Another device with its own agent, recording each file it handles. */
async function addAgent(data: string, name: string): Promise<{ runs: ReturnType<typeof recordingHandler>['runs']; home: string; start: () => ReturnType<typeof spawnCli> }> {
  const dir = tempDir();
  const rec = recordingHandler(dir);
  const home = path.join(dir, 'agent');
  await cliOk(['init', await cliOk(['relay', 'device', 'add', name, '--data', data]), '--home', home]);
  const cfg = JSON.parse(fs.readFileSync(path.join(home, 'config.json'), 'utf8')) as Record<string, unknown>;
  cfg.rules = [rec.rule];
  fs.writeFileSync(path.join(home, 'config.json'), JSON.stringify(cfg, null, 2));
  return { runs: rec.runs, home, start: () => spawnCli(['agent', '--home', home]) };
}

describe('POST /v1/messages/batch: delivery', () => {
  it('30 files of mixed sizes to three devices: one 202 listing every id; each handled exactly once with its bytes; /metrics counts them', async () => {
    const dir = tempDir();
    const rec = recordingHandler(dir);
    const s = await setup({ rules: [rec.rule] });
    const kiosk = await addAgent(s.data, 'kiosk');
    const till = await addAgent(s.data, 'till');
    const agents = [spawnCli(['agent', '--home', s.home]), kiosk.start(), till.start()];
    await Promise.all(agents.map((a) => a.waitLog((l) => l.msg === 'session started')));
    const devices = [s.device, 'kiosk', 'till'];
    const sizes = [1, 100, KiB, 10 * KiB, 64 * KiB, 64 * KiB + 1, 200 * KiB, 3 * MiB];
    const files: BatchFile[] = Array.from({ length: 30 }, (_, i) => ({
      label: String(i + 1),
      body: randomData(sizes[i % sizes.length]!),
      fields: { to: devices[i % 3]!, filename: `order-${i + 1}.bin` },
    }));
    const r = await postBatch(s.api.base, s.token, form(files));
    expect(r.status).toBe(202);
    const messages = r.json.messages!;
    expect(messages.map((m) => m.part)).toEqual(files.map((f) => `file.${f.label}`));
    for (const [i, m] of messages.entries()) {
      expect(m).toMatchObject({ status: 'queued', to: devices[i % 3], filename: `order-${i + 1}.bin`, size: sizes[i % sizes.length], sha256: sha256(files[i]!.body), online: true, created: true });
    }
    expect(new Set(messages.map((m) => m.id)).size).toBe(30);
    for (const m of messages) expect((await s.api.until(m.id, ['handled'])).status).toBe('handled');
    const runs = [...rec.runs(), ...kiosk.runs(), ...till.runs()];
    expect(runs.map((x) => x.id).sort()).toEqual(messages.map((m) => m.id).sort());
    for (const m of messages) expect(runs.find((x) => x.id === m.id)).toEqual({ id: m.id, sha: m.sha256, name: m.filename });
    expect(rec.runs().map((x) => x.id).sort()).toEqual(messages.filter((m) => m.to === s.device).map((m) => m.id).sort());
    // Delivered like single POSTs: the relay's counters include them.
    const ops = await cliOk(['relay', 'token', 'add', 'ops', '--metrics', '--data', s.data]);
    const text = await (await fetch(`${s.api.base}/metrics`, { headers: { authorization: `Bearer ${ops}` } })).text();
    expect(Number(/^dropwire_messages_total\{status="handled"\} (\d+)/m.exec(text)?.[1])).toBe(30);
    expect(Number(/^dropwire_store_write_seconds_count\{op="enqueue"\} (\d+)/m.exec(text)?.[1])).toBe(30);
    expect(bodiesOnDisk(s.data).tmp).toEqual([]);
    await Promise.all(agents.map((a) => a.kill()));
  }, 120_000);

  it('batches and single POSTs to the same live device at once: every message delivered in one session, none passed over', async () => {
    const dir = tempDir();
    const rec = recordingHandler(dir);
    const s = await setup({ rules: [rec.rule] });
    const agent = spawnCli(['agent', '--home', s.home]);
    await agent.waitLog((l) => l.msg === 'session started');
    const ids: string[] = [];
    let stop = false;
    // Single POSTs all along, so that their writes share commits with the batches'.
    const singles = Array.from({ length: 6 }, async (_, w) => {
      for (let i = 0; !stop && i < 500; i++) {
        const r = await s.api.send(s.device, `s-${w}-${i}.xml`, `<s w="${w}" i="${i}"/>`);
        expect(r.status).toBe(202);
        ids.push(r.json.id as string);
      }
    });
    for (let b = 0; b < 10; b++) {
      const r = await postBatch(s.api.base, s.token, form(Array.from({ length: 30 }, (_, i): BatchFile => ({ label: String(i), body: `<b n="${b}" i="${i}"/>` }))), { query: `?to=${s.device}` });
      expect(r.status).toBe(202);
      ids.push(...r.json.messages!.map((m) => m.id));
    }
    stop = true;
    await Promise.all(singles);
    await waitFor(() => (rec.runs().length >= ids.length ? true : undefined), 60_000, `all ${ids.length} handled`);
    expect(rec.runs().map((x) => x.id).sort()).toEqual([...ids].sort());
    expect(agent.logs.filter((l) => l.msg === 'session started').length).toBe(1);
    await agent.kill();
  }, 120_000);

  it('plain `file` parts and query defaults: ?to= for every file, the part\'s file name, ttl/deadline/allowEmpty per file', async () => {
    const s = await setup();
    await cliOk(['relay', 'device', 'add', 'kiosk', '--data', s.data]);
    const f = new FormData();
    f.append('file', new Blob(['<a/>']), 'a.xml');
    f.append('file', new Blob(['<b/>']), 'b.xml');
    f.append('to.c', 'kiosk');
    f.append('allowEmpty.c', '1');
    f.append('ttl.c', '0');
    f.append('file.c', new Blob([]), 'marker.flag');
    const r = await postBatch(s.api.base, s.token, f, { query: `?to=${s.device}&deadline=30` });
    expect(r.status).toBe(202);
    expect(r.json.messages!.map((m) => [m.part, m.to, m.filename, m.size])).toEqual([
      ['file #1', s.device, 'a.xml', 4],
      ['file #2', s.device, 'b.xml', 4],
      ['file.c', 'kiosk', 'marker.flag', 0],
    ]);
    // ttl.c=0: already past its time to live, never delivered.
    expect((await s.api.until(r.json.messages![2]!.id, ['expired'])).status).toBe('expired');
    expect((await s.api.get(`/v1/devices/${s.device}`)).json.queued).toBe(2);
  });
});

describe('POST /v1/messages/batch: refusals store nothing', () => {
  it('one bad part refuses the whole batch with a coded error naming the part; no message, no body left behind', async () => {
    const s = await setup({ relayArgs: ['--max-body', String(2 * MiB)] });
    await cliOk(['relay', 'device', 'add', 'kiosk', '--data', s.data]);
    // Two good files first (one large, on the relay's disk while the batch is read), then the bad one.
    const good: BatchFile[] = [
      { label: 'a', body: randomData(300 * KiB), fields: { to: s.device } },
      { label: 'b', body: '<b/>', fields: { to: 'kiosk' } },
    ];
    const cases: Array<[string, FormData, number, string, string]> = [
      ['unknown device', form([...good, { label: 'c', body: 'x', fields: { to: 'nowhere' } }]), 404, 'DW_UNKNOWN_DEVICE', 'file.c'],
      ['empty file', form([...good, { label: 'c', body: '', fields: { to: s.device } }]), 400, 'DW_EMPTY_BODY', 'file.c'],
      ['file over --max-body', form([...good, { label: 'c', body: randomData(2 * MiB + 1), fields: { to: s.device } }]), 413, 'DW_TOO_LARGE', 'file.c'],
      ['over-long name', form([...good, { label: 'c', body: 'x', fields: { to: s.device, filename: 'n'.repeat(1025) } }]), 400, 'DW_BAD_NAME', 'file.c'],
      ['no device for a file', form([...good, { label: 'c', body: 'x' }]), 400, 'DW_BAD_REQUEST', 'to.c'],
      ['bad ttl', form([...good, { label: 'c', body: 'x', fields: { to: s.device, ttl: 'soon' } }]), 400, 'DW_BAD_REQUEST', 'ttl.c'],
      ['bad sealed envelope', form([...good, { label: 'c', body: 'x', fields: { to: s.device, sealed: '1' } }]), 400, 'DW_BAD_SEAL', 'file.c'],
      ['reserved key', form([...good, { label: 'c', body: 'x', fields: { to: s.device, idempotencyKey: 'dropwire:retry:1' } }]), 400, 'DW_BAD_REQUEST', 'idempotencyKey.c'],
      ['unknown field', (() => { const f = form(good); f.append('colour.c', 'red'); return f; })(), 400, 'DW_BAD_REQUEST', 'colour.c'],
      ['field after its file', (() => { const f = form(good); f.append('filename.a', 'late.bin'); return f; })(), 400, 'DW_BAD_REQUEST', 'filename.a'],
      ['fields without a file', (() => { const f = form(good); f.append('to.z', s.device); return f; })(), 400, 'DW_BAD_REQUEST', 'file.z'],
      ['a label twice', form([...good, { label: 'a', body: 'x', fields: {} }]), 400, 'DW_BAD_REQUEST', 'file.a'],
    ];
    for (const [what, body, status, errCode, part] of cases) {
      const r = await postBatch(s.api.base, s.token, body);
      expect([what, r.status, r.json.error?.code]).toEqual([what, status, errCode]);
      expect(r.json.error!.message).toContain(part);
    }
    // Requests that are not batches at all.
    const notMultipart = await postBatch(s.api.base, s.token, 'raw bytes', { query: `?to=${s.device}` });
    expect([notMultipart.status, notMultipart.json.error?.code]).toEqual([400, 'DW_BAD_REQUEST']);
    const withFilename = await postBatch(s.api.base, s.token, form(good), { query: '?filename=x.bin' });
    expect([withFilename.status, withFilename.json.error?.code]).toEqual([400, 'DW_BAD_REQUEST']);
    // A body that ends inside its second file (no closing boundary): the first file is not stored either.
    const cut = `--dwb\r\ncontent-disposition: form-data; name="file.1"; filename="1.bin"\r\n\r\n${'x'.repeat(100 * KiB)}\r\n--dwb\r\ncontent-disposition: form-data; name="file.2"; filename="2.bin"\r\n\r\nxyz`;
    const truncated = await postBatch(s.api.base, s.token, cut, { query: `?to=${s.device}`, headers: { 'content-type': 'multipart/form-data; boundary=dwb' } });
    expect([truncated.status, truncated.json.error?.code]).toEqual([400, 'DW_BAD_REQUEST']);
    expect(truncated.json.error!.message).toContain('file.2');
    const none = await postBatch(s.api.base, s.token, new FormData(), { query: `?to=${s.device}` });
    expect([none.status, none.json.error?.code]).toEqual([400, 'DW_BAD_REQUEST']);
    const get = await fetch(`${s.api.base}/v1/messages/batch`, { headers: { authorization: `Bearer ${s.token}` } });
    expect([get.status, get.headers.get('allow'), ((await get.json()) as Answer['json']).error?.code]).toEqual([405, 'POST', 'DW_METHOD_NOT_ALLOWED']);
    expect((await s.api.get(`/v1/devices/${s.device}`)).json.queued).toBe(0);
    expect((await s.api.get('/v1/devices/kiosk')).json.queued).toBe(0);
    expect(bodiesOnDisk(s.data)).toEqual({ bodies: [], tmp: [] });
    expect(s.relay.proc.child.exitCode).toBe(null);
    expect(s.relay.proc.logs.filter((l) => (l.level as number) >= 50)).toEqual([]);
    // The same files, corrected, go through.
    const ok = await postBatch(s.api.base, s.token, form(good));
    expect(ok.status).toBe(202);
    expect((await s.api.get(`/v1/devices/${s.device}`)).json.queued).toBe(1);
    expect(bodiesOnDisk(s.data).bodies).toEqual([ok.json.messages![0]!.id]);
  }, 120_000);

  it('a token limited by --to gets the same 404 DW_UNKNOWN_DEVICE for a device outside its scope as for no device', async () => {
    const s = await setup();
    await cliOk(['relay', 'device', 'add', 'kiosk', '--data', s.data]);
    const scoped = await cliOk(['relay', 'token', 'add', 'shops', '--to', 'sho*', '--data', s.data]);
    const outside = await postBatch(s.api.base, scoped, form([{ label: '1', body: 'x', fields: { to: s.device } }, { label: '2', body: 'y', fields: { to: 'kiosk' } }]));
    const missing = await postBatch(s.api.base, scoped, form([{ label: '1', body: 'x', fields: { to: s.device } }, { label: '2', body: 'y', fields: { to: 'kiosq' } }]));
    expect([outside.status, outside.json.error?.code]).toEqual([404, 'DW_UNKNOWN_DEVICE']);
    expect(outside.json.error!.message.replace('kiosk', 'NAME')).toBe(missing.json.error!.message.replace('kiosq', 'NAME'));
    // The same files to its own device go through.
    const own = await postBatch(s.api.base, scoped, form([{ label: '1', body: 'x' }, { label: '2', body: 'y' }]), { query: `?to=${s.device}` });
    expect(own.status).toBe(202);
    expect((await s.api.get('/v1/devices/kiosk')).json.queued).toBe(0);
    expect((await s.api.get(`/v1/devices/${s.device}`)).json.queued).toBe(2);
  });
});

describe('POST /v1/messages/batch: Idempotency-Key', () => {
  it('per file and per batch: a batch sent again is 200 with the same ids; a key reused for another file is 422 and stores no file without a key', async () => {
    const s = await setup();
    await cliOk(['relay', 'device', 'add', 'kiosk', '--data', s.data]);
    const files: BatchFile[] = [
      { label: '1', body: '<one/>', fields: { to: s.device } },
      { label: '2', body: randomData(100 * KiB), fields: { to: 'kiosk' } },
    ];
    const first = await postBatch(s.api.base, s.token, form(files), { headers: { 'idempotency-key': 'run-7' } });
    expect(first.status).toBe(202);
    const again = await postBatch(s.api.base, s.token, form(files), { headers: { 'idempotency-key': 'run-7' } });
    expect(again.status).toBe(200);
    expect(again.json.messages!.map((m) => [m.id, m.created])).toEqual(first.json.messages!.map((m) => [m.id, false]));
    // A per-file key; the same key with the same file through a single POST is the same message.
    const keyed = await postBatch(s.api.base, s.token, form([{ label: 'x', body: '<x/>', name: 'x.xml', fields: { to: s.device, idempotencyKey: 'order-x' } }]));
    expect(keyed.status).toBe(202);
    const single = await s.api.send(s.device, 'x.xml', '<x/>', { 'idempotency-key': 'order-x' });
    expect([single.status, single.json.id]).toEqual([200, keyed.json.messages![0]!.id]);
    // order-x again with another body, beside a new keyed file and a file without a key.
    const mixed: BatchFile[] = [
      { label: 'new', body: '<new/>', fields: { to: s.device, idempotencyKey: 'order-new' } },
      { label: 'x', body: '<changed/>', name: 'x.xml', fields: { to: s.device, idempotencyKey: 'order-x' } },
      { label: 'plain', body: '<plain/>', fields: { to: 'kiosk' } },
    ];
    const before = { shop: (await s.api.get(`/v1/devices/${s.device}`)).json.queued as number, kiosk: (await s.api.get('/v1/devices/kiosk')).json.queued as number };
    const refused = await postBatch(s.api.base, s.token, form(mixed));
    expect([refused.status, refused.json.error?.code]).toEqual([422, 'DW_IDEMPOTENCY_MISMATCH']);
    expect(refused.json.error!.message).toContain('file.x');
    expect(refused.json.error!.message).toContain(keyed.json.messages![0]!.id);
    expect((await s.api.get('/v1/devices/kiosk')).json.queued).toBe(before.kiosk); // the file without a key: not stored
    expect((await s.api.get(`/v1/devices/${s.device}`)).json.queued).toBe(before.shop + 1); // file.new, under its key
    // Corrected (a new key for the changed file) and sent again: every file exactly once.
    mixed[1]!.fields!.idempotencyKey = 'order-x2';
    const fixed = await postBatch(s.api.base, s.token, form(mixed));
    expect(fixed.status).toBe(202);
    expect(fixed.json.messages!.map((m) => [m.part, m.created])).toEqual([['file.new', false], ['file.x', true], ['file.plain', true]]);
    expect((await s.api.get(`/v1/devices/${s.device}`)).json.queued).toBe(before.shop + 2);
    expect((await s.api.get('/v1/devices/kiosk')).json.queued).toBe(before.kiosk + 1);
    expect(bodiesOnDisk(s.data).tmp).toEqual([]);
    expect(bodiesOnDisk(s.data).bodies.sort()).toEqual([first.json.messages![1]!.id]);
  });
});

function hostPort(addr: string): { host: string; port: number } {
  const i = addr.lastIndexOf(':');
  return { host: addr.slice(0, i), port: Number(addr.slice(i + 1)) };
}

/** Sends `head` and `first`, then nothing; collects what comes back until the relay closes. */
async function stalled(http: string, head: string, first: string | Buffer): Promise<{ answer: () => string; closed: Promise<void>; socket: net.Socket }> {
  const socket = net.connect(hostPort(http));
  onTestFinished(() => void socket.destroy());
  let got = '';
  socket.on('data', (d: Buffer) => (got += d.toString('latin1')));
  socket.on('error', () => {});
  const closed = new Promise<void>((r) => socket.once('close', () => r()));
  await new Promise<void>((r) => socket.once('connect', () => r()));
  socket.write(head);
  socket.write(first);
  return { answer: () => got, closed, socket };
}

function errorOf(raw: string): { status: number; code: string } {
  const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(raw)?.[1] ?? 0);
  return { status, code: (JSON.parse(raw.slice(raw.indexOf('\r\n\r\n') + 4)) as { error: { code: string } }).error.code };
}

describe('POST /v1/messages/batch: limits', () => {
  it('more than 100 files: 413 DW_TOO_MANY_FILES; a batch stalled mid-file: 408 DW_TIMEOUT; nothing stored either way', async () => {
    const s = await setup({ relayArgs: ['--body-timeout', '2'] });
    const many = Array.from({ length: 101 }, (_, i): BatchFile => ({ label: String(i), body: 'x' }));
    const r = await postBatch(s.api.base, s.token, form(many), { query: `?to=${s.device}` });
    expect([r.status, r.json.error?.code]).toEqual([413, 'DW_TOO_MANY_FILES']);
    const hundred = await postBatch(s.api.base, s.token, form(many.slice(0, 100)), { query: `?to=${s.device}` });
    expect([hundred.status, hundred.json.messages?.length]).toEqual([202, 100]);
    // One whole large file, then a second that stops arriving halfway.
    const b = 'dwbatch';
    const part = (label: string, bytes: number) => `--${b}\r\ncontent-disposition: form-data; name="file.${label}"; filename="${label}.bin"\r\n\r\n${'x'.repeat(bytes)}\r\n`;
    const head = `POST /v1/messages/batch?to=${s.device} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${s.token}\r\ncontent-type: multipart/form-data; boundary=${b}\r\ncontent-length: 10000000\r\n\r\n`;
    const up = await stalled(s.relay.info.http, head, part('1', 200 * KiB) + part('2', 300 * KiB).slice(0, 100 * KiB));
    await up.closed;
    expect(errorOf(up.answer())).toEqual({ status: 408, code: 'DW_TIMEOUT' });
    expect((await s.api.get(`/v1/devices/${s.device}`)).json.queued).toBe(100);
    expect(bodiesOnDisk(s.data)).toEqual({ bodies: [], tmp: [] });
  });

  it('a client that goes away mid-batch: nothing stored, no body left behind, the relay goes on', async () => {
    const s = await setup();
    const b = 'dwbatch';
    const part = (label: string, bytes: number) => `--${b}\r\ncontent-disposition: form-data; name="file.${label}"; filename="${label}.bin"\r\n\r\n${'x'.repeat(bytes)}\r\n`;
    const head = `POST /v1/messages/batch?to=${s.device} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${s.token}\r\ncontent-type: multipart/form-data; boundary=${b}\r\ncontent-length: 10000000\r\n\r\n`;
    for (const first of [part('1', 200 * KiB), part('1', 200 * KiB) + part('2', 300 * KiB).slice(0, 100 * KiB), part('1', 10)]) {
      const up = await stalled(s.relay.info.http, head, first);
      await new Promise((r) => setTimeout(r, 300));
      up.socket.destroy();
      await up.closed;
    }
    await waitFor(() => (s.relay.proc.logs.filter((l) => l.msg === 'request aborted by the client').length >= 3 ? true : undefined), 10_000, 'three aborts logged');
    expect((await s.api.get(`/v1/devices/${s.device}`)).json.queued).toBe(0);
    expect(bodiesOnDisk(s.data)).toEqual({ bodies: [], tmp: [] });
    expect(s.relay.proc.logs.filter((l) => (l.level as number) >= 50)).toEqual([]);
    const ok = await postBatch(s.api.base, s.token, form([{ label: '1', body: 'x' }]), { query: `?to=${s.device}` });
    expect(ok.status).toBe(202);
  });

  it('each file counts against --max-uploads-per-token: a batch larger than the cap is 413, one that finds it full is 429 DW_BUSY', async () => {
    const s = await setup({ relayArgs: ['--max-uploads-per-token', '3'] });
    const files = (n: number) => Array.from({ length: n }, (_, i): BatchFile => ({ label: String(i), body: 'x' }));
    const four = await postBatch(s.api.base, s.token, form(files(4)), { query: `?to=${s.device}` });
    expect([four.status, four.json.error?.code]).toEqual([413, 'DW_TOO_MANY_FILES']);
    expect(four.json.error!.message).toContain('3 files');
    // An upload of the same token in progress holds one place: three files no longer fit now.
    const held = await stalled(s.relay.info.http, `POST /v1/messages?to=${s.device}&filename=held.bin HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${s.token}\r\ncontent-length: 10\r\n\r\n`, 'abc');
    await new Promise((r) => setTimeout(r, 300));
    const three = await postBatch(s.api.base, s.token, form(files(3)), { query: `?to=${s.device}` });
    expect([three.status, three.json.error?.code]).toEqual([429, 'DW_BUSY']);
    expect((await s.api.get(`/v1/devices/${s.device}`)).json.queued).toBe(0);
    held.socket.write('defghij');
    await waitFor(() => (held.answer().includes('\r\n\r\n{') ? true : undefined), 10_000, 'the held upload answered');
    const again = await postBatch(s.api.base, s.token, form(files(3)), { query: `?to=${s.device}` });
    expect(again.status).toBe(202);
    expect((await s.api.get(`/v1/devices/${s.device}`)).json.queued).toBe(4);
  });
});

describe('POST /v1/messages/batch: crash safety', () => {
  it('kill -9 of the relay right after the 202: every file of the batch is delivered once after the restart, bytes intact', async () => {
    const dir = tempDir();
    const rec = recordingHandler(dir);
    const s = await setup({ rules: [rec.rule] });
    const files: BatchFile[] = Array.from({ length: 40 }, (_, i) => ({ label: String(i), body: randomData(i % 5 === 0 ? 200 * KiB : 512 + i), fields: { filename: `k-${i}.bin` } }));
    const r = await postBatch(s.api.base, s.token, form(files), { query: `?to=${s.device}` });
    s.relay.proc.child.kill('SIGKILL');
    expect(r.status).toBe(202);
    await new Promise((res) => s.relay.proc.child.once('exit', res));
    await startRelay(s.data, [], s.relay.info.agents);
    const agent = spawnCli(['agent', '--home', s.home]);
    await waitFor(() => (rec.runs().length >= 40 ? true : undefined), 60_000, 'all 40 handled');
    await new Promise((res) => setTimeout(res, 1_000)); // a duplicate would show up meanwhile
    const runs = rec.runs();
    expect(runs.length).toBe(40);
    for (const [i, m] of r.json.messages!.entries()) expect(runs.find((x) => x.id === m.id)).toEqual({ id: m.id, sha: sha256(files[i]!.body), name: `k-${i}.bin` });
    await agent.kill();
  }, 120_000);
});

const noRedis = redisUnavailableReason();
if (noRedis) console.log(`skipping the batch on a cluster: ${noRedis}`);

describe.skipIf(noRedis !== undefined)('POST /v1/messages/batch on a cluster', () => {
  it('large files of a batch go to Redis like a single POST\'s and are delivered; a refused batch stores nothing', async () => {
    const c = await startCluster({ nodes: 1 });
    const agent = await recordingAgent(c, 'plant');
    const token = await cliOk(['relay', 'token', 'add', 'web', '--store', c.url]);
    const base = `http://${c.nodes[0]!.http}`;
    const files: BatchFile[] = [
      { label: 'big', body: randomData(3 * MiB) },
      { label: 'small', body: '<small/>' },
      { label: 'mid', body: randomData(100 * KiB) },
    ];
    const refused = await postBatch(base, token, form([...files, { label: 'bad', body: 'x', fields: { to: 'nowhere' } }]), { query: '?to=plant' });
    expect([refused.status, refused.json.error?.code]).toEqual([404, 'DW_UNKNOWN_DEVICE']);
    const r = await postBatch(base, token, form(files), { query: '?to=plant' });
    expect(r.status).toBe(202);
    await waitFor(() => (agent.runs().length >= 3 ? true : undefined), 60_000, 'three handled');
    expect(agent.runs().sort((a, b) => a.id.localeCompare(b.id))).toEqual(
      r.json.messages!.map((m, i) => ({ id: m.id, sha: sha256(files[i]!.body), name: `${files[i]!.label}.bin` })).sort((a, b) => a.id.localeCompare(b.id)),
    );
    // Only the bodies of the two large messages: the refused batch's large file was removed from Redis.
    const blobIds = (await c.client.keys('*blob:{*}')).map((k) => /blob:\{(.+)\}$/.exec(k)![1]);
    expect(blobIds.sort()).toEqual([r.json.messages![0]!.id, r.json.messages![2]!.id].sort());
    await agent.proc.kill();
  }, 180_000);
});
