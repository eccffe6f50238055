/**
 * Floors: what the pieces a relay cannot do without cost on this machine, each measured alone, in CPU per
 * message of scenario 1 (a 1 KiB POST in, a 1 KiB file out over an encrypted connection). They say how
 * far below its figures dropwire's relay could go with this design on Node.
 *
 *   node dist/bench/floors.js
 *
 * - a bare node:http server: reads a 1 KiB POST and answers a 202 with a short JSON (the same keep-alive
 *   client, 128 requests in flight), server process CPU per request;
 * - a loopback TCP write of one ~1.2 KiB record and its read by another process: writer process CPU per
 *   write (on loopback the sender's system call also does the receiving side's TCP work);
 * - one AEAD record (ChaCha20-Poly1305 in node:crypto) sealed and opened, at 16 B (ACK, PING) and 1.1 KiB.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { createCipheriv, createDecipheriv, createSecretKey, randomBytes } from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import { fileURLToPath, pathToFileURL } from 'node:url';

export interface FloorRow {
  what: string;
  /** CPU microseconds per operation. */
  us: number;
  detail: string;
}

const ROLE = process.argv[2];

/** Child roles: a bare HTTP server, or a socket sink. They report their CPU time when asked. */
function serveChild(): void {
  const cpu = () => {
    const u = process.cpuUsage();
    return u.user + u.system;
  };
  process.on('message', (m) => {
    if (m === 'cpu') process.send!({ cpu: cpu() });
    if (m === 'exit') process.exit(0);
  });
  if (ROLE === 'http') {
    const server = http.createServer((req, res) => {
      const parts: Buffer[] = [];
      req.on('data', (c: Buffer) => parts.push(c));
      req.on('end', () => {
        const body = Buffer.concat(parts);
        const text = `${JSON.stringify({ id: 'mkq2v3b1a2b3c4d5e6f7a8b9', status: 'queued', to: 'bench-00001', filename: 'm.bin', size: body.length, online: true })}\n`;
        res.writeHead(202, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
        res.end(text);
      });
    });
    server.listen(0, '127.0.0.1', () => process.send!({ port: (server.address() as net.AddressInfo).port }));
  } else {
    // A socket sink that reads everything (the receiving side of the loopback writes).
    const server = net.createServer((s) => s.resume());
    server.listen(0, '127.0.0.1', () => process.send!({ port: (server.address() as net.AddressInfo).port }));
  }
}

function startChild(role: string): Promise<{ proc: ChildProcess; port: number }> {
  const proc = fork(fileURLToPath(import.meta.url), [role], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  return new Promise((resolve, reject) => {
    proc.once('message', (m: { port: number }) => resolve({ proc, port: m.port }));
    proc.once('exit', (code) => reject(new Error(`floor child ${role} exited (${code})`)));
  });
}

function childCpu(proc: ChildProcess): Promise<number> {
  return new Promise((resolve) => {
    proc.once('message', (m: { cpu: number }) => resolve(m.cpu));
    proc.send('cpu');
  });
}

async function httpFloor(requests: number): Promise<FloorRow> {
  const { proc, port } = await startChild('http');
  const agent = new http.Agent({ keepAlive: true, maxSockets: 128 });
  const body = randomBytes(1024);
  const post = () =>
    new Promise<void>((resolve, reject) => {
      const req = http.request(
        { agent, host: '127.0.0.1', port, method: 'POST', path: '/v1/messages?to=bench-00001&filename=m.bin', headers: { authorization: `Bearer dwt_${'x'.repeat(32)}`, 'content-type': 'application/octet-stream', 'content-length': body.length } },
        (res) => {
          res.resume();
          res.once('end', () => resolve());
        },
      );
      req.once('error', reject);
      req.end(body);
    });
  const run = async (n: number) => {
    let next = 0;
    await Promise.all(
      Array.from({ length: 128 }, async () => {
        while (next < n) {
          next++;
          await post();
        }
      }),
    );
  };
  try {
    await run(Math.min(5_000, requests));
    const c0 = await childCpu(proc);
    const t0 = performance.now();
    await run(requests);
    const c1 = await childCpu(proc);
    const seconds = (performance.now() - t0) / 1000;
    return { what: 'bare node:http server: a 1 KiB POST read, a 202 with JSON', us: (c1 - c0) / requests, detail: `${requests.toLocaleString('en-US')} requests, 128 in flight, ${Math.round(requests / seconds).toLocaleString('en-US')} req/s` };
  } finally {
    agent.destroy();
    proc.send('exit');
  }
}

async function socketFloor(writes: number): Promise<FloorRow> {
  const { proc, port } = await startChild('sink');
  const record = randomBytes(1200);
  const socket = net.connect(port, '127.0.0.1');
  socket.setNoDelay(true);
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  try {
    const c0 = process.cpuUsage();
    // One write per turn of the event loop, as the relay's pump does (each becomes one system call).
    for (let i = 0; i < writes; i++) {
      if (!socket.write(record)) await new Promise((r) => socket.once('drain', r));
      else await new Promise((r) => setImmediate(r));
    }
    const c = process.cpuUsage(c0);
    return { what: 'one ~1.2 KiB record written to a loopback TCP socket (writer\'s CPU)', us: (c.user + c.system) / writes, detail: `${writes.toLocaleString('en-US')} writes, one per turn of the event loop, read by another process` };
  } finally {
    socket.destroy();
    proc.send('exit');
  }
}

function aeadFloor(size: number, n: number): FloorRow {
  const key = createSecretKey(randomBytes(32));
  const nonce = Buffer.alloc(12);
  const data = randomBytes(size);
  const c0 = process.cpuUsage();
  for (let i = 0; i < n; i++) {
    nonce.writeUInt32LE(i, 4);
    const c = createCipheriv('chacha20-poly1305', key, nonce, { authTagLength: 16 });
    const ct = c.update(data);
    c.final();
    const tag = c.getAuthTag();
    const d = createDecipheriv('chacha20-poly1305', key, nonce, { authTagLength: 16 });
    d.setAuthTag(tag);
    d.update(ct);
    d.final();
  }
  const c = process.cpuUsage(c0);
  return { what: `one ${size} B record sealed and opened (ChaCha20-Poly1305, node:crypto)`, us: (c.user + c.system) / n, detail: `${n.toLocaleString('en-US')} records` };
}

export async function runFloors(o: { quick?: boolean } = {}): Promise<FloorRow[]> {
  const k = o.quick ? 0.1 : 1;
  return [await httpFloor(20_000 * k), await socketFloor(20_000 * k), aeadFloor(16, 50_000 * k), aeadFloor(1100, 50_000 * k)];
}

if (ROLE === 'http' || ROLE === 'sink') serveChild();
else if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  for (const r of await runFloors()) console.log(`${r.us.toFixed(1).padStart(7)} µs  ${r.what} (${r.detail})`);
}
