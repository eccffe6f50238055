/**
 * The transports side by side (issue 14): the same protocol over TCP, over a WebSocket (ws://) and over a
 * WebSocket in TLS (wss://, a certificate from a throwaway CA made with openssl), on loopback:
 *
 * - stream: the responder writes `mib` MiB (default 50) in 256 KiB writes to one initiator; MB/s and CPU
 *   (both ends run in this process), the median of three runs.
 * - idle: a fresh responder process per transport; `n` initiators (default 1000) in a child of it connect over
 *   the transport; `settle` s later the responder's RSS, V8 heap and external memory per connection after a
 *   forced GC.
 *
 *   npm run build && node dist/bench/transports.js [stream|idle|all] [--mib=50] [--n=1000] [--settle=4]
 *        [--transports=tcp,ws,wss]
 *
 * `runTransportBench()` is what `npm run bench` calls. Every loop is bounded by a count or a deadline.
 */
import { execFileSync, fork } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import v8 from 'node:v8';
import vm from 'node:vm';
import { fromHex, toHex } from '../src/protocol/bytes.js';
import { Connection } from '../src/protocol/connection.js';
import { generateKeyPair, type KeyPair } from '../src/protocol/crypto.js';
import { nodeCrypto } from '../src/protocol/crypto-node.js';
import { Session } from '../src/protocol/session.js';
import { Dialer } from '../src/transport/dialer.js';
import { random } from '../src/transport/identity.js';
import type { Link } from '../src/transport/link.js';
import { Listener } from '../src/transport/listener.js';
import { RelayReach } from '../src/transport/reach.js';
import { WebSocketAcceptor } from '../src/transport/websocket.js';

export type TransportKind = 'tcp' | 'ws' | 'wss';

export interface TransportRow {
  transport: TransportKind;
  /** stream: MB/s (10^6 bytes) and CPU % of one core (both ends), median of three runs. */
  mbPerSec?: number;
  cpuPct?: number;
  /** idle: per connection at the responder, KiB, after a forced GC. */
  connections?: number;
  rssKiB?: number;
  heapKiB?: number;
  externalKiB?: number;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

async function waitFor(check: () => boolean, timeoutMs: number, intervalMs = 5): Promise<boolean> {
  const until = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() >= until) return false;
    await sleep(intervalMs);
  }
  return true;
}

const gc = ((): (() => void) => {
  v8.setFlagsFromString('--expose-gc');
  return vm.runInNewContext('gc') as () => void;
})();

const cpuMs = (): number => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};

/** A throwaway CA and a certificate for 127.0.0.1 (openssl); undefined when openssl is missing. */
function makeTls(dir: string): { cert: string; key: string; ca: string } | undefined {
  try {
    const run = (...a: string[]) => execFileSync('openssl', a, { stdio: 'ignore' });
    const f = (n: string) => path.join(dir, n);
    run('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', f('ca.key'), '-out', f('ca.pem'), '-days', '1', '-subj', '/CN=bench CA', '-addext', 'basicConstraints=critical,CA:TRUE');
    run('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', f('server.key'), '-out', f('server.csr'), '-subj', '/CN=127.0.0.1');
    fs.writeFileSync(f('ext'), 'subjectAltName=IP:127.0.0.1\n');
    run('x509', '-req', '-in', f('server.csr'), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-set_serial', '1', '-out', f('server.pem'), '-days', '1', '-extfile', f('ext'));
    return { cert: f('server.pem'), key: f('server.key'), ca: f('ca.pem') };
  } catch {
    return undefined;
  }
}

// --- a responder on TCP and on an HTTP(S) port's /v1/connect ------------------------------------------

interface Responder {
  listener: Listener;
  tcp: string;
  url: string;
  sessions: Map<string, Session>;
  established: number;
  close(): Promise<void>;
}

async function startResponder(relay: KeyPair, transport: TransportKind, tls?: { cert: string; key: string }): Promise<Responder> {
  const r: Responder = { listener: undefined as unknown as Listener, tcp: '', url: '', sessions: new Map(), established: 0, close: async () => {} };
  r.listener = new Listener({
    host: '127.0.0.1',
    port: 0,
    connection: () => Connection.responder({ crypto: nodeCrypto, random, staticKey: relay, now: Date.now() }),
    events: {
      onOutput(out, link) {
        if (out.type === 'hello') {
          const key = Buffer.from(out.remoteStatic).toString('hex');
          let s = r.sessions.get(key);
          if (!s || !s.canResume(out.hello.received)) {
            s = new Session({ id: random(16) });
            r.sessions.set(key, s);
          }
          link.connection.accept(s, Date.now());
          link.pump();
        } else if (out.type === 'established') r.established++;
      },
      onClose() {},
    },
  });
  const a = await r.listener.listen();
  r.tcp = `127.0.0.1:${a.port}`;
  const acceptor = new WebSocketAcceptor((stream) => r.listener.adopt(stream, transport === 'wss' ? 'wss' : 'ws'));
  const handler: http.RequestListener = (_q, res) => res.writeHead(404).end();
  const server = transport === 'wss' && tls ? https.createServer({ cert: fs.readFileSync(tls.cert), key: fs.readFileSync(tls.key) }, handler) : http.createServer(handler);
  server.on('upgrade', (req, socket, head) => acceptor.upgrade(req, socket as net.Socket, head));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  r.url = `${transport === 'wss' ? 'wss' : 'ws'}://127.0.0.1:${(server.address() as net.AddressInfo).port}/v1/connect`;
  r.close = async () => {
    acceptor.close();
    await r.listener.close();
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  };
  return r;
}

interface Initiator {
  dialer: Dialer;
  session: Session;
  link: Link | undefined;
  established: boolean;
}

function startInitiator(address: string, transport: TransportKind, ca: string | undefined, relayKey: Uint8Array, keys: KeyPair, onData: (b: Uint8Array) => void): Initiator {
  const session = new Session();
  let ts = 0;
  const i: Initiator = { dialer: undefined as unknown as Dialer, session, link: undefined, established: false };
  const reach = new RelayReach({ relays: [address], mode: transport === 'tcp' ? 'tcp' : 'wss', caFile: ca, env: {} });
  i.dialer = new Dialer({
    host: '',
    port: 0,
    connect: (signal) => reach.open(signal),
    connection: () =>
      Connection.initiator({ crypto: nodeCrypto, random, staticKey: keys, remoteStatic: relayKey, session, timestamp: (ts = Math.max(Date.now(), ts + 1)), now: Date.now() }),
    events: {
      onOutput(out, link) {
        if (out.type === 'established') {
          i.link = link;
          i.established = true;
        } else if (out.type === 'data') onData(out.bytes);
      },
      onClose() {
        i.established = false;
      },
    },
  });
  i.dialer.start();
  return i;
}

// --- stream -------------------------------------------------------------------------------------------

async function stream(transport: TransportKind, mib: number, tls: ReturnType<typeof makeTls>): Promise<TransportRow> {
  const total = mib * 1024 * 1024;
  const relay = generateKeyPair(nodeCrypto, random);
  const r = await startResponder(relay, transport, tls);
  let got = 0;
  const ini = startInitiator(transport === 'tcp' ? r.tcp : r.url, transport, tls?.ca, relay.publicKey, generateKeyPair(nodeCrypto, random), (b) => (got += b.length));
  try {
    if (!(await waitFor(() => ini.established && r.established === 1, 10_000))) throw new Error(`${transport}: no connection`);
    const link = [...r.listener.links][0]!;
    const session = [...r.sessions.values()][0]!;
    const chunk = new Uint8Array(randomBytes(256 * 1024));
    const runs: { mbps: number; cpu: number }[] = [];
    for (let run = 0; run < 3; run++) {
      got = 0;
      const c0 = cpuMs();
      const t0 = performance.now();
      let written = 0;
      for (let rounds = 0; written < total && rounds < 1_000_000; rounds++) {
        let ok = true;
        while (ok && written < total) {
          ok = session.write(chunk);
          written += chunk.length;
        }
        link.pump();
        if (!ok) await waitFor(() => session.buffered <= session.limits.lowWater, 60_000, 1);
      }
      if (!(await waitFor(() => got >= total, 120_000, 1))) throw new Error(`${transport}: stream stalled at ${got} of ${total}`);
      const ms = performance.now() - t0;
      runs.push({ mbps: total / 1e6 / (ms / 1000), cpu: ((cpuMs() - c0) / ms) * 100 });
    }
    runs.sort((a, b) => a.mbps - b.mbps);
    const mid = runs[1]!;
    return { transport, mbPerSec: Math.round(mid.mbps), cpuPct: Math.round(mid.cpu) };
  } finally {
    ini.dialer.close();
    await r.close();
  }
}

// --- idle ---------------------------------------------------------------------------------------------

interface ChildRequest {
  address: string;
  transport: TransportKind;
  ca?: string;
  relayKey: string;
  n: number;
}

async function agentsChild(): Promise<void> {
  const req = await new Promise<ChildRequest>((resolve) => process.once('message', (m) => resolve(m as ChildRequest)));
  const all: Initiator[] = [];
  for (let i = 0; i < req.n; i++) {
    all.push(startInitiator(req.address, req.transport, req.ca, fromHex(req.relayKey), generateKeyPair(nodeCrypto, random), () => {}));
    if (i % 100 === 99) await waitFor(() => all.every((a) => a.established), 30_000, 2);
  }
  const ok = await waitFor(() => all.every((a) => a.established), 60_000, 20);
  process.send!({ connected: all.filter((a) => a.established).length, ok });
  await new Promise((resolve) => process.once('message', resolve));
  for (const a of all) a.dialer.close();
  await sleep(200);
  process.exit(0);
}

async function idle(transport: TransportKind, n: number, settleS: number, tls: ReturnType<typeof makeTls>): Promise<TransportRow> {
  const relay = generateKeyPair(nodeCrypto, random);
  const r = await startResponder(relay, transport, tls);
  gc();
  gc();
  const h0 = process.memoryUsage();
  const child = fork(fileURLToPath(import.meta.url), ['agents-child'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  try {
    const connected = new Promise<{ connected: number }>((resolve) => child.once('message', (m) => resolve(m as { connected: number })));
    child.send({ address: transport === 'tcp' ? r.tcp : r.url, transport, ...(tls ? { ca: tls.ca } : {}), relayKey: toHex(relay.publicKey), n } satisfies ChildRequest);
    const c = await connected;
    if (c.connected !== n) console.log(`  ${transport}: only ${c.connected} of ${n} connected`);
    await sleep(settleS * 1000);
    gc();
    gc();
    const h1 = process.memoryUsage();
    const per = (a: number, b: number) => Math.round(((b - a) / 1024 / n) * 100) / 100;
    return { transport, connections: c.connected, rssKiB: per(h0.rss, h1.rss), heapKiB: per(h0.heapUsed, h1.heapUsed), externalKiB: per(h0.external, h1.external) };
  } finally {
    if (child.exitCode === null) {
      child.send('stop');
      await new Promise((resolve) => child.once('exit', resolve));
    }
    await r.close();
  }
}

/** `idle` in a fresh process, so that each transport's RSS starts from the same empty responder. */
async function idleInChild(transport: TransportKind, n: number, settleS: number, tls: ReturnType<typeof makeTls>): Promise<TransportRow> {
  const child = fork(fileURLToPath(import.meta.url), ['idle-child'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const row = new Promise<TransportRow>((resolve, reject) => {
    child.once('message', (m) => resolve(m as TransportRow));
    child.once('exit', (code) => reject(new Error(`idle child for ${transport} exited with ${code}`)));
  });
  child.send({ transport, n, settleS, tls: tls ?? null });
  const r = await row;
  await new Promise((resolve) => (child.exitCode === null ? child.once('exit', resolve) : resolve(undefined)));
  return r;
}

async function idleChild(): Promise<void> {
  const req = await new Promise<{ transport: TransportKind; n: number; settleS: number; tls: ReturnType<typeof makeTls> | null }>((resolve) =>
    process.once('message', (m) => resolve(m as never)),
  );
  const row = await idle(req.transport, req.n, req.settleS, req.tls ?? undefined);
  process.send!(row, () => process.exit(0));
}

/** Both figures for each transport; idle ones each in a fresh child of this process's own responder. */
export async function runTransportBench(o: { mib?: number; n?: number; settleS?: number; transports?: TransportKind[]; modes?: ('stream' | 'idle')[] } = {}): Promise<TransportRow[]> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dropwire-bench-transports-'));
  try {
    const tls = makeTls(dir);
    const transports = (o.transports ?? ['tcp', 'ws', 'wss']).filter((t) => t !== 'wss' || tls !== undefined);
    if (!tls) console.log('  wss skipped: openssl is not installed');
    const rows: TransportRow[] = [];
    for (const t of transports) {
      const row: TransportRow = { transport: t };
      if (!o.modes || o.modes.includes('stream')) Object.assign(row, await stream(t, o.mib ?? 50, tls));
      if (!o.modes || o.modes.includes('idle')) Object.assign(row, await idleInChild(t, o.n ?? 1000, o.settleS ?? 4, tls));
      rows.push(row);
    }
    return rows;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const args = new Map(
    process.argv.slice(2).flatMap((a) => {
      const m = /^--([^=]+)=(.*)$/.exec(a);
      return m ? [[m[1]!, m[2]!] as const] : [];
    }),
  );
  const mode = process.argv.slice(2).find((a) => !a.startsWith('--')) ?? 'all';
  if (mode === 'agents-child') {
    await agentsChild();
  } else if (mode === 'idle-child') {
    await idleChild();
  } else {
    const rows = await runTransportBench({
      mib: Number(args.get('mib') ?? 50),
      n: Number(args.get('n') ?? 1000),
      settleS: Number(args.get('settle') ?? 4),
      transports: (args.get('transports') ?? 'tcp,ws,wss').split(',') as TransportKind[],
      ...(mode === 'all' ? {} : { modes: [mode as 'stream' | 'idle'] }),
    });
    console.table(rows);
    process.exit(0);
  }
}
