/**
 * `npm run bench`: dropwire side by side with Mosquitto 2.0 and Aedes, in one invocation (issue 7).
 *
 * Everything runs on loopback and stops by itself. The relay, Aedes and the load tools run in child
 * processes (their RSS and CPU are read from /proc); Mosquitto is started with its own config and stopped
 * by its PID. dropwire is driven through its HTTP API (keep-alive, many requests in flight) and receives
 * with real agent sessions (bench/load-agents.ts); the MQTT brokers are driven with MQTT.js, QoS 1,
 * persistent sessions, one topic per device (bench/load-mqtt.ts). Prints one table and writes
 * bench/RESULTS.md.
 *
 *   node dist/bench/run.js [--quick] [--only=1,2,...] [--systems=dropwire,mosquitto,aedes] [--no-profile]
 *                          [--no-micro] [--inflight=N] [--batch-inflight=N] [--dir=DIR] [--out=FILE] [--keep]
 *
 * --quick runs small sizes (a smoke test of the runner); --keep leaves the work dir (logs, profiles).
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { MqttClient } from 'mqtt';
import { toHex } from '../src/protocol/bytes.js';
import { nodeCrypto } from '../src/protocol/crypto-node.js';
import { tokenHash } from '../src/relay/http.js';
import { relayPaths } from '../src/relay/relay.js';
import { openSqliteStore } from '../src/relay/store/sqlite.js';
import { loadOrCreateKeyPair } from '../src/transport/identity.js';
import { Child, CpuMeter, deviceKeys, deviceName, hrNow, percentile, sampleProc, sleep, waitFor, waitForQuiet, type ChildEvent } from './common.js';
import { runCryptoBench, type Row as CryptoRow } from './crypto.js';
import { runFloors, type FloorRow } from './floors.js';
import { topicOf } from './load-mqtt.js';
import { freePort, Mosquitto, mosquittoVersion } from './mosquitto.js';
import { summarizeProfile, type ProfileSummary } from './profile.js';
import type { RelayChildOptions } from './relay-child.js';
import { runStoreBench, type StoreBenchResult } from './store.js';
import { runTransportBench, type TransportRow } from './transports.js';

// --- options and sizes ------------------------------------------------------------------------------

const argv = process.argv.slice(2);
const flag = (name: string): boolean => argv.includes(`--${name}`);
const option = (name: string): string | undefined => argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);

const QUICK = flag('quick');
const ONLY = new Set((option('only') ?? '1,2,3,4,5,6,7').split(',').map(Number));
type SystemName = 'dropwire' | 'mosquitto' | 'aedes';
const SYSTEMS = (option('systems') ?? 'dropwire,mosquitto,aedes').split(',') as SystemName[];
const PROFILE = !flag('no-profile');
const MICRO = !flag('no-micro');

const HERE = path.dirname(fileURLToPath(import.meta.url)); // dist/bench
const ROOT = path.resolve(HERE, '..', '..');
const OUT = option('out') ?? path.join(ROOT, 'bench', 'RESULTS.md');

const PAYLOAD = 1024;
/** Other processes above this share of a core make the bench wait (bounded) before each group of runs. */
const QUIET_PCT = 20;
const S1 = { messages: QUICK ? 2_000 : 20_000, devices: 100, inFlight: Number(option('inflight') ?? 128) };
const WARMUP = QUICK ? 500 : 2_000;
/** Not in the issue: scenario 1's messages sent in batches (POST /v1/messages/batch), dropwire only. */
const S1B = { batch: 100, inFlight: Number(option('batch-inflight') ?? 2) };
const S2 = { rate: 2_000, seconds: QUICK ? 3 : 10 };
/** Not in the issue: the same at a rate every system sustains, to show latency without a backlog. */
const S2B = { rate: 200, seconds: QUICK ? 3 : 5 };
const S3 = { messages: QUICK ? 500 : 5_000, devices: 10 };
const S4 = { bytes: 50 * 1024 * 1024, repeats: QUICK ? 1 : 3 };
/**
 * The container's hard RLIMIT_NOFILE is 20,000 and it cannot be raised here (no CAP_SYS_RESOURCE), so a
 * server process can hold a little under 20,000 sockets: the "20,000" step runs with 19,900.
 */
/** The idle window is one whole cycle of dropwire's idle heartbeats on TCP (ACK at 20 and 40 s, PING at 60 s:
 * PROTOCOL 4.5), so that every connection's PING falls in it once, whenever it connected; 6 of MQTT's 10 s. */
const S5 = { steps: QUICK ? [500, 2_000] : [5_000, 19_900], idleS: QUICK ? 5 : 60 };
const S6 = { devices: QUICK ? 200 : 2_000 };

/** Device index ranges (names dev-N; keys derived from N). */
const D = { s1: 0, s3: 100, s4: 110, idle: 1_000 };
const TOTAL_DEVICES = D.idle + S5.steps[S5.steps.length - 1]!;
/** Message tags: scenario * 1e6 + index (carried in the file name or in the payload's first 8 bytes). */
const TAG = 1_000_000;

// --- receipts -----------------------------------------------------------------------------------------

class Receipts {
  readonly total: number;
  readonly times: Float64Array;
  count = 0;
  lastAt = 0;
  constructor(total: number) {
    this.total = total;
    this.times = new Float64Array(total).fill(Number.NaN);
  }
  add(index: number, at: number): void {
    if (index < 0 || index >= this.total || !Number.isNaN(this.times[index]!)) return;
    this.times[index] = at;
    this.count++;
    if (at > this.lastAt) this.lastAt = at;
  }
}

const sinks = new Map<number, Receipts>();
function expectReceipts(scenario: number, total: number): Receipts {
  const r = new Receipts(total);
  sinks.set(scenario, r);
  return r;
}
function route(tag: number, at: number): void {
  sinks.get(Math.floor(tag / TAG))?.add(tag % TAG, at);
}

// --- the systems under test ---------------------------------------------------------------------------

interface Devices {
  readonly pid: number;
  start(from: number, count: number, o?: { hash?: boolean; timeoutMs?: number }): Promise<{ established: number; ms: number }>;
  stats(): Promise<Record<string, number>>;
  mark(): Promise<void>;
  /** Disconnects every device; the process stays for another `start`. */
  disconnect(): Promise<void>;
  stop(): Promise<void>;
}

interface Publisher {
  /** Resolves when the server acknowledged (202 / PUBACK): true, or false on any failure. */
  send(device: number, tag: number, body: Buffer): Promise<boolean>;
  close(): Promise<void>;
}

interface System {
  readonly name: SystemName;
  readonly serverPid: number;
  start(o?: { profile?: string }): Promise<void>;
  stop(): Promise<void>;
  /** Stops the server and starts it again on the same ports. */
  restart(): Promise<{ stopAt: number; readyAt: number }>;
  devices(): Devices;
  publisher(inFlight: number): Promise<Publisher>;
  /** MQTT: subscribe once with a persistent session and go offline, so that the broker queues. */
  prepareOffline(d: Devices, from: number, count: number): Promise<void>;
  serverStats(): Promise<Record<string, unknown> | undefined>;
}

const children = new Set<Child>();
function child(script: string, o: ConstructorParameters<typeof Child>[1] = {}): Child {
  const c = new Child(path.join(HERE, script), o);
  children.add(c);
  void c.exited.then(() => children.delete(c));
  return c;
}

class ChildDevices implements Devices {
  readonly c: Child;
  private readonly kind: 'agents' | 'mqtt';
  private readonly startArgs: (from: number, count: number, hash: boolean) => Record<string, unknown>;
  constructor(kind: 'agents' | 'mqtt', startArgs: (from: number, count: number, hash: boolean) => Record<string, unknown>) {
    this.kind = kind;
    this.startArgs = startArgs;
    this.c = child(kind === 'agents' ? 'load-agents.js' : 'load-mqtt.js');
    this.c.onEvent((e: ChildEvent) => {
      if (e.event !== 'recv') return;
      const times = e.times as number[];
      if (this.kind === 'agents') {
        const names = e.names as string[];
        for (let i = 0; i < names.length; i++) {
          const m = /^m(\d+)\.bin$/.exec(names[i]!);
          if (m) route(Number(m[1]), times[i]!);
        }
      } else {
        const indexes = e.indexes as number[];
        for (let i = 0; i < indexes.length; i++) route(indexes[i]!, times[i]!);
      }
    });
  }
  get pid(): number {
    return this.c.pid;
  }
  start(from: number, count: number, o: { hash?: boolean; timeoutMs?: number } = {}) {
    const timeoutMs = o.timeoutMs ?? 180_000;
    return this.c.call<{ established: number; ms: number }>('start', { ...this.startArgs(from, count, o.hash ?? false), timeoutMs }, timeoutMs + 30_000);
  }
  stats() {
    return this.c.call<Record<string, number>>('stats');
  }
  async mark() {
    await this.c.call('mark');
  }
  async disconnect() {
    await this.c.call('close', undefined, 30_000);
  }
  async stop() {
    await this.c.stop(5_000);
  }
}

/** POSTs through one keep-alive agent; at most `inFlight` requests on the wire, the rest wait in the agent. */
class HttpPublisher implements Publisher {
  private readonly agent: http.Agent;
  private readonly host: string;
  private readonly port: number;
  private readonly token: string;
  constructor(host: string, port: number, token: string, inFlight: number) {
    this.host = host;
    this.port = port;
    this.token = token;
    this.agent = new http.Agent({ keepAlive: true, maxSockets: inFlight, maxFreeSockets: inFlight });
  }
  send(device: number, tag: number, body: Buffer): Promise<boolean> {
    return new Promise((resolve) => {
      const req = http.request(
        {
          agent: this.agent,
          host: this.host,
          port: this.port,
          method: 'POST',
          path: `/v1/messages?to=${deviceName(device)}&filename=m${tag}.bin`,
          headers: { authorization: `Bearer ${this.token}`, 'content-type': 'application/octet-stream', 'content-length': body.length },
        },
        (res) => {
          res.resume();
          res.once('end', () => {
            if (res.statusCode !== 202) publishFailure(`HTTP ${res.statusCode}`);
            resolve(res.statusCode === 202);
          });
          res.once('error', (err) => {
            publishFailure(err.message);
            resolve(false);
          });
        },
      );
      req.once('error', (err) => {
        publishFailure((err as NodeJS.ErrnoException).code ?? err.message);
        resolve(false);
      });
      req.end(body);
    });
  }
  async close() {
    this.agent.destroy();
  }
}

/** Why publishes failed, by reason (printed with the scenario that saw them). */
const publishFailures = new Map<string, number>();
function publishFailure(reason: string): void {
  publishFailures.set(reason, (publishFailures.get(reason) ?? 0) + 1);
}
/** `{ 'why publishes failed': 'ECONNRESET × 3' }` when some did since the last call, else `{}`; resets. */
function takePublishFailures(): Record<string, string> {
  if (publishFailures.size === 0) return {};
  const why = [...publishFailures].map(([reason, n]) => `${reason} × ${n}`).join(', ');
  publishFailures.clear();
  return { 'why publishes failed': why };
}

class MqttPublisher implements Publisher {
  private readonly client: MqttClient;
  private constructor(client: MqttClient) {
    this.client = client;
  }
  static async connect(host: string, port: number): Promise<MqttPublisher> {
    const client = new MqttClient(
      () => net.createConnection({ host, port }),
      { clientId: `bench-pub-${process.pid}`, clean: true, protocolVersion: 4, keepalive: 30, reconnectPeriod: 1000 },
    );
    client.on('error', () => {});
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('publisher could not connect')), 10_000);
      client.once('connect', () => {
        clearTimeout(t);
        resolve();
      });
    });
    return new MqttPublisher(client);
  }
  send(device: number, tag: number, body: Buffer): Promise<boolean> {
    const payload = body.length === PAYLOAD ? Buffer.from(body) : body;
    payload.writeDoubleBE(tag, 0);
    return new Promise((resolve) => this.client.publish(topicOf(deviceName(device)), payload, { qos: 1 }, (err) => resolve(!err)));
  }
  close(): Promise<void> {
    return new Promise((resolve) => this.client.end(false, {}, () => resolve()));
  }
}

interface Setup {
  workDir: string;
  relayDir: string;
  relayKeyHex: string;
  token: string;
}

class DropwireSystem implements System {
  readonly name = 'dropwire' as const;
  private relay: Child | undefined;
  private ports = { listen: 0, http: 0 };
  private info: { agents: string; http: string; publicKey: string } | undefined;
  private runs = 0;
  private readonly s: Setup;
  constructor(s: Setup) {
    this.s = s;
  }

  get serverPid(): number {
    return this.relay!.pid;
  }

  async start(o: { profile?: string } = {}): Promise<void> {
    const opts: RelayChildOptions = {
      dataDir: this.s.relayDir,
      listenPort: this.ports.listen,
      httpPort: this.ports.http,
      logFile: path.join(this.s.workDir, `relay-${++this.runs}.log`),
      logLevel: process.env.DROPWIRE_LOG_LEVEL ?? 'warn',
    };
    const execArgv = ['--expose-gc'];
    if (o.profile) execArgv.push('--cpu-prof', `--cpu-prof-dir=${path.dirname(o.profile)}`, `--cpu-prof-name=${path.basename(o.profile)}`);
    const relay = child('relay-child.js', { args: [JSON.stringify(opts)], execArgv, ...(o.profile ? { env: { BENCH_TRACE_STORE: '0' } } : {}) });
    const ready = await relay.waitEvent('ready', 30_000);
    this.relay = relay;
    this.info = ready.info as { agents: string; http: string; publicKey: string };
    this.ports = { listen: Number(this.info.agents.split(':').pop()), http: Number(this.info.http.split(':').pop()) };
  }

  async stop(): Promise<void> {
    await this.relay?.stop(30_000);
    this.relay = undefined;
  }

  async restart(): Promise<{ stopAt: number; readyAt: number }> {
    const stopAt = hrNow();
    await this.stop();
    await this.start();
    return { stopAt, readyAt: hrNow() };
  }

  /** Fresh relay, fresh ports (a new listener for each group of scenarios). */
  resetPorts(): void {
    this.ports = { listen: 0, http: 0 };
  }

  devices(): Devices {
    const relay = () => ({ host: '127.0.0.1', port: this.ports.listen });
    return new ChildDevices('agents', (from, count, hash) => ({ relay: relay(), relayKey: this.s.relayKeyHex, from, count, hash }));
  }

  async publisher(inFlight: number): Promise<Publisher> {
    return new HttpPublisher('127.0.0.1', this.ports.http, this.s.token, inFlight);
  }

  async prepareOffline(): Promise<void> {
    // A dropwire device's queue exists from enrollment: nothing to prepare.
  }

  serverStats(): Promise<Record<string, unknown> | undefined> {
    return this.relay ? this.relay.call<Record<string, unknown>>('stats') : Promise.resolve(undefined);
  }

  /** The HTTP API's port and a sender token (scenario 1b posts batches itself). */
  get httpPort(): number {
    return this.ports.http;
  }

  get token(): string {
    return this.s.token;
  }

  relayCall<T>(cmd: string): Promise<T> {
    return this.relay!.call<T>(cmd);
  }
}

abstract class MqttSystem implements System {
  abstract readonly name: SystemName;
  abstract readonly serverPid: number;
  abstract start(): Promise<void>;
  abstract stop(): Promise<void>;
  protected port = 0;

  async restart(): Promise<{ stopAt: number; readyAt: number }> {
    const stopAt = hrNow();
    await this.stop();
    await this.start();
    return { stopAt, readyAt: hrNow() };
  }

  devices(): Devices {
    return new ChildDevices('mqtt', (from, count) => ({ host: '127.0.0.1', port: this.port, from, count, subscribe: true }));
  }

  publisher(): Promise<Publisher> {
    return MqttPublisher.connect('127.0.0.1', this.port);
  }

  async prepareOffline(d: Devices, from: number, count: number): Promise<void> {
    await d.start(from, count);
    await d.disconnect();
    await sleep(200);
  }

  async serverStats(): Promise<Record<string, unknown> | undefined> {
    return undefined;
  }

  async newPort(): Promise<void> {
    this.port = await freePort();
  }
}

const brokers = new Set<Mosquitto>();

class MosquittoSystem extends MqttSystem {
  readonly name = 'mosquitto' as const;
  private m: Mosquitto | undefined;
  private readonly dir: string;
  constructor(dir: string) {
    super();
    this.dir = dir;
  }
  get serverPid(): number {
    return this.m!.pid;
  }
  async start(): Promise<void> {
    if (!this.port) await this.newPort();
    const m = new Mosquitto(this.dir, this.port);
    brokers.add(m);
    this.m = m;
    await m.start();
  }
  async stop(): Promise<void> {
    const m = this.m;
    this.m = undefined;
    await m?.stop();
    if (m) brokers.delete(m);
  }
}

class AedesSystem extends MqttSystem {
  readonly name = 'aedes' as const;
  private c: Child | undefined;
  get serverPid(): number {
    return this.c!.pid;
  }
  async start(): Promise<void> {
    if (!this.port) await this.newPort();
    const c = child('aedes-child.js', { args: [String(this.port)] });
    await c.waitEvent('ready', 30_000);
    this.c = c;
  }
  async stop(): Promise<void> {
    await this.c?.stop(30_000);
    this.c = undefined;
  }
}

// --- results --------------------------------------------------------------------------------------------

interface Metric {
  id: string;
  scenario: string;
  what: string;
  unit: string;
  better: 'higher' | 'lower';
  values: Partial<Record<SystemName, number>>;
  notes: Partial<Record<SystemName, string>>;
}
const metrics: Metric[] = [];
function metric(id: string, scenario: string, what: string, unit: string, better: Metric['better']): Metric {
  let m = metrics.find((x) => x.id === id);
  if (!m) {
    m = { id, scenario, what, unit, better, values: {}, notes: {} };
    metrics.push(m);
  }
  return m;
}
function record(id: string, sys: SystemName, value: number, note?: string): void {
  const m = metrics.find((x) => x.id === id)!;
  m.values[sys] = value;
  if (note) m.notes[sys] = note;
}

/** Per scenario and system: CPU of each process (percent of one core) and other facts. */
const details: { scenario: string; system: SystemName; facts: Record<string, string | number> }[] = [];
function detail(scenario: string, system: SystemName, facts: Record<string, string | number>): void {
  details.push({ scenario, system, facts });
  console.log(`  [${system}] ${scenario}: ${Object.entries(facts).map(([k, v]) => `${k}=${typeof v === 'number' ? round(v) : v}`).join(' ')}`);
}
const skipped: string[] = [];

function round(v: number, digits = 3): string {
  if (!Number.isFinite(v)) return 'n/a';
  if (Math.abs(v) >= 1000) return Math.round(v).toLocaleString('en-US');
  return Number(v.toPrecision(digits)).toString();
}

function defineMetrics(): void {
  metric('s1', `1. ${S1.messages.toLocaleString('en-US')} msgs round-robin to ${S1.devices} devices, all received`, 'throughput', 'msg/s', 'higher');
  metric('s1cpu', `1. ${S1.messages.toLocaleString('en-US')} msgs round-robin to ${S1.devices} devices, all received`, 'server CPU per message', 'µs', 'lower');
  metric('s1b', `1b. (extra) ${S1.messages.toLocaleString('en-US')} msgs in batches of ${S1B.batch} (one POST each)`, 'throughput', 'msg/s', 'higher');
  metric('s1bcpu', `1b. (extra) ${S1.messages.toLocaleString('en-US')} msgs in batches of ${S1B.batch} (one POST each)`, 'relay CPU per message', 'µs', 'lower');
  metric('s2p50', `2. latency at ${S2.rate.toLocaleString('en-US')} msg/s for ${S2.seconds} s`, 'p50 publish→receipt', 'ms', 'lower');
  metric('s2p99', `2. latency at ${S2.rate.toLocaleString('en-US')} msg/s for ${S2.seconds} s`, 'p99 publish→receipt', 'ms', 'lower');
  metric('s2bp50', `2b. (extra) latency at ${S2B.rate} msg/s for ${S2B.seconds} s`, 'p50 publish→receipt', 'ms', 'lower');
  metric('s2bp99', `2b. (extra) latency at ${S2B.rate} msg/s for ${S2B.seconds} s`, 'p99 publish→receipt', 'ms', 'lower');
  metric('s3', `3. ${S3.messages.toLocaleString('en-US')} queued for ${S3.devices} offline devices`, 'connect → all delivered', 's', 'lower');
  metric('s4', '4. one 50 MiB file to one device', 'end to end (median)', 'MB/s', 'higher');
  for (const n of S5.steps) {
    metric(`s5rss${n}`, `5. ${n.toLocaleString('en-US')} idle connected devices`, 'server RSS per connection', 'KiB', 'lower');
    metric(`s5cpu${n}`, `5. ${n.toLocaleString('en-US')} idle connected devices`, 'heartbeat CPU (server)', '% of a core', 'lower');
  }
  metric('s6ready', `6. ${S6.devices.toLocaleString('en-US')} devices reconnect after a server restart`, 'server up → all sessions back', 's', 'lower');
  metric('s6stop', `6. ${S6.devices.toLocaleString('en-US')} devices reconnect after a server restart`, 'stop → all sessions back', 's', 'lower');
}

// --- scenarios ------------------------------------------------------------------------------------------

const BODY = randomBytes(PAYLOAD);

/** Calls `fn(i)` for i in [0, total) with at most `inFlight` pending, bounded by `timeoutMs`. */
async function closedLoop(total: number, inFlight: number, timeoutMs: number, fn: (i: number) => Promise<boolean>): Promise<{ ok: number; failed: number }> {
  let next = 0;
  let ok = 0;
  let failed = 0;
  const until = hrNow() + timeoutMs;
  const worker = async () => {
    while (next < total && hrNow() < until) {
      const i = next++;
      if (await fn(i)) ok++;
      else failed++;
    }
  };
  await Promise.all(Array.from({ length: Math.min(inFlight, total) }, worker));
  return { ok, failed };
}

async function warmUp(pub: Publisher): Promise<void> {
  const r = expectReceipts(0, WARMUP);
  await closedLoop(WARMUP, S1.inFlight, 60_000, (i) => pub.send(D.s1 + (i % S1.devices), i, BODY));
  await waitFor(() => r.count >= WARMUP, 60_000);
}

async function scenario1(sys: System, dev: Devices, pub: Publisher): Promise<void> {
  const n = S1.messages;
  const r = expectReceipts(1, n);
  const dw = sys instanceof DropwireSystem ? sys : undefined;
  if (dw) await dw.relayCall('resetCounts');
  const meter = new CpuMeter([sys.serverPid, dev.pid]);
  const server0 = sampleProc(sys.serverPid);
  const t0 = hrNow();
  const sent = await closedLoop(n, S1.inFlight, 180_000, (i) => pub.send(D.s1 + (i % S1.devices), 1 * TAG + i, BODY));
  const acked = hrNow();
  await waitFor(() => r.count >= sent.ok, 120_000);
  const cpu = meter.stop();
  const seconds = (r.lastAt - t0) / 1000;
  record('s1', sys.name, r.count / seconds, r.count < n ? `${r.count}/${n} received` : undefined);
  const facts: Record<string, string | number> = {
    received: r.count,
    failedPublishes: sent.failed,
    ...takePublishFailures(),
    seconds,
    'acked msg/s': sent.ok / ((acked - t0) / 1000),
    'server CPU%': cpu[String(sys.serverPid)]!,
    'devices CPU%': cpu[String(dev.pid)]!,
    'publisher CPU%': cpu.self!,
    'other processes CPU%': cpu.others!,
  };
  if (dw) {
    // The relay's own record: 'received' and 'handled' stored (group commit, fsync) for every message.
    await waitFor(async () => ((await dw.serverStats()) as { counts: Record<string, number> }).counts.handled! >= r.count, 30_000, 50);
    const st = (await dw.serverStats()) as { counts: Record<string, number>; lastAt: Record<string, number>; store: { commits: number; writes: number } };
    facts['relay stored received, msg/s'] = (st.counts.received ?? 0) / (((st.lastAt.received ?? t0) - t0) / 1000);
    facts['relay stored handled, msg/s'] = (st.counts.handled ?? 0) / (((st.lastAt.handled ?? t0) - t0) / 1000);
    facts['store writes/commit'] = st.store.writes / Math.max(1, st.store.commits);
    const lazy = st.store as { lazyJoined?: number; lazyAlone?: number };
    if (lazy.lazyJoined !== undefined && lazy.lazyAlone !== undefined) {
      // sent/received held by the store and written with the message's outcome (one UPDATE), not on their own.
      facts['lazy statuses written with the outcome %'] = (100 * lazy.lazyJoined) / Math.max(1, lazy.lazyJoined + lazy.lazyAlone);
    }
    facts['relay event loop utilization %'] = 100 * ((st as { eventLoopUtilization?: number }).eventLoopUtilization ?? Number.NaN);
    facts['store calls per message (event-loop µs per message)'] = storeCallsPerMessage(st, r.count);
    const io = (st as { io?: { reads: number; writes: number; records: { sealed: number; opened: number } } }).io;
    if (io) facts['relay per message: records sealed / opened, socket writes / reads (agents)'] = [io.records.sealed, io.records.opened, io.writes, io.reads].map((x) => round(x / r.count)).join(' / ');
  }
  // The server's CPU time for the whole run (for dropwire: until every final outcome is stored), per message.
  const server1 = sampleProc(sys.serverPid);
  if (server0 && server1 && r.count > 0) record('s1cpu', sys.name, ((server1.cpuS - server0.cpuS) * 1e6) / r.count);
  detail('1 throughput', sys.name, facts);
}

/**
 * 1b: scenario 1's messages (same count, size and devices, round-robin), S1B.batch to a POST of
 * /v1/messages/batch, each file with its own `to`; closed loop with S1B.inFlight batches on the wire.
 * dropwire only (the peers have no batch publish); scenario 1 is run and reported unchanged beside it.
 */
async function scenario1b(sys: DropwireSystem, dev: Devices): Promise<void> {
  const n = S1.messages;
  const r = expectReceipts(11, n);
  const agent = new http.Agent({ keepAlive: true, maxSockets: S1B.inFlight });
  const boundary = 'dropwire-bench-batch';
  const multipart = (first: number, count: number): Buffer => {
    const parts: Buffer[] = [];
    for (let i = first; i < first + count; i++) {
      const tag = 11 * TAG + i;
      parts.push(
        Buffer.from(
          `--${boundary}\r\ncontent-disposition: form-data; name="to.${i}"\r\n\r\n${deviceName(D.s1 + (i % S1.devices))}\r\n` +
            `--${boundary}\r\ncontent-disposition: form-data; name="file.${i}"; filename="m${tag}.bin"\r\ncontent-type: application/octet-stream\r\n\r\n`,
        ),
        BODY,
        Buffer.from('\r\n'),
      );
    }
    parts.push(Buffer.from(`--${boundary}--\r\n`));
    return Buffer.concat(parts);
  };
  const post = (body: Buffer, count: number): Promise<boolean> =>
    new Promise((resolve) => {
      const req = http.request(
        {
          agent,
          host: '127.0.0.1',
          port: sys.httpPort,
          method: 'POST',
          path: '/v1/messages/batch',
          headers: { authorization: `Bearer ${sys.token}`, 'content-type': `multipart/form-data; boundary=${boundary}`, 'content-length': body.length },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.once('end', () => {
            const ok = res.statusCode === 202 && (JSON.parse(Buffer.concat(chunks).toString()) as { messages?: unknown[] }).messages?.length === count;
            if (!ok) publishFailure(`HTTP ${res.statusCode}`);
            resolve(ok);
          });
          res.once('error', (err) => {
            publishFailure(err.message);
            resolve(false);
          });
        },
      );
      req.once('error', (err) => {
        publishFailure((err as NodeJS.ErrnoException).code ?? err.message);
        resolve(false);
      });
      req.end(body);
    });
  const batches = Math.ceil(n / S1B.batch);
  const bodies = Array.from({ length: batches }, (_, b) => multipart(b * S1B.batch, Math.min(S1B.batch, n - b * S1B.batch)));
  await sys.relayCall('resetCounts');
  type StoreCounts = { store: { commits: number; writes: number }; eventLoopUtilization?: number };
  const store0 = ((await sys.serverStats()) as StoreCounts).store;
  const cpu0 = sampleProc(sys.serverPid);
  const meter = new CpuMeter([sys.serverPid, dev.pid]);
  const t0 = hrNow();
  const sent = await closedLoop(batches, S1B.inFlight, 180_000, (b) => post(bodies[b]!, Math.min(S1B.batch, n - b * S1B.batch)));
  const acked = hrNow();
  await waitFor(() => r.count >= Math.min(n, sent.ok * S1B.batch), 120_000);
  const cpu = meter.stop();
  const cpu1 = sampleProc(sys.serverPid);
  const st = (await sys.serverStats()) as StoreCounts;
  agent.destroy();
  const seconds = (r.lastAt - t0) / 1000;
  const cpuPerMessage = cpu0 && cpu1 ? ((cpu1.cpuS - cpu0.cpuS) * 1e6) / r.count : Number.NaN;
  record('s1b', sys.name, r.count / seconds, r.count < n ? `${r.count}/${n} received` : undefined);
  record('s1bcpu', sys.name, cpuPerMessage);
  detail('1b throughput in batches', sys.name, {
    received: r.count,
    batches,
    'batches in flight': S1B.inFlight,
    failedBatches: sent.failed,
    ...takePublishFailures(),
    seconds,
    'acked msg/s': Math.min(n, sent.ok * S1B.batch) / ((acked - t0) / 1000),
    'relay CPU µs per message': cpuPerMessage,
    'store writes/commit': (st.store.writes - store0.writes) / Math.max(1, st.store.commits - store0.commits),
    'relay event loop utilization %': 100 * (st.eventLoopUtilization ?? Number.NaN),
    'server CPU%': cpu[String(sys.serverPid)]!,
    'devices CPU%': cpu[String(dev.pid)]!,
    'publisher CPU%': cpu.self!,
    'other processes CPU%': cpu.others!,
  });
}

/** Store calls per message and the event-loop milliseconds they held, from the relay child's tracing. */
function storeCallsPerMessage(st: unknown, messages: number): string {
  const calls = (st as { storeCalls?: Record<string, { calls: number; ms: number; cpuMs?: number }> }).storeCalls ?? {};
  return Object.entries(calls)
    .sort((a, b) => b[1].ms - a[1].ms)
    .map(([k, v]) => `${k} ${round(v.calls / messages)} (${round((v.ms * 1000) / messages)} µs${v.cpuMs !== undefined ? `, of which CPU ${round((v.cpuMs * 1000) / messages)} µs` : ''})`)
    .join(', ');
}

async function scenario2(sys: System, dev: Devices, pub: Publisher, o: { rate: number; seconds: number; tag: number; id: string }): Promise<void> {
  const total = o.rate * o.seconds;
  const r = expectReceipts(o.tag, total);
  const ackAt = new Float64Array(total).fill(Number.NaN);
  const interval = 1000 / o.rate;
  const meter = new CpuMeter([sys.serverPid, dev.pid]);
  const dw = sys instanceof DropwireSystem ? sys : undefined;
  type StoreCounts = { store: { commits: number; writes: number } };
  const store0 = dw ? ((await dw.serverStats()) as StoreCounts).store : undefined;
  const t0 = hrNow() + 20;
  let i = 0;
  let failed = 0;
  let maxLag = 0;
  const pending: Promise<void>[] = [];
  const hardStop = t0 + o.seconds * 1000 + 30_000;
  while (i < total && hrNow() < hardStop) {
    const now = hrNow();
    const due = Math.min(total, Math.floor((now - t0) / interval) + 1);
    while (i < due) {
      const k = i++;
      maxLag = Math.max(maxLag, now - (t0 + k * interval));
      pending.push(
        pub.send(D.s1 + (k % S1.devices), o.tag * TAG + k, BODY).then((ok) => {
          if (ok) ackAt[k] = hrNow();
          else failed++;
        }),
      );
    }
    await sleep(1);
  }
  const sendEnd = hrNow();
  await Promise.race([Promise.all(pending), sleep(60_000)]);
  await waitFor(() => r.count >= total - failed, 60_000);
  const cpu = meter.stop();
  const elapsedS = (hrNow() - t0) / 1000;
  const store1 = dw ? ((await dw.serverStats()) as StoreCounts).store : undefined;
  const lat: number[] = [];
  const ack: number[] = [];
  for (let k = 0; k < total; k++) {
    const at = t0 + k * interval;
    if (!Number.isNaN(r.times[k]!)) lat.push(r.times[k]! - at);
    if (!Number.isNaN(ackAt[k]!)) ack.push(ackAt[k]! - at);
  }
  lat.sort((a, b) => a - b);
  ack.sort((a, b) => a - b);
  const note = r.count < total ? `${r.count}/${total} received` : undefined;
  record(`${o.id}p50`, sys.name, percentile(lat, 50), note);
  record(`${o.id}p99`, sys.name, percentile(lat, 99), note);
  detail(`2 latency at ${o.rate} msg/s`, sys.name, {
    received: r.count,
    failedPublishes: failed,
    ...takePublishFailures(),
    'offered msg/s': i / ((sendEnd - t0) / 1000),
    'max send lag ms': maxLag,
    'p99.9 ms': percentile(lat, 99.9),
    'max ms': lat[lat.length - 1] ?? Number.NaN,
    'ack p50 ms': percentile(ack, 50),
    'ack p99 ms': percentile(ack, 99),
    'server CPU%': cpu[String(sys.serverPid)]!,
    'devices CPU%': cpu[String(dev.pid)]!,
    'publisher CPU%': cpu.self!,
    'other processes CPU%': cpu.others!,
    ...(store0 && store1
      ? {
          'store commits/s': (store1.commits - store0.commits) / elapsedS,
          'store writes/commit': (store1.writes - store0.writes) / Math.max(1, store1.commits - store0.commits),
        }
      : {}),
  });
}

async function scenario3(sys: System, pub: Publisher): Promise<void> {
  const n = S3.messages;
  const dev = sys.devices();
  try {
    await sys.prepareOffline(dev, D.s3, S3.devices);
    const r = expectReceipts(3, n);
    const q0 = hrNow();
    const sent = await closedLoop(n, S1.inFlight, 120_000, (i) => pub.send(D.s3 + (i % S3.devices), 3 * TAG + i, BODY));
    const queuedS = (hrNow() - q0) / 1000;
    await sleep(500);
    const early = r.count; // nothing may arrive while the devices are offline
    const meter = new CpuMeter([sys.serverPid, dev.pid]);
    const t0 = hrNow();
    await dev.start(D.s3, S3.devices);
    await waitFor(() => r.count >= sent.ok, 120_000);
    const cpu = meter.stop();
    const seconds = (r.lastAt - t0) / 1000;
    record('s3', sys.name, seconds, r.count < n ? `${r.count}/${n} received` : undefined);
    detail('3 offline queue', sys.name, {
      received: r.count,
      failedPublishes: sent.failed,
      ...takePublishFailures(),
      'received while offline': early,
      'queueing took s': queuedS,
      'delivered msg/s': r.count / seconds,
      'server CPU%': cpu[String(sys.serverPid)]!,
      'devices CPU%': cpu[String(dev.pid)]!,
      'other processes CPU%': cpu.others!,
    });
  } finally {
    await dev.stop();
  }
}

async function scenario4(sys: System, pub: Publisher): Promise<void> {
  const dev = sys.devices();
  try {
    await dev.start(D.s4, 1, { hash: sys.name === 'dropwire' });
    const body = randomBytes(S4.bytes);
    const rates: number[] = [];
    const uploads: number[] = [];
    let cpuServer = 0;
    let cpuDevices = 0;
    let others = 0;
    for (let k = 0; k < S4.repeats; k++) {
      const scenario = 40 + k;
      const r = expectReceipts(scenario, 1);
      const meter = new CpuMeter([sys.serverPid, dev.pid]);
      const t0 = hrNow();
      const ok = await pub.send(D.s4, scenario * TAG, body);
      const acked = hrNow();
      await waitFor(() => r.count >= 1, 60_000, 2);
      const cpu = meter.stop();
      cpuServer = Math.max(cpuServer, cpu[String(sys.serverPid)]!);
      others = Math.max(others, cpu.others!);
      cpuDevices = Math.max(cpuDevices, cpu[String(dev.pid)]!);
      if (!ok || r.count < 1) {
        rates.push(Number.NaN);
        continue;
      }
      rates.push(S4.bytes / 1e6 / ((r.lastAt - t0) / 1000));
      uploads.push(S4.bytes / 1e6 / ((acked - t0) / 1000));
    }
    const st = await dev.stats();
    const sorted = rates.filter(Number.isFinite).sort((a, b) => a - b);
    record('s4', sys.name, percentile(sorted, 50), sorted.length < S4.repeats ? `${sorted.length}/${S4.repeats} delivered` : undefined);
    detail('4 50 MiB file', sys.name, {
      'runs MB/s': rates.map((x) => round(x)).join(' / '),
      'publish→ack MB/s (median)': percentile(uploads.sort((a, b) => a - b), 50),
      'SHA-256 mismatches at the device': st.badHashes ?? 0,
      'server CPU% (max of runs)': cpuServer,
      'devices CPU% (max of runs)': cpuDevices,
      'other processes CPU% (max of runs)': others,
    });
  } finally {
    await dev.stop();
  }
}

async function scenario5(sys: System): Promise<void> {
  const pid = sys.serverPid;
  await sleep(2_000);
  const b0 = sampleProc(pid)!;
  await sleep(5_000);
  const b1 = sampleProc(pid)!;
  const dw = sys instanceof DropwireSystem ? sys : undefined;
  const heap0 = dw ? (await dw.relayCall<{ memory: NodeJS.MemoryUsage }>('gc')).memory : undefined;
  detail('5 idle (no connections)', sys.name, { 'RSS MiB': b1.rssKiB / 1024, 'CPU%': ((b1.cpuS - b0.cpuS) / ((b1.at - b0.at) / 1000)) * 100 });
  const pools: Devices[] = [];
  try {
    let connected = 0;
    let prevRss = b1.rssKiB;
    const churn = async () => {
      let n = 0;
      for (const p of pools) {
        const st = await p.stats();
        n += (st.closes ?? 0) + (st.connects ?? 0) + (st.sessions ?? 0) + (st.resumes ?? 0);
      }
      return n;
    };
    for (const n of S5.steps) {
      const dev = sys.devices();
      pools.push(dev);
      const add = n - connected;
      const res = await dev.start(D.idle + connected, add, { timeoutMs: 240_000 });
      connected += res.established;
      await sleep(3_000);
      await quiet();
      const s0 = sampleProc(pid)!;
      const loads0 = pools.map((p) => sampleProc(p.pid));
      const churn0 = await churn();
      const meter = new CpuMeter([]);
      await sleep(S5.idleS * 1000);
      const othersCpu = meter.stop().others!;
      const s1 = sampleProc(pid)!;
      const churned = (await churn()) - churn0;
      const loadCpu = pools.map((p, i) => ((sampleProc(p.pid)!.cpuS - loads0[i]!.cpuS) / ((s1.at - s0.at) / 1000)) * 100);
      let still = 0;
      for (const p of pools) still += (await p.stats()).connected ?? 0;
      const cpu = ((s1.cpuS - s0.cpuS) / ((s1.at - s0.at) / 1000)) * 100;
      const perConn = (s1.rssKiB - b1.rssKiB) / connected;
      const note =
        connected < n
          ? `${connected}/${n} connected`
          : still < connected
            ? `${still}/${connected} still connected after the idle window`
            : churned > 0
              ? `${churned} connection events (closes, reconnects) during the idle window`
              : undefined;
      record(`s5rss${n}`, sys.name, perConn, note);
      record(`s5cpu${n}`, sys.name, cpu, note);
      const facts: Record<string, string | number> = {
        connected,
        'still connected after idle': still,
        'connect time s': res.ms / 1000,
        'connects/s': res.established / (res.ms / 1000),
        'RSS MiB': s1.rssKiB / 1024,
        'RSS KiB/conn': perConn,
        'marginal RSS KiB/conn (since the previous step)': (s1.rssKiB - prevRss) / Math.max(1, add),
        'connection events in idle window': churned,
        'CPU% over idle window': cpu,
        'device processes CPU%': loadCpu.map((x) => round(x)).join(' + '),
        'other processes CPU%': othersCpu,
      };
      if (dw && heap0) {
        // After a forced GC: what of the RSS is live JS objects, and what is Buffers/ArrayBuffers.
        const st = (await dw.serverStats()) as { online?: number };
        const mem = (await dw.relayCall<{ memory: NodeJS.MemoryUsage }>('gc')).memory;
        facts['relay online'] = st.online ?? 0;
        facts['after GC: V8 heap used KiB/conn'] = (mem.heapUsed - heap0.heapUsed) / 1024 / connected;
        facts['after GC: V8 heap committed KiB/conn'] = (mem.heapTotal - heap0.heapTotal) / 1024 / connected;
        facts['after GC: external+arrayBuffers KiB/conn'] = (mem.external - heap0.external) / 1024 / connected;
        facts['after GC: RSS KiB/conn'] = (sampleProc(pid)!.rssKiB - b1.rssKiB) / connected;
      }
      prevRss = s1.rssKiB;
      detail(`5 idle ${n}`, sys.name, facts);
    }
  } finally {
    for (const p of pools) await p.stop();
  }
}

async function scenario6(sys: System): Promise<void> {
  const dev = sys.devices();
  try {
    const res = await dev.start(D.idle, S6.devices, { timeoutMs: 120_000 });
    await sleep(2_000);
    await quiet();
    await dev.mark();
    const meter = new CpuMeter([]);
    const { stopAt, readyAt } = await sys.restart();
    let st: Record<string, number> = {};
    await waitFor(
      async () => {
        st = await dev.stats();
        return st.establishedSinceMark! >= res.established;
      },
      90_000,
      50,
    );
    const back = st.allBackAt ? st.allBackAt : Number.NaN;
    const note = st.establishedSinceMark! < S6.devices ? `${st.establishedSinceMark}/${S6.devices} back` : undefined;
    record('s6ready', sys.name, (back - readyAt) / 1000, note);
    record('s6stop', sys.name, (back - stopAt) / 1000, note);
    const facts: Record<string, string | number> = {
      'sessions before': res.established,
      'back after restart': st.establishedSinceMark ?? 0,
      'restart took s': (readyAt - stopAt) / 1000,
      'other processes CPU%': meter.stop().others!,
    };
    const relay = (await sys.serverStats()) as { online?: number } | undefined;
    if (relay?.online !== undefined) facts['relay online'] = relay.online;
    detail('6 restart', sys.name, facts);
  } finally {
    await dev.stop();
  }
}

// --- profiles of dropwire's relay ------------------------------------------------------------------

const profiles: { scenario: string; summary: ProfileSummary; messages?: number }[] = [];

async function profilePass(dw: DropwireSystem, workDir: string): Promise<void> {
  const dir = path.join(workDir, 'profiles');
  fs.mkdirSync(dir, { recursive: true });
  /** A relay started with --cpu-prof, 100 devices and a publisher; `load` returns its window's ends. */
  const withPublisher = async (name: string, scenario: string, load: (pub: Publisher) => Promise<{ from: number; to: number; messages: number }>): Promise<void> => {
    dw.resetPorts();
    const file = path.join(dir, `relay-${name}.cpuprofile`);
    await dw.start({ profile: file });
    const dev = dw.devices();
    await dev.start(D.s1, S1.devices);
    const pub = await dw.publisher(S1.inFlight);
    await warmUp(pub);
    const { from, to, messages } = await load(pub);
    await pub.close();
    await dev.stop();
    await dw.stop();
    if (fs.existsSync(file)) profiles.push({ scenario, summary: summarizeProfile(file, { from, to }), messages });
  };
  // 1: throughput.
  if (ONLY.has(1)) {
    await withPublisher('s1', `1 throughput (${S1.messages.toLocaleString('en-US')} messages)`, async (pub) => {
      const r = expectReceipts(91, S1.messages);
      const from = hrNow();
      await closedLoop(S1.messages, S1.inFlight, 180_000, (i) => pub.send(D.s1 + (i % S1.devices), 91 * TAG + i, BODY));
      await waitFor(() => r.count >= S1.messages, 120_000);
      // Until every final outcome is stored: lazy status writes belong to the messages' cost.
      await waitFor(async () => ((await dw.serverStats()) as { counts: Record<string, number> }).counts.handled! >= WARMUP + S1.messages, 30_000, 50);
      return { from, to: hrNow(), messages: S1.messages };
    });
  }
  // 2: the paced load (2,000 msg/s), where per-message costs are higher than at saturation.
  if (ONLY.has(2)) {
    await withPublisher('s2', `2 paced load (${S2.rate.toLocaleString('en-US')} msg/s for ${S2.seconds} s)`, async (pub) => {
      const total = S2.rate * S2.seconds;
      const r = expectReceipts(92, total);
      const from = hrNow();
      const interval = 1000 / S2.rate;
      const sends: Promise<boolean>[] = [];
      for (let i = 0; i < total && hrNow() < from + S2.seconds * 1000 + 30_000; ) {
        const due = Math.min(total, Math.floor((hrNow() - from) / interval) + 1);
        while (i < due) {
          const k = i++;
          sends.push(pub.send(D.s1 + (k % S1.devices), 92 * TAG + k, BODY));
        }
        await sleep(1);
      }
      await Promise.all(sends);
      await waitFor(() => r.count >= total, 60_000);
      return { from, to: hrNow(), messages: total };
    });
  }
  // 3: the offline queue drained (the window: from the devices' start to the last receipt).
  if (ONLY.has(3)) {
    dw.resetPorts();
    const file = path.join(dir, 'relay-s3.cpuprofile');
    await dw.start({ profile: file });
    const pub = await dw.publisher(S1.inFlight);
    const dev = dw.devices();
    const r = expectReceipts(93, S3.messages);
    await closedLoop(S3.messages, S1.inFlight, 120_000, (i) => pub.send(D.s3 + (i % S3.devices), 93 * TAG + i, BODY));
    await sleep(500);
    const from = hrNow();
    await dev.start(D.s3, S3.devices);
    await waitFor(() => r.count >= S3.messages, 120_000);
    const to = hrNow();
    await pub.close();
    await dev.stop();
    await dw.stop();
    if (fs.existsSync(file)) profiles.push({ scenario: `3 offline queue (${S3.messages.toLocaleString('en-US')} messages to ${S3.devices} devices)`, summary: summarizeProfile(file, { from, to }), messages: S3.messages });
  }
  // 4: the large file.
  if (ONLY.has(4)) {
    dw.resetPorts();
    const file = path.join(dir, 'relay-s4.cpuprofile');
    await dw.start({ profile: file });
    const dev = dw.devices();
    await dev.start(D.s4, 1, { hash: true });
    const pub = await dw.publisher(4);
    const body = randomBytes(S4.bytes);
    const from = hrNow();
    for (let k = 0; k < S4.repeats; k++) {
      const r = expectReceipts(95 + k, 1);
      await pub.send(D.s4, (95 + k) * TAG, body);
      await waitFor(() => r.count >= 1, 60_000, 2);
    }
    const to = hrNow();
    await pub.close();
    await dev.stop();
    await dw.stop();
    if (fs.existsSync(file)) profiles.push({ scenario: `4 large file (${S4.repeats} × 50 MiB)`, summary: summarizeProfile(file, { from, to }) });
  }
  // 5: heartbeats of idle sessions (the window excludes the handshakes).
  if (ONLY.has(5)) {
    dw.resetPorts();
    const file = path.join(dir, 'relay-s5.cpuprofile');
    await dw.start({ profile: file });
    const n = S5.steps[0]!;
    const dev = dw.devices();
    await dev.start(D.idle, n, { timeoutMs: 240_000 });
    await sleep(3_000);
    const from = hrNow();
    await sleep(S5.idleS * 1000);
    const to = hrNow();
    await dev.stop();
    await dw.stop();
    if (fs.existsSync(file)) profiles.push({ scenario: `5 heartbeats of ${n.toLocaleString('en-US')} idle sessions (${S5.idleS} s window)`, summary: summarizeProfile(file, { from, to }) });
  }
}

// --- setup --------------------------------------------------------------------------------------------

async function setup(workDir: string): Promise<Setup> {
  const relayDir = path.join(workDir, 'relay');
  fs.mkdirSync(relayDir, { recursive: true, mode: 0o700 });
  const keys = loadOrCreateKeyPair(relayPaths(relayDir).key, nodeCrypto);
  const store = await openSqliteStore({ path: relayPaths(relayDir).db });
  const token = `dwt_${randomBytes(24).toString('base64url')}`;
  const now = Date.now();
  try {
    await store.createToken({ name: 'bench', hash: tokenHash(token), to: '*', createdAt: now });
    const writes: Promise<void>[] = [];
    for (let i = 0; i < TOTAL_DEVICES; i++) {
      writes.push(store.createDevice({ name: deviceName(i), publicKey: toHex(deviceKeys(nodeCrypto, i).publicKey), enrolledAt: now, createdAt: now }));
      if (writes.length >= 1000) await Promise.all(writes.splice(0));
    }
    await Promise.all(writes);
  } finally {
    await store.close();
  }
  return { workDir, relayDir, relayKeyHex: toHex(keys.publicKey), token };
}

/** Before each measurement: wait (bounded) for other processes on this shared machine to calm down. */
function quiet(): Promise<number> {
  return waitForQuiet(QUIET_PCT, 60_000, console.log);
}

async function forEachSystem(systems: System[], label: string, fn: (s: System) => Promise<void>): Promise<void> {
  for (const s of systems) {
    if (!SYSTEMS.includes(s.name)) continue;
    console.log(`\n== ${label}: ${s.name}`);
    await waitForQuiet(QUIET_PCT, 60_000, console.log);
    const t = hrNow();
    try {
      await fn(s);
    } catch (err) {
      const why = err instanceof Error ? err.message : String(err);
      skipped.push(`${label} / ${s.name}: ${why}`);
      console.error(`  ${label} on ${s.name} failed: ${why}`);
      await s.stop().catch(() => {});
    }
    console.log(`   (${((hrNow() - t) / 1000).toFixed(1)} s)`);
  }
}

async function main(): Promise<void> {
  const started = hrNow();
  const workDir = fs.mkdtempSync(path.join(option('dir') ?? os.tmpdir(), 'dropwire-bench-'));
  console.log(`bench: work dir ${workDir}${QUICK ? ' (quick sizes)' : ''}`);
  const machine = describeMachine();
  defineMetrics();
  const othersAtStart = await waitForQuiet(QUIET_PCT, 180_000, console.log);
  machine.othersAtStart = `${othersAtStart.toFixed(0)}% of a core`;

  let crypto: CryptoRow[] = [];
  let floors: FloorRow[] = [];
  let store: StoreBenchResult[] = [];
  let transports: TransportRow[] = [];
  let redirect: string | undefined;
  let cluster: string | undefined;
  if (ONLY.has(7) && MICRO) {
    console.log('\n== 7. crypto backends (bench/crypto.ts)');
    crypto = await runCryptoBench({ durationMs: QUICK ? 200 : 500 });
    console.log('== floors (bench/floors.ts)');
    floors = await runFloors({ quick: QUICK });
    for (const f of floors) console.log(`  ${round(f.us)} µs  ${f.what}`);
    console.log('== store (bench/store.ts)');
    store = await runStoreBench({ dir: workDir });
    console.log('== transports: TCP, ws, wss (bench/transports.ts)');
    transports = await runTransportBench(QUICK ? { mib: 8, n: 200, settleS: 2 } : {});
    redirect = runRedirectBench(workDir);
    cluster = runClusterBench(workDir);
  }

  console.log(`\n== setup: ${TOTAL_DEVICES.toLocaleString('en-US')} devices with known keys in the relay's store`);
  const s = await setup(workDir);
  const dw = new DropwireSystem(s);
  const systems: System[] = [dw, new MosquittoSystem(path.join(workDir, 'mosquitto')), new AedesSystem()];
  const fresh = async (sys: System) => {
    if (sys instanceof DropwireSystem) sys.resetPorts();
    else await (sys as MqttSystem).newPort();
    await sys.start();
  };

  if ([1, 2, 3, 4].some((n) => ONLY.has(n))) {
    await forEachSystem(systems, 'scenarios 1-4', async (sys) => {
      await fresh(sys);
      const dev = sys.devices();
      const pub = await sys.publisher(S1.inFlight);
      try {
        if (ONLY.has(1) || ONLY.has(2)) {
          const res = await dev.start(D.s1, S1.devices);
          if (res.established < S1.devices) throw new Error(`only ${res.established}/${S1.devices} devices connected`);
          await warmUp(pub);
          if (ONLY.has(1)) await quiet().then(() => scenario1(sys, dev, pub));
          if (ONLY.has(1) && sys instanceof DropwireSystem) await quiet().then(() => scenario1b(sys, dev));
          if (ONLY.has(2)) {
            await quiet().then(() => scenario2(sys, dev, pub, { ...S2, tag: 2, id: 's2' }));
            await quiet().then(() => scenario2(sys, dev, pub, { ...S2B, tag: 22, id: 's2b' }));
          }
        }
        if (ONLY.has(3)) await quiet().then(() => scenario3(sys, pub));
        if (ONLY.has(4)) await quiet().then(() => scenario4(sys, pub));
      } finally {
        await pub.close();
        await dev.stop();
        await sys.stop();
      }
    });
  }
  if (ONLY.has(5)) {
    await forEachSystem(systems, 'scenario 5', async (sys) => {
      await fresh(sys);
      try {
        await scenario5(sys);
      } finally {
        await sys.stop();
      }
    });
  }
  if (ONLY.has(6)) {
    await forEachSystem(systems, 'scenario 6', async (sys) => {
      await fresh(sys);
      try {
        await scenario6(sys);
      } finally {
        await sys.stop();
      }
    });
  }
  if (PROFILE && SYSTEMS.includes('dropwire')) {
    console.log('\n== profiles of the relay (node --cpu-prof)');
    try {
      await profilePass(dw, workDir);
    } catch (err) {
      skipped.push(`profiles: ${err instanceof Error ? err.message : String(err)}`);
      await dw.stop().catch(() => {});
    }
  }

  const minutes = (hrNow() - started) / 60_000;
  const table = formatTable();
  console.log(`\n${table}\n`);
  for (const line of targetLines()) console.log(line);
  const md = renderMarkdown({ machine, table, crypto, floors, store, transports, minutes, ...(redirect ? { redirect } : {}), ...(cluster ? { cluster } : {}) });
  fs.writeFileSync(OUT, md);
  console.log(`\nwrote ${path.relative(process.cwd(), OUT)} (${minutes.toFixed(1)} min)`);
  if (!flag('keep')) fs.rmSync(workDir, { recursive: true, force: true });
}

// --- reporting ------------------------------------------------------------------------------------------

function describeMachine(): Record<string, string> {
  const cpus = os.cpus();
  let mhz = cpus[0]?.speed ? String(cpus[0].speed) : '?';
  try {
    mhz = /^cpu MHz\s*:\s*([\d.]+)/m.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'))?.[1]?.replace(/\.\d+$/, '') ?? mhz;
  } catch {
    // not Linux
  }
  const versions: Record<string, string> = {};
  for (const pkg of ['mqtt', 'aedes']) {
    try {
      versions[pkg] = (JSON.parse(fs.readFileSync(path.join(ROOT, 'node_modules', pkg, 'package.json'), 'utf8')) as { version: string }).version;
    } catch {
      versions[pkg] = '?';
    }
  }
  let commit = 'unknown';
  try {
    const git = (...a: string[]) => execFileSync('git', a, { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    commit = `${git('log', '-1', '--format=%h %s').slice(0, 90)}${git('status', '--porcelain', '--', 'src') ? ' (plus uncommitted changes in src/)' : ''}`;
  } catch {
    // not a git checkout
  }
  return {
    date: new Date().toISOString(),
    commit,
    node: process.version,
    nproc: String(os.availableParallelism()),
    cpu: `${cpus[0]?.model ?? '?'} (${cpus.length} × ${mhz} MHz)`,
    memory: `${(os.totalmem() / 2 ** 30).toFixed(1)} GiB`,
    kernel: `${os.type()} ${os.release()}`,
    mosquitto: mosquittoVersion() ?? 'not found',
    aedes: versions.aedes!,
    mqtt: versions.mqtt!,
  };
}

function ratio(m: Metric, peer: SystemName): number {
  const a = m.values.dropwire;
  const b = m.values[peer];
  return a === undefined || b === undefined || b === 0 ? Number.NaN : a / b;
}

function formatTable(): string {
  const header = ['scenario', 'figure', 'unit', 'dropwire', 'mosquitto', 'aedes', 'dw/mosq', 'dw/aedes'];
  const cell = (m: Metric, s: SystemName) => (m.values[s] === undefined ? '—' : `${round(m.values[s]!)}${m.notes[s] ? ' *' : ''}`);
  const rows = metrics.map((m) => [
    m.scenario,
    `${m.what} (${m.better === 'higher' ? '↑' : '↓'})`,
    m.unit,
    cell(m, 'dropwire'),
    cell(m, 'mosquitto'),
    cell(m, 'aedes'),
    `${round(ratio(m, 'mosquitto'))}×`.replace('n/a×', '—'),
    `${round(ratio(m, 'aedes'))}×`.replace('n/a×', '—'),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => (i < 3 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' | ')} |`;
  return [line(header), `|${widths.map((w, i) => (i < 3 ? `:${'-'.repeat(w + 1)}` : `${'-'.repeat(w + 1)}:`)).join('|')}|`, ...rows.map(line)].join('\n');
}

interface TargetCheck {
  target: string;
  measured: string;
  met: boolean | undefined;
}

function targets(): TargetCheck[] {
  const v = (id: string, s: SystemName) => metrics.find((m) => m.id === id)?.values[s];
  const out: TargetCheck[] = [];
  const check = (target: string, value: number | undefined, pass: (x: number) => boolean, show: (x: number) => string) => {
    out.push({ target, measured: value === undefined || !Number.isFinite(value) ? 'not measured' : show(value), met: value === undefined || !Number.isFinite(value) ? undefined : pass(value) });
  };
  const r = (id: string, peer: SystemName) => {
    const a = v(id, 'dropwire');
    const b = v(id, peer);
    return a === undefined || b === undefined ? undefined : a / b;
  };
  check('relay CPU per message at saturation, scenario 1: ≤ 60 µs', v('s1cpu', 'dropwire'), (x) => x <= 60, (x) => `${round(x)} µs`);
  check('(1) ≥ 0.5× Mosquitto msg/s, fsync-durable', r('s1', 'mosquitto'), (x) => x >= 0.5, (x) => `${round(x)}× (${round(v('s1', 'dropwire')!)} vs ${round(v('s1', 'mosquitto')!)} msg/s)`);
  check('(1) ≥ 1× Aedes msg/s', r('s1', 'aedes'), (x) => x >= 1, (x) => `${round(x)}× (${round(v('s1', 'dropwire')!)} vs ${round(v('s1', 'aedes')!)} msg/s)`);
  check('(2) p99 ≤ 3× Mosquitto p99', r('s2p99', 'mosquitto'), (x) => x <= 3, (x) => `${round(x)}× (${round(v('s2p99', 'dropwire')!)} vs ${round(v('s2p99', 'mosquitto')!)} ms)`);
  check('(3) ≤ 1.5× Mosquitto time', r('s3', 'mosquitto'), (x) => x <= 1.5, (x) => `${round(x)}× (${round(v('s3', 'dropwire')!)} vs ${round(v('s3', 'mosquitto')!)} s)`);
  check('(4) ≥ 1.0× Mosquitto MB/s', r('s4', 'mosquitto'), (x) => x >= 1, (x) => `${round(x)}× (${round(v('s4', 'dropwire')!)} vs ${round(v('s4', 'mosquitto')!)} MB/s)`);
  check('(4) ≥ 400 MB/s end to end', v('s4', 'dropwire'), (x) => x >= 400, (x) => `${round(x)} MB/s`);
  for (const n of S5.steps) {
    check(`(5) ≤ 6 KiB per idle connection at ${n.toLocaleString('en-US')}`, v(`s5rss${n}`, 'dropwire'), (x) => x <= 6, (x) => `${round(x)} KiB`);
  }
  const big = S5.steps[S5.steps.length - 1]!;
  check(`(5) heartbeat CPU ≤ 6% of a core at ${big.toLocaleString('en-US')}`, v(`s5cpu${big}`, 'dropwire'), (x) => x <= 6, (x) => `${round(x)}%`);
  check(`(6) ${S6.devices.toLocaleString('en-US')} sessions back within 5 s (from the relay accepting again)`, v('s6ready', 'dropwire'), (x) => x <= 5, (x) => `${round(x)} s (${round(v('s6stop', 'dropwire') ?? Number.NaN)} s from the stop)`);
  return out;
}

function targetLines(): string[] {
  return targets().map((t) => `${t.met === undefined ? '  ?' : t.met ? ' ok' : 'MISS'}  ${t.target}: ${t.measured}`);
}

const ANALYSIS_START = '<!-- analysis:start -->';
const ANALYSIS_END = '<!-- analysis:end -->';

/** The hand-written analysis of an earlier RESULTS.md is kept across runs (between the markers). */
function keptAnalysis(): string | undefined {
  try {
    const old = fs.readFileSync(OUT, 'utf8');
    const a = old.indexOf(ANALYSIS_START);
    const b = old.indexOf(ANALYSIS_END);
    if (a >= 0 && b > a) return old.slice(a, b + ANALYSIS_END.length);
  } catch {
    // no earlier file
  }
  return undefined;
}

/**
 * The drain of idle agents from one node of three (issue 13; bench/redirect.ts, its own processes and Redis), as a
 * markdown section; undefined when redis-server is not installed.
 */
function runRedirectBench(workDir: string): string | undefined {
  try {
    execFileSync('redis-server', ['--version'], { stdio: 'ignore' });
  } catch {
    console.log('== drain of idle agents: skipped (no redis-server)');
    return undefined;
  }
  console.log('== drain of idle agents between relay nodes (bench/redirect.ts)');
  const out = path.join(workDir, 'REDIRECT.md');
  const script = path.join(path.dirname(fileURLToPath(import.meta.url)), 'redirect.js');
  execFileSync(process.execPath, [script, '--agents', QUICK ? '200' : '2000', '--rates', '200,1000', '--out', out], { stdio: 'inherit' });
  return fs.readFileSync(out, 'utf8').replace(/^# .*\n/, '## Drain of idle agents between relay nodes (bench/redirect.ts)\n');
}

/**
 * One load through one relay on SQLite, one node on Redis and three nodes on Redis (issue 12; bench/cluster.ts,
 * its own processes and Redis), as a markdown section; undefined when redis-server is not installed.
 */
function runClusterBench(workDir: string): string | undefined {
  try {
    execFileSync('redis-server', ['--version'], { stdio: 'ignore' });
  } catch {
    console.log('== cluster: skipped (no redis-server)');
    return undefined;
  }
  console.log('== one relay on SQLite, one node and three nodes on Redis (bench/cluster.ts)');
  const out = path.join(workDir, 'CLUSTER.md');
  const script = path.join(path.dirname(fileURLToPath(import.meta.url)), 'cluster.js');
  execFileSync(process.execPath, [script, '--messages', QUICK ? '600' : '3000', '--out', out], { stdio: 'inherit' });
  return fs.readFileSync(out, 'utf8').replace(/^# .*\n/, '## Several relay nodes on Redis (bench/cluster.ts)\n');
}

function renderMarkdown(o: { machine: Record<string, string>; table: string; crypto: CryptoRow[]; floors: FloorRow[]; store: StoreBenchResult[]; transports?: TransportRow[]; redirect?: string; cluster?: string; minutes: number }): string {
  const m = o.machine;
  const lines: string[] = [];
  lines.push('# dropwire benchmarks: side by side with Mosquitto and Aedes');
  lines.push('');
  lines.push(`Written by \`npm run bench\` (bench/run.ts) on ${m.date}${QUICK ? ' with --quick sizes (not the issue\'s sizes)' : ''}; the whole run took ${o.minutes.toFixed(1)} min.`);
  lines.push('');
  lines.push('| machine | |');
  lines.push('|:--|:--|');
  lines.push(`| dropwire | ${m.commit} |`);
  lines.push(`| Node | ${m.node} |`);
  lines.push(`| nproc | ${m.nproc} |`);
  lines.push(`| CPU | ${m.cpu} |`);
  lines.push(`| memory | ${m.memory} |`);
  lines.push(`| kernel | ${m.kernel} |`);
  lines.push(`| peers | Mosquitto ${m.mosquitto}, Aedes ${m.aedes} (in-memory persistence), MQTT.js ${m.mqtt} |`);
  const busiest = Math.max(0, ...details.map((d) => Number(Object.entries(d.facts).find(([k]) => k.startsWith('other processes CPU%'))?.[1] ?? 0)));
  lines.push(`| other load | ${m.othersAtStart} at the start; at most ${busiest.toFixed(0)}% of a core during a scenario (processes outside the bench, per scenario in the details) |`);
  lines.push('');
  lines.push('## Results');
  lines.push('');
  lines.push('Ratios are dropwire / peer: above 1 is better for ↑ figures, below 1 is better for ↓ figures. `*` marks a figure with a');
  lines.push('note in the details (for example: not every message arrived).');
  lines.push('');
  lines.push(o.table);
  lines.push('');
  lines.push('## Against the targets of issue 18 (and (6) of issue 7)');
  lines.push('');
  lines.push('| target | dropwire | met |');
  lines.push('|:--|:--|:--:|');
  for (const t of targets()) lines.push(`| ${t.target} | ${t.measured} | ${t.met === undefined ? '?' : t.met ? 'yes' : '**no**'} |`);
  lines.push('');
  const kept = keptAnalysis();
  if (kept) {
    lines.push(kept);
    lines.push('');
  }
  lines.push('## How each figure is measured');
  lines.push('');
  lines.push(...HOW);
  lines.push('');
  lines.push('## Details per scenario');
  lines.push('');
  lines.push('CPU figures are percent of one core over the scenario, read from /proc/PID/stat (server, device processes) and');
  lines.push('process.cpuUsage() (the publisher, which is the runner itself).');
  lines.push('');
  for (const d of details) {
    lines.push(`- **${d.scenario}**, ${d.system}: ${Object.entries(d.facts).map(([k, v]) => `${k} ${typeof v === 'number' ? round(v) : v}`).join('; ')}`);
  }
  for (const m2 of metrics) for (const [s, note] of Object.entries(m2.notes)) lines.push(`- note, ${m2.scenario} / ${s}: ${note}`);
  if (skipped.length > 0) {
    lines.push('');
    lines.push('### Could not run');
    lines.push('');
    for (const s of skipped) lines.push(`- ${s}`);
  }
  lines.push('');
  if (profiles.length > 0) {
    lines.push('## Where the relay spends its time (node --cpu-prof)');
    lines.push('');
    lines.push('A separate pass after the measurements above, the relay started with `--cpu-prof`; only the samples inside the');
    lines.push('scenario\'s window are counted, idle excluded. Self time is the function itself; inclusive time counts its callees.');
    lines.push('');
    for (const p of profiles) {
      const s = p.summary;
      lines.push(`### ${p.scenario}`);
      lines.push('');
      lines.push(`${round(s.busyMs)} ms busy in a ${round(s.windowMs)} ms window${s.windowed ? '' : ' (whole profile: the window did not line up)'}.`);
      lines.push('');
      if (s.stages.length > 0) {
        const per = p.messages ? p.messages / 1000 : undefined;
        lines.push(per ? `| by stage of a message's path | ms | % | µs per message (${p.messages!.toLocaleString('en-US')} messages) |` : '| by stage | ms | % |');
        lines.push(per ? '|:--|--:|--:|--:|' : '|:--|--:|--:|');
        for (const c of s.stages) lines.push(`| ${c.fn} | ${c.ms} | ${c.pct.toFixed(1)} |${per ? ` ${round(c.ms / per)} |` : ''}`);
        if (per) lines.push(`| **all** | ${s.busyMs} | 100 | **${round(s.busyMs / per)}** |`);
        lines.push('');
      }
      lines.push('| by kind of code | ms | % |');
      lines.push('|:--|--:|--:|');
      for (const c of s.categories) lines.push(`| ${c.fn} | ${c.ms} | ${c.pct.toFixed(1)} |`);
      lines.push('');
      lines.push('| top self time | ms | % |');
      lines.push('|:--|--:|--:|');
      for (const f of s.self) lines.push(`| \`${f.fn}\` | ${f.ms} | ${f.pct.toFixed(1)} |`);
      lines.push('');
      lines.push('| dropwire functions, inclusive | ms | % |');
      lines.push('|:--|--:|--:|');
      for (const f of s.inclusive) lines.push(`| \`${f.fn}\` | ${f.ms} | ${f.pct.toFixed(1)} |`);
      lines.push('');
    }
  }
  if (o.floors.length > 0) {
    lines.push('## Floors: the unavoidable pieces, each measured alone (bench/floors.ts)');
    lines.push('');
    lines.push('CPU per operation on this machine, in this run. A message of scenario 1 needs at least one of the first, a');
    lines.push('share of the second, one 1.1 KiB record each way and a share of small ones (ACK), plus its two durable');
    lines.push('store writes (the store bench below: CPU per row at 256 in flight).');
    lines.push('');
    lines.push('| what | µs CPU | how |');
    lines.push('|:--|--:|:--|');
    for (const f of o.floors) lines.push(`| ${f.what} | ${round(f.us)} | ${f.detail} |`);
    lines.push('');
  }
  if (o.crypto.length > 0) {
    lines.push('## 7. Crypto backends (bench/crypto.ts, `runCryptoBench()`)');
    lines.push('');
    lines.push('One op = one record sealed and opened, or one handshake. MB = 10^6 bytes of plaintext.');
    lines.push('');
    lines.push('| what | backend | record B | ops/s | MB/s |');
    lines.push('|:--|:--|--:|--:|--:|');
    for (const r of o.crypto) lines.push(`| ${r.name} | ${r.backend} | ${r.size ?? ''} | ${round(r.opsPerSec)} | ${r.mbPerSec === null ? '' : round(r.mbPerSec)} |`);
    lines.push('');
  }
  if (o.transports && o.transports.length > 0) {
    lines.push('## Transports (bench/transports.ts, `runTransportBench()`)');
    lines.push('');
    lines.push('The same protocol over TCP, a WebSocket (ws://) and a WebSocket in TLS (wss://) on loopback. Stream: one');
    lines.push('initiator receives 50 MiB in 256 KiB writes, both ends in one process, median of three runs. Idle: the');
    lines.push('responder\'s memory per connection after a forced GC, 1,000 initiators in a child process.');
    lines.push('');
    lines.push('| transport | stream MB/s | CPU % of a core | idle RSS KiB/conn | heap KiB/conn | external KiB/conn |');
    lines.push('|:--|--:|--:|--:|--:|--:|');
    for (const r of o.transports) lines.push(`| ${r.transport} | ${r.mbPerSec ?? ''} | ${r.cpuPct ?? ''} | ${r.rssKiB ?? ''} | ${r.heapKiB ?? ''} | ${r.externalKiB ?? ''} |`);
    lines.push('');
  }
  if (o.cluster) {
    lines.push(o.cluster.trimEnd());
    lines.push('');
  }
  if (o.redirect) {
    lines.push(o.redirect.trimEnd());
    lines.push('');
  }
  if (o.store.length > 0) {
    lines.push('## SQLite store (bench/store.ts, `runStoreBench()`)');
    lines.push('');
    lines.push('1 KiB messages, `synchronous=FULL` (fsync per commit), on the same disk as the relay above. A row is one enqueue, or');
    lines.push("in the \"message's life\" cases one enqueue and the three status changes a delivered message makes (`sent`,");
    lines.push('`received`, `handled`), each with its history and event rows: the store\'s share of one message in scenario 1.');
    lines.push('CPU is the whole process (the fsyncs\' kernel work included) per row.');
    lines.push('');
    lines.push('| case | rows | rows/s | commits | rows/commit | p50 ms | p99 ms | CPU µs/row |');
    lines.push('|:--|--:|--:|--:|--:|--:|--:|--:|');
    for (const r of o.store) lines.push(`| ${r.name} | ${r.rows} | ${round(r.rowsPerSec)} | ${r.commits} | ${r.rowsPerCommit} | ${r.p50Ms} | ${r.p99Ms} | ${r.cpuUsPerRow} |`);
    lines.push('');
  }
  return lines.join('\n');
}

const HOW = [
  `- All three run on this machine, loopback only, one after the other with the same client code paths. The relay runs in`,
  `  its own process (\`bench/relay-child.ts\`, log level \`warn\` to a file: set DROPWIRE_LOG_LEVEL=info to include`,
  `  per-message logging), Aedes in its own process (\`bench/aedes-child.ts\`), Mosquitto with its own config`,
  `  (\`bench/mosquitto.ts\`: defaults except \`max_queued_messages 1000000\` so that no QoS 1 message is dropped,`,
  `  \`persistence false\`). Devices run in separate processes: \`bench/load-agents.ts\` (light agents built from`,
  `  dropwire's own Connection/Session/Dialer/Link code) and \`bench/load-mqtt.ts\` (MQTT.js, fixed client ids, clean`,
  `  session off, QoS 1 subscription to \`d/<device>\`, keepalive 10 s like dropwire's ping interval).`,
  `- Durability differs: dropwire answers 202 only after the message is fsync'd (SQLite WAL, synchronous=FULL, group`,
  `  commit) and stores every status change the same way; Mosquitto here keeps messages in memory (as by default) and`,
  `  Aedes uses its in-memory persistence. The targets are set with that difference in mind.`,
  `- Publishing: dropwire through \`POST /v1/messages\` (node:http keep-alive agent, at most ${S1.inFlight} requests in`,
  `  flight); the brokers through one MQTT.js connection, QoS 1, at most ${S1.inFlight} publishes awaiting PUBACK.`,
  `  "Received" means the device has the whole message: the light agent got the FILE and all its bytes (it answers`,
  `  RECEIVED and RESULT at once), the MQTT client got the PUBLISH (MQTT.js then sends PUBACK). The light agent`,
  `  keeps nothing on disk: the real agent's spool write, fsync and journal entry per file are not in these figures.`,
  `- This machine is shared: before each measurement the runner waits (up to 60 s) until processes outside the bench`,
  `  use less than ${QUIET_PCT}% of a core, and reports what they used during each scenario ("other processes CPU%").`,
  `- (1) Closed loop after a warm-up of ${WARMUP.toLocaleString('en-US')} messages; msg/s = messages received / (last receipt − first publish).`,
  `- (2) Open loop: message k is due at t0 + k/${S2.rate} s and is published then; latency = receipt − due time`,
  `  (so queueing in the publisher counts).`,
  `- (3) The devices are offline while ${S3.messages.toLocaleString('en-US')} messages are queued (MQTT: after one connect + SUBSCRIBE with a`,
  `  persistent session); the clock starts when the devices start to connect and stops at the last receipt.`,
  `- (4) ${S4.repeats} runs of 50 MiB; from the start of the publish to the device holding every byte (dropwire: the`,
  `  light agent also checks the SHA-256, which comes in FILE_END once the relay has stored the message: the file is`,
  `  delivered while it is uploaded, PROTOCOL 7.18); the median is shown.`,
  `- (5) RSS per connection = (server RSS after the idle window − RSS before any connection) / connections. Heartbeat`,
  `  CPU = server CPU time over a ${S5.idleS} s idle window (dropwire agents on TCP send a heartbeat every 20 s when idle,`,
  `  each third one a PING that the relay answers, PROTOCOL 4.5; MQTT clients send PINGREQ every 10 s). The "20,000" step is ${S5.steps[S5.steps.length - 1]!.toLocaleString('en-US')}: this container's hard RLIMIT_NOFILE is 20,000 and cannot be`,
  `  raised (no CAP_SYS_RESOURCE), so no server process can hold 20,000 sockets plus its own files.`,
  `- (6) Graceful stop (SIGTERM) and a new server process on the same port. Devices reconnect by themselves: dropwire`,
  `  agents with their backoff (200 ms doubling, 50% jitter), MQTT.js every 1 s. "server up" is when the new process`,
  `  accepts connections.`,
];

let shuttingDown = false;
async function cleanUp(): Promise<void> {
  if (shuttingDown) return;
  shuttingDown = true;
  await Promise.all([...children].map((c) => c.stop(3_000)));
  await Promise.all([...brokers].map((m) => m.stop(3_000)));
}

process.on('SIGINT', () => {
  void cleanUp().then(() => process.exit(130));
});

main()
  .catch((err: unknown) => {
    console.error(err);
    process.exitCode = 1;
  })
  .finally(() => cleanUp());
