/**
 * Microbenchmark of the protocol and transport layers alone (`Connection`, `Session`, `Link`, `Listener`,
 * `Dialer`) over real loopback TCP: no store, no disk, no message layer. What it reports is what the relay
 * and the agent pay per byte, per record and per idle connection before their own work.
 *
 *   npm run build && node dist/bench/session.js [core|stream|small|idle|all] [--mib=256] [--seconds=5]
 *        [--n=5000] [--ping=1000] [--window=10] [--settle=6] [--crypto=node|noble] [--spaces=1]
 *        [--snapshot=PATH] [--profile=FILE]
 *
 * - core: an initiator and a responder joined in memory, no sockets: CPU per PING/PONG round, per small
 *   DATA round trip, and MB per CPU-second of full records. The least noisy figure of the four.
 * - stream: one responder writes `mib` MiB in 256 KiB writes to one initiator (three runs): MB/s, records/s,
 *   CPU and GC time of the process (both ends run in it), peak RSS.
 * - small: the initiator writes 16 bytes, the responder echoes them, for `seconds`: round trips per second
 *   and CPU per round trip (two small records sealed and two opened, four socket writes and reads).
 * - idle: `n` initiators in a child process connect to a responder in this one; `settle` seconds later, RSS
 *   per connection at the responder, then V8 heap used and committed after a forced GC (`--spaces` per heap
 *   space, `--snapshot` heap snapshots before and after, for a diff). Then the initiators PING every `ping`
 *   ms (their own timer; the responder keeps PROTOCOL 4.5's defaults) for `window` seconds: responder CPU
 *   per PING/PONG (`--profile` writes a CPU profile of that window). Last, what stays after every
 *   connection closed.
 *
 * Memory figures need a file descriptor per connection: n stays below `ulimit -n`.
 * Every loop is bounded by a count or a deadline.
 */
import { fork } from 'node:child_process';
import fs from 'node:fs';
import { randomBytes } from 'node:crypto';
import { PerformanceObserver } from 'node:perf_hooks';
import { fileURLToPath, pathToFileURL } from 'node:url';
import v8 from 'node:v8';
import vm from 'node:vm';
import { Connection } from '../src/protocol/connection.js';
import { generateKeyPair, type CryptoBackend, type KeyPair } from '../src/protocol/crypto.js';
import { nobleCrypto } from '../src/protocol/crypto-noble.js';
import { nodeCrypto } from '../src/protocol/crypto-node.js';
import { fromHex, toHex } from '../src/protocol/bytes.js';
import { Session } from '../src/protocol/session.js';
import { Dialer } from '../src/transport/dialer.js';
import { random } from '../src/transport/identity.js';
import type { Link, LinkEvents } from '../src/transport/link.js';
import { Listener } from '../src/transport/listener.js';
import { compactHeap } from '../src/transport/memory.js';

const args = new Map(
  process.argv.slice(2).flatMap((a) => {
    const m = /^--([^=]+)=(.*)$/.exec(a);
    return m ? [[m[1]!, m[2]!] as const] : [];
  }),
);
const mode = process.argv.slice(2).find((a) => !a.startsWith('--')) ?? 'all';
const num = (name: string, dflt: number): number => Number(args.get(name) ?? dflt);
const crypto: CryptoBackend = args.get('crypto') === 'noble' ? nobleCrypto : nodeCrypto;

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

async function waitFor(check: () => boolean, timeoutMs: number, intervalMs = 5): Promise<boolean> {
  const until = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() >= until) return false;
    await sleep(intervalMs);
  }
  return true;
}

const gc = ((): ((o?: { type: 'major' | 'minor'; execution: 'sync' }) => void) => {
  v8.setFlagsFromString('--expose-gc');
  return vm.runInNewContext('gc') as () => void;
})();

function cpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

/** GC pause time (ms) observed while `fn` runs. */
async function withGcTime<T>(fn: () => Promise<T>): Promise<{ result: T; gcMs: number }> {
  let gcMs = 0;
  const obs = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) gcMs += e.duration;
  });
  obs.observe({ entryTypes: ['gc'] });
  try {
    const result = await fn();
    await sleep(0); // let the observer deliver
    return { result, gcMs };
  } finally {
    obs.disconnect();
  }
}

/** Runs `fn` under the V8 CPU profiler and writes the profile (chrome://inspect format) to `file`. */
async function profiled<T>(file: string, fn: () => Promise<T>): Promise<T> {
  const inspector = await import('node:inspector/promises');
  const { writeFileSync } = await import('node:fs');
  const session = new inspector.Session();
  session.connect();
  await session.post('Profiler.enable');
  await session.post('Profiler.setSamplingInterval', { interval: 200 });
  await session.post('Profiler.start');
  try {
    return await fn();
  } finally {
    const { profile } = await session.post('Profiler.stop');
    writeFileSync(file, JSON.stringify(profile));
    session.disconnect();
  }
}

// --- a responder that accepts every device, one session per device key ------------------------------

interface Responder {
  listener: Listener;
  port: number;
  sessions: Map<string, Session>;
  onData?: (bytes: Uint8Array, link: Link, session: Session) => void;
  established: number;
}

async function startResponder(relay: KeyPair): Promise<Responder> {
  const r: Responder = { listener: undefined as unknown as Listener, port: 0, sessions: new Map(), established: 0 };
  const bySocket = new WeakMap<Link, Session>();
  const events: LinkEvents = {
    onOutput(out, link) {
      if (out.type === 'hello') {
        const key = Buffer.from(out.remoteStatic).toString('hex'); // flat, whatever toHex does
        let s = r.sessions.get(key);
        if (!s || !s.canResume(out.hello.received)) {
          s = new Session({ id: random(16) });
          r.sessions.set(key, s);
        }
        bySocket.set(link, s);
        link.connection.accept(s, Date.now());
        link.pump();
      } else if (out.type === 'established') r.established++;
      else if (out.type === 'data') r.onData?.(out.bytes, link, bySocket.get(link)!);
    },
    onClose() {},
  };
  r.listener = new Listener({
    host: '127.0.0.1',
    port: 0,
    connection: () => Connection.responder({ crypto, random, staticKey: relay, now: Date.now() }),
    events,
  });
  r.port = (await r.listener.listen()).port;
  return r;
}

interface Initiator {
  dialer: Dialer;
  session: Session;
  link: Link | undefined;
  established: boolean;
}

function startInitiator(port: number, relayKey: Uint8Array, keys: KeyPair, onData: (b: Uint8Array, i: Initiator) => void, timers = {}): Initiator {
  const session = new Session();
  let ts = 0;
  const i: Initiator = { dialer: undefined as unknown as Dialer, session, link: undefined, established: false };
  i.dialer = new Dialer({
    host: '127.0.0.1',
    port,
    connection: () =>
      Connection.initiator({
        crypto,
        random,
        staticKey: keys,
        remoteStatic: relayKey,
        session,
        timestamp: (ts = Math.max(Date.now(), ts + 1)),
        now: Date.now(),
        timers,
      }),
    events: {
      onOutput(out, link) {
        if (out.type === 'established') {
          i.link = link;
          i.established = true;
        } else if (out.type === 'data') onData(out.bytes, i);
      },
      onClose() {
        i.established = false;
      },
    },
  });
  i.dialer.start();
  return i;
}

// --- stream: bulk bytes responder -> initiator -----------------------------------------------------

async function stream(): Promise<void> {
  const mib = num('mib', 256);
  const total = mib * 1024 * 1024;
  const relay = generateKeyPair(crypto, random);
  const r = await startResponder(relay);
  let got = 0;
  const ini = startInitiator(r.port, relay.publicKey, generateKeyPair(crypto, random), (b) => {
    got += b.length;
  });
  try {
    if (!(await waitFor(() => ini.established && r.established === 1, 10_000))) throw new Error('no connection');
    const link = [...r.listener.links][0]!;
    const session = [...r.sessions.values()][0]!;
    const chunk = new Uint8Array(randomBytes(256 * 1024));
    const rows: string[] = [];
    for (let run = 0; run < 3; run++) {
      got = 0;
      const c0 = cpuMs();
      const t0 = performance.now();
      const { gcMs } = await withGcTime(async () => {
        let written = 0;
        let draining: (() => void) | undefined;
        const prev = r.onData;
        for (let rounds = 0; written < total && rounds < 1_000_000; rounds++) {
          // Like the hub: write until the session says wait, then wait for `drain`.
          let ok = true;
          while (ok && written < total) {
            ok = session.write(chunk);
            written += chunk.length;
          }
          link.pump();
          if (!ok) {
            const drained = new Promise<void>((resolve) => (draining = resolve));
            const t = setInterval(() => {
              if (session.buffered <= session.limits.lowWater) draining?.();
            }, 1);
            await drained;
            clearInterval(t);
          }
        }
        r.onData = prev;
        if (!(await waitFor(() => got >= total, 120_000, 1))) throw new Error(`stream stalled at ${got} of ${total}`);
      });
      const ms = performance.now() - t0;
      const cpu = cpuMs() - c0;
      const records = Math.ceil(total / 65518);
      rows.push(
        `  run ${run + 1}: ${((total / 1e6) / (ms / 1000)).toFixed(0)} MB/s, ${((records / ms) * 1000).toFixed(0)} records/s, ` +
          `CPU ${((cpu / ms) * 100).toFixed(0)}% of a core (both ends), GC ${gcMs.toFixed(0)} ms (${((gcMs / ms) * 100).toFixed(1)}% of the wall time)`,
      );
    }
    console.log(`stream: ${mib} MiB responder -> initiator, 256 KiB writes, ${crypto.name} crypto; peak RSS ${(process.resourceUsage().maxRSS / 1024).toFixed(0)} MiB`);
    for (const row of rows) console.log(row);
  } finally {
    ini.dialer.close();
    await r.listener.close();
  }
}

// --- small: 16-byte echo -------------------------------------------------------------------------

async function small(): Promise<void> {
  const seconds = num('seconds', 5);
  const relay = generateKeyPair(crypto, random);
  const r = await startResponder(relay);
  const msg = new Uint8Array(16).fill(7);
  let trips = 0;
  let stopAt = 0;
  r.onData = (b, link, s) => {
    s.write(b.slice());
    link.pump();
  };
  let pending = 0;
  const ini = startInitiator(r.port, relay.publicKey, generateKeyPair(crypto, random), (b, i) => {
    pending -= b.length;
    if (pending > 0) return;
    trips++;
    if (performance.now() < stopAt) {
      pending = msg.length;
      i.session.write(msg);
      i.link?.pump();
    }
  });
  try {
    if (!(await waitFor(() => ini.established && r.established === 1, 10_000))) throw new Error('no connection');
    const c0 = cpuMs();
    const t0 = performance.now();
    stopAt = t0 + seconds * 1000;
    const { gcMs } = await withGcTime(async () => {
      pending = msg.length;
      ini.session.write(msg);
      ini.link!.pump();
      await waitFor(() => performance.now() >= stopAt && pending <= 0, seconds * 1000 + 10_000, 10);
    });
    const ms = performance.now() - t0;
    const cpu = cpuMs() - c0;
    console.log(`small: 16-byte echo for ${seconds} s, ${crypto.name} crypto`);
    console.log(
      `  ${((trips / ms) * 1000).toFixed(0)} round trips/s, ${((cpu * 1000) / trips).toFixed(1)} µs CPU per round trip ` +
        `(both ends), GC ${gcMs.toFixed(0)} ms (${((gcMs / ms) * 100).toFixed(1)}%)`,
    );
  } finally {
    ini.dialer.close();
    await r.listener.close();
  }
}

// --- core: the protocol layer alone, two connections joined in memory (no sockets, no syscalls) ------

/** An established initiator/responder pair whose writes are handed straight to the other side. */
function corePair(): { agent: Connection; relay: Connection; agentSession: Session; relaySession: Session; run: (now: number) => number; now: number } {
  const relayKey = generateKeyPair(crypto, random);
  const agentSession = new Session();
  const relaySession = new Session({ id: random(16) });
  const agent = Connection.initiator({
    crypto,
    random,
    staticKey: generateKeyPair(crypto, random),
    remoteStatic: relayKey.publicKey,
    session: agentSession,
    timestamp: 1,
    now: 0,
  });
  const relay = Connection.responder({ crypto, random, staticKey: relayKey, now: 0 });
  let delivered = 0;
  /** Polls both until neither has anything; returns the bytes delivered upward meanwhile. */
  const run = (now: number): number => {
    delivered = 0;
    for (let moved = true, rounds = 0; moved && rounds < 1_000_000; rounds++) {
      moved = false;
      for (const [from, to] of [
        [agent, relay],
        [relay, agent],
      ] as const) {
        for (let o = from.poll(now); o; o = from.poll(now)) {
          moved = true;
          if (o.type === 'write') to.receive(o.bytes, now);
          else if (o.type === 'data') delivered += o.bytes.length;
          else if (o.type === 'hello') relay.accept(relaySession, now);
        }
      }
    }
    return delivered;
  };
  run(0);
  if (!agent.isEstablished || !relay.isEstablished) throw new Error('core pair did not establish');
  return { agent, relay, agentSession, relaySession, run, now: 0 };
}

/** CPU µs per op of `ops(n)` (n ops): 20,000 to warm up, then batches of 1,000 for `seconds` (at most 5 million). */
function cpuUsPerOp(seconds: number, ops: (n: number) => void): number {
  ops(20_000);
  const c0 = cpuMs();
  const t0 = performance.now();
  let n = 0;
  while (performance.now() - t0 < seconds * 1000 && n < 5_000_000) {
    ops(1000);
    n += 1000;
  }
  return ((cpuMs() - c0) * 1000) / n;
}

async function core(): Promise<void> {
  const seconds = num('seconds', 3);
  console.log(`core: Connection pairs in memory (no sockets), ${crypto.name} crypto; CPU of both ends`);
  {
    const p = corePair();
    let now = 0;
    const rounds = (n: number): void => {
      for (let i = 0; i < n; i++) {
        now += 10_000; // the ping interval: the agent PINGs, the relay PONGs
        p.run(now);
      }
    };
    console.log(`  heartbeat: ${cpuUsPerOp(seconds, rounds).toFixed(2)} µs per PING/PONG round (2 records sealed and 2 opened, framed and parsed)`);
  }
  {
    const p = corePair();
    const msg = new Uint8Array(16).fill(7);
    let now = 0;
    const trips = (n: number): void => {
      for (let i = 0; i < n; i++) {
        p.agentSession.write(msg);
        p.run(++now);
        p.relaySession.write(msg);
        p.run(now);
      }
    };
    console.log(`  16-byte DATA both ways: ${cpuUsPerOp(seconds, trips).toFixed(2)} µs per round (2 DATA records each way incl. ACKs as due)`);
  }
  {
    const p = corePair();
    const chunk = new Uint8Array(randomBytes(256 * 1024));
    let now = 0;
    const bulk = (bytes: number): number => {
      let got = 0;
      for (let w = 0; w < bytes; w += chunk.length) {
        p.relaySession.write(chunk);
        got += p.run(++now);
      }
      return got;
    };
    bulk(64 * 1024 * 1024);
    const c0 = cpuMs();
    const t0 = performance.now();
    let total = 0;
    while (performance.now() - t0 < seconds * 1000 && total < 64 * 1024 ** 3) total += bulk(32 * 1024 * 1024);
    const cpu = cpuMs() - c0;
    console.log(
      `  bulk: ${(total / 1e6 / (cpu / 1000)).toFixed(0)} MB per CPU-second, ${((total / 65518 / cpu) * 1000).toFixed(0)} records per CPU-second ` +
        `(256 KiB writes, sealed and opened as full records)`,
    );
  }
}

// --- idle: many connections, memory and heartbeat cost at the responder --------------------------

interface AgentsRequest {
  port: number;
  relayKey: string;
  n: number;
  ping: number;
}

/** The child: `n` initiators with their own keys, PINGing every `ping` ms. */
async function agentsChild(): Promise<void> {
  const req = await new Promise<AgentsRequest>((resolve) => process.once('message', (m) => resolve(m as AgentsRequest)));
  const relayKey = fromHex(req.relayKey);
  const all: Initiator[] = [];
  for (let i = 0; i < req.n; i++) {
    all.push(startInitiator(req.port, relayKey, generateKeyPair(crypto, random), () => {}, { pingInterval: req.ping }));
    if (i % 200 === 199) await waitFor(() => all.every((a) => a.established), 30_000, 2);
  }
  const ok = await waitFor(() => all.every((a) => a.established), 60_000, 20);
  process.send!({ connected: all.filter((a) => a.established).length, ok });
  await new Promise((resolve) => process.once('message', resolve));
  for (const a of all) a.dialer.close();
  process.exit(0);
}

/** Resident KiB of this process by kind of mapping (/proc/self/smaps): the brk heap, anonymous maps, files. */
function residentByKind(): Record<string, number> {
  const out: Record<string, number> = {};
  let kind = 'other';
  for (const line of fs.readFileSync('/proc/self/smaps', 'utf8').split('\n')) {
    const m = /^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (m) {
      const name = m[1]!;
      kind = name === '' ? 'anonymous' : name.startsWith('[') ? name : 'files';
      continue;
    }
    const r = /^Rss:\s+(\d+) kB/.exec(line);
    if (r) out[kind] = (out[kind] ?? 0) + Number(r[1]);
  }
  return out;
}

async function idle(): Promise<void> {
  const n = num('n', 5000);
  const ping = num('ping', 1000);
  const windowS = num('window', 10);
  const relay = generateKeyPair(crypto, random);
  const r = await startResponder(relay);
  const snapshot = args.get('snapshot');
  if (snapshot) v8.writeHeapSnapshot(`${snapshot}-0`);
  gc();
  gc();
  const h0 = process.memoryUsage();
  const kinds0 = residentByKind();
  const kinds = (label: string): void => {
    if (!args.has('smaps')) return;
    const k = residentByKind();
    const parts = Object.keys(k).map((name) => `${name} ${(((k[name] ?? 0) - (kinds0[name] ?? 0)) / n).toFixed(2)}`);
    console.log(`    resident KiB per connection by mapping, ${label}: ${parts.join(', ')}`);
  };
  const spaces0 = v8.getHeapSpaceStatistics();
  const child = fork(fileURLToPath(import.meta.url), ['agents-child', ...process.argv.slice(2).filter((a) => a.startsWith('--crypto'))], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  try {
    const connected = new Promise<{ connected: number }>((resolve) => child.once('message', (m) => resolve(m as { connected: number })));
    child.send({ port: r.port, relayKey: toHex(relay.publicKey), n, ping } satisfies AgentsRequest);
    const c = await connected;
    if (c.connected !== n || r.established < n) console.log(`  only ${c.connected} of ${n} connected (${r.established} at the responder)`);
    await sleep(num('settle', 6) * 1000); // the listener gives the burst's heap back once it has settled
    const rss = process.memoryUsage().rss;
    gc();
    gc();
    const h1 = process.memoryUsage();
    kinds('after a forced GC');
    const per = (a: number, b: number): string => ((b - a) / 1024 / n).toFixed(2);
    console.log(`idle: ${n} connections, ${crypto.name} crypto; the responder, per connection: RSS ${per(h0.rss, rss)} KiB before a forced GC; after it:`);
    console.log(
      `  V8 heap used ${per(h0.heapUsed, h1.heapUsed)} KiB, committed ${per(h0.heapTotal, h1.heapTotal)} KiB, ` +
        `external ${per(h0.external, h1.external)} KiB, RSS ${per(h0.rss, h1.rss)} KiB`,
    );
    if (args.has('spaces')) {
      for (const sp of v8.getHeapSpaceStatistics()) {
        const b = spaces0.find((x) => x.space_name === sp.space_name)!;
        console.log(`    ${sp.space_name}: used ${per(b.space_used_size, sp.space_used_size)} KiB, committed ${per(b.space_size, sp.space_size)} KiB`);
      }
    }
    if (snapshot) console.log(`  heap snapshots: ${snapshot}-0, ${v8.writeHeapSnapshot(`${snapshot}-1`)}`);
    const tc = performance.now();
    compactHeap(true);
    console.log(`  one more compacting collection (what the listener does after a burst): ${(performance.now() - tc).toFixed(0)} ms`);
    const written = (): number => {
      let b = 0;
      for (const l of r.listener.links) b += l.socket.bytesWritten;
      return b;
    };
    const w0 = written();
    const c0 = cpuMs();
    const t0 = performance.now();
    const profile = args.get('profile');
    const { gcMs } = await withGcTime(() => (profile ? profiled(profile, () => sleep(windowS * 1000)) : sleep(windowS * 1000)));
    const ms = performance.now() - t0;
    const cpu = cpuMs() - c0;
    const pongs = (written() - w0) / 27; // PROTOCOL 4.2: a PONG is a 27-byte frame
    console.log(
      `  heartbeats: ${((pongs / ms) * 1000).toFixed(0)} PING/PONG per second, ${((cpu * 1000) / pongs).toFixed(1)} µs responder CPU each ` +
        `(${((cpu / ms) * 100).toFixed(1)}% of a core; GC ${((gcMs / ms) * 100).toFixed(1)}%)`,
    );
    child.send('stop');
    await new Promise((resolve) => child.once('exit', resolve));
    await waitFor(() => r.listener.links.size === 0, 30_000, 20);
    r.sessions.clear();
    await sleep(500);
    compactHeap(true);
    const h2 = process.memoryUsage();
    kinds('after every connection closed');
    console.log(`  after every connection closed and a compacting collection: RSS ${per(h0.rss, h2.rss)} KiB, heap used ${per(h0.heapUsed, h2.heapUsed)} KiB per former connection`);
  } finally {
    if (child.exitCode === null) {
      child.send('stop');
      await new Promise((resolve) => child.once('exit', resolve));
    }
    await r.listener.close();
  }
}

async function main(): Promise<void> {
  if (mode === 'agents-child') return agentsChild();
  if (mode === 'core' || mode === 'all') await core();
  if (mode === 'stream' || mode === 'all') await stream();
  if (mode === 'small' || mode === 'all') await small();
  if (mode === 'idle' || mode === 'all') await idle();
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main().then(
    () => process.exit(0),
    (err: unknown) => {
      console.error(err);
      process.exit(1);
    },
  );
}
