/**
 * Load tool: many agent sessions in ONE process, built from the project's own protocol and transport code
 * (`Connection.initiator`, `Session`, `Dialer`, `Link`, `encodeMessage` / `MessageDecoder`). Each light
 * agent speaks PROTOCOL 7 like the real one — unconfirmed reports then HELLO on every new stream, RECEIVED
 * then RESULT for each file, CONFIRM clears its reports — but it keeps nothing on disk: a file's bytes are
 * counted (or hashed and checked), then dropped. It reconnects with the real agent's backoff and jitter.
 *
 * Used in-process (`new LoadAgents(...)`) or as a child of bench/run.js (fork with IPC): see `main()`.
 */
import { createHash, type Hash } from 'node:crypto';
import net from 'node:net';
import { pathToFileURL } from 'node:url';
import { fromHex } from '../src/protocol/bytes.js';
import { Connection, type Output } from '../src/protocol/connection.js';
import type { CryptoBackend, KeyPair } from '../src/protocol/crypto.js';
import { nobleCrypto } from '../src/protocol/crypto-noble.js';
import { nodeCrypto } from '../src/protocol/crypto-node.js';
import type { ProtocolError } from '../src/protocol/errors.js';
import type { ConnectionTimers } from '../src/protocol/limits.js';
import { CAP_CUT_THROUGH, CAP_REDIRECT, encodeMessage, MessageDecoder, MessageType, type Headers, type Message } from '../src/protocol/messages.js';
import { RedirectFollower } from '../src/agent/redirect.js';
import { pino } from 'pino';
import { Session } from '../src/protocol/session.js';
import { Dialer, type Backoff } from '../src/transport/dialer.js';
import { random } from '../src/transport/identity.js';
import type { Link } from '../src/transport/link.js';
import { initiatorTimers } from '../src/transport/stream.js';
import { deviceKeys, deviceName, hrNow, LOCAL_ADDRESSES, serveParent, sleep } from './common.js';

export interface LightAgentOptions {
  name: string;
  keys: KeyPair;
  relay: { host: string; port: number };
  relayKey: Uint8Array;
  crypto: CryptoBackend;
  localAddress?: string;
  /** Hash each file and check it against the FILE header's SHA-256 (costs CPU; off for small messages). */
  hash: boolean;
  backoff?: Partial<Backoff>;
  timers?: Partial<ConnectionTimers>;
  /** Follow REDIRECT to another relay node as the real agent does (src/agent/redirect.ts; PROTOCOL 7.16). */
  redirects?: boolean;
  events: {
    /** A hand-over to another relay node completed. */
    handedOver?(agent: LightAgent): void;
    established(agent: LightAgent, resumed: boolean): void;
    received(agent: LightAgent, filename: string, size: number, at: number, ok: boolean): void;
    closed?(agent: LightAgent, code: string): void;
  };
}

interface Incoming {
  id: string;
  filename: string;
  size: number;
  got: number;
  /** Absent until FILE_END for a cut-through file (PROTOCOL 7.18). */
  sha256: string | undefined;
  hash: Hash | undefined;
}

const AGENT = 'dropwire-bench/0.1';

/** One device's session: what `src/agent/agent.ts` does on the wire, without spool, journal or rules. */
export class LightAgent {
  readonly name: string;
  private readonly o: LightAgentOptions;
  private readonly session = new Session();
  private readonly dialer: Dialer;
  private decoder = new MessageDecoder();
  private link: Link | undefined;
  private incoming: Incoming | undefined;
  private skipping: string | undefined;
  /** Files received (ids), so that a redelivery is acknowledged without being counted twice. */
  private readonly seen = new Set<string>();
  /** Ids whose RECEIVED/RESULT the relay has not confirmed yet: re-reported on a new stream. */
  private readonly unconfirmed = new Set<string>();
  private lastTs = 0;
  private readonly follower: RedirectFollower | undefined;
  handovers = 0;
  connected = false;
  started = false;
  redelivered = 0;

  constructor(o: LightAgentOptions) {
    this.o = o;
    this.name = o.name;
    this.dialer = new Dialer({
      host: o.relay.host,
      port: o.relay.port,
      backoff: o.backoff ?? {},
      open: (host, port) => net.connect({ host, port, ...(o.localAddress ? { localAddress: o.localAddress } : {}) }),
      connection: (transport) =>
        Connection.initiator({
          crypto: o.crypto,
          random,
          staticKey: o.keys,
          remoteStatic: o.relayKey,
          session: this.session,
          timestamp: this.nextTimestamp(),
          now: Date.now(),
          timers: initiatorTimers(transport, o.timers),
        }),
      events: {
        onOutput: (out, link) => this.onOutput(out, link),
        onClose: (err, link) => this.onClose(err, link),
      },
    });
    if (o.redirects) {
      this.follower = new RedirectFollower({
        log: pino({ level: 'silent' }),
        handedOver: () => {
          this.handovers++;
          o.events.handedOver?.(this);
        },
        dialer: this.dialer,
        follow: () => true,
        open: (address, signal) =>
          new Promise((resolve, reject) => {
            const i = address.lastIndexOf(':');
            const sock = net.connect({ host: address.slice(0, i), port: Number(address.slice(i + 1)), ...(o.localAddress ? { localAddress: o.localAddress } : {}) });
            const abort = () => sock.destroy(new Error('cancelled'));
            signal.addEventListener('abort', abort, { once: true });
            sock.once('error', reject);
            sock.once('connect', () => {
              signal.removeEventListener('abort', abort);
              sock.off('error', reject);
              resolve({ stream: sock, transport: 'tcp', address });
            });
          }),
        connection: (requestId, transport) =>
          Connection.initiator({ crypto: o.crypto, random, staticKey: o.keys, remoteStatic: o.relayKey, session: this.session, timestamp: this.nextTimestamp(), now: Date.now(), timers: initiatorTimers(transport, o.timers), handover: requestId }),
        refuse: (rid, code) => this.send(MessageType.REDIRECT_REFUSED, { rid, code }),
        current: () => `${o.relay.host}:${o.relay.port}`,
      });
    }
  }

  start(): void {
    this.started = true;
    this.dialer.start();
  }

  close(): void {
    this.dialer.close();
  }

  /** Strictly increasing per device key (PROTOCOL 3.7), as the agent's journal keeps it. */
  private nextTimestamp(): number {
    this.lastTs = Math.max(Date.now(), this.lastTs + 1);
    return this.lastTs;
  }

  private onOutput(out: Exclude<Output, { type: 'write' } | { type: 'close' }>, link: Link): void {
    switch (out.type) {
      case 'established':
        this.link = link;
        this.connected = true;
        if (!out.resumed) this.newStream();
        this.o.events.established(this, out.resumed);
        return;
      case 'data':
        this.decoder.push(out.bytes);
        try {
          for (let m = this.decoder.next(); m; m = this.decoder.next()) this.onMessage(m);
        } catch (err) {
          this.link?.close((err as { code?: string }).code ?? 'DW_BAD_MESSAGE');
          this.session.reset();
          this.dialer.redial();
        }
        return;
      default:
        return;
    }
  }

  private onClose(err: ProtocolError, link: Link): void {
    if (this.link !== undefined && this.link !== link) return; // replaced by a hand-over
    if (this.follower?.busy) {
      if (this.link === link) this.link = undefined;
      this.follower.oldClosed();
      return;
    }
    if (this.link === link) this.link = undefined;
    this.connected = false;
    if (err.code === 'DW_SESSION_LOST' && this.session.closed) this.session.reset();
    this.o.events.closed?.(this, err.code);
  }

  /** PROTOCOL 7: re-report what the relay has not confirmed, then HELLO (a light agent keeps no partial files). */
  private newStream(): void {
    this.decoder = new MessageDecoder();
    this.incoming = undefined;
    this.skipping = undefined;
    for (const id of this.unconfirmed) {
      this.send(MessageType.RECEIVED, { id });
      this.send(MessageType.RESULT, { id, status: 'handled' });
    }
    this.send(MessageType.HELLO, { agent: AGENT, partial: [], caps: this.follower ? [CAP_REDIRECT, CAP_CUT_THROUGH] : [CAP_CUT_THROUGH] });
  }

  private send<T extends MessageType>(type: T, header: Headers[T]): void {
    for (const part of encodeMessage(type, header)) this.session.write(part);
    this.link?.pump();
  }

  private onMessage(m: Message): void {
    switch (m.type) {
      case MessageType.FILE: {
        const h = m.header;
        const before = this.incoming;
        if (before && before.id === h.id && before.got === h.offset && h.offset > 0) {
          // The rest of a cut-through file the relay let go, from where it stopped (PROTOCOL 7.18).
          before.sha256 = h.sha256;
          if (before.got >= before.size && before.sha256 !== undefined) this.complete();
          return;
        }
        this.incoming = undefined;
        this.skipping = undefined;
        if (this.seen.has(h.id)) {
          this.redelivered++;
          this.skipping = h.id;
          this.report(h.id);
          return;
        }
        this.incoming = {
          id: h.id,
          filename: h.filename,
          size: h.size,
          got: h.offset,
          sha256: h.sha256,
          hash: this.o.hash && h.offset === 0 ? createHash('sha256') : undefined,
        };
        if (h.offset >= h.size && h.sha256 !== undefined) this.complete();
        return;
      }
      case MessageType.FILE_END: {
        // PROTOCOL 7.18: the relay stored the file; its hash ends it.
        if (this.skipping === m.header.id) return;
        const t = this.incoming;
        if (!t || t.id !== m.header.id || t.got < t.size) throw Object.assign(new Error('FILE_END without its whole file'), { code: 'DW_BAD_MESSAGE' });
        t.sha256 = m.header.sha256;
        this.complete();
        return;
      }
      case MessageType.CHUNK: {
        if (this.skipping === m.header.id) return;
        const t = this.incoming;
        if (!t || t.id !== m.header.id) throw Object.assign(new Error('CHUNK without its FILE'), { code: 'DW_BAD_MESSAGE' });
        for (const part of m.parts) {
          t.got += part.length;
          t.hash?.update(part);
        }
        if (t.got >= t.size && t.sha256 !== undefined) this.complete();
        return;
      }
      case MessageType.CONFIRM:
        for (const id of m.header.ids) this.unconfirmed.delete(id);
        return;
      case MessageType.CANCEL:
        if (this.incoming?.id === m.header.id) this.incoming = undefined;
        return;
      case MessageType.REDIRECT:
        if (!this.follower) throw Object.assign(new Error('REDIRECT to an agent that did not list it'), { code: 'DW_BAD_MESSAGE' });
        this.follower.onRedirect(m.header);
        return;
      default:
        throw Object.assign(new Error(`message type ${m.type} is not for the agent`), { code: 'DW_BAD_MESSAGE' });
    }
  }

  private complete(): void {
    const t = this.incoming!;
    this.incoming = undefined;
    const at = hrNow();
    const ok = t.hash === undefined || t.hash.digest('hex') === t.sha256;
    this.seen.add(t.id);
    this.report(t.id);
    this.o.events.received(this, t.filename, t.size, at, ok);
  }

  /** RECEIVED then RESULT 'handled' (a discard handler that always succeeds). */
  private report(id: string): void {
    this.unconfirmed.add(id);
    this.send(MessageType.RECEIVED, { id });
    this.send(MessageType.RESULT, { id, status: 'handled' });
  }
}

export interface LoadAgentsOptions {
  relay: { host: string; port: number };
  relayKey: Uint8Array;
  crypto?: CryptoBackend;
  /** Device indexes [from, from + count): names and keys come from bench/common.ts. */
  from: number;
  count: number;
  hash?: boolean;
  backoff?: Partial<Backoff>;
  localAddresses?: readonly string[];
  /** The agents follow REDIRECT (PROTOCOL 7.16). */
  redirects?: boolean;
  onReceived?(device: string, filename: string, size: number, at: number, ok: boolean): void;
}

/** A pool of light agents with counters; `start()` ramps the dialing so a listen backlog is not flooded. */
export class LoadAgents {
  readonly agents: LightAgent[] = [];
  /** Devices established at least once since `mark()`. */
  private since = new Set<string>();
  everEstablished = 0;
  sessions = 0;
  resumes = 0;
  closes = 0;
  received = 0;
  receivedBytes = 0;
  badHashes = 0;
  lastReceivedAt = 0;
  markedAt = hrNow();
  /** When the last device of those counted since `mark()` got (back) its session. */
  allBackAt: number | undefined;
  private readonly ever = new Set<string>();

  constructor(o: LoadAgentsOptions) {
    const crypto = o.crypto ?? nodeCrypto;
    const addresses = o.localAddresses ?? LOCAL_ADDRESSES;
    for (let i = o.from; i < o.from + o.count; i++) {
      this.agents.push(
        new LightAgent({
          name: deviceName(i),
          keys: deviceKeys(crypto, i),
          relay: o.relay,
          relayKey: o.relayKey,
          crypto,
          hash: o.hash ?? false,
          ...(o.redirects ? { redirects: true } : {}),
          ...(addresses.length > 0 ? { localAddress: addresses[i % addresses.length]! } : {}),
          ...(o.backoff ? { backoff: o.backoff } : {}),
          events: {
            established: (a, resumed) => {
              if (resumed) this.resumes++;
              else this.sessions++;
              if (!this.ever.has(a.name)) {
                this.ever.add(a.name);
                this.everEstablished++;
              }
              if (!this.since.has(a.name)) {
                this.since.add(a.name);
                if (this.since.size === this.agents.length) this.allBackAt = hrNow();
              }
            },
            received: (a, filename, size, at, ok) => {
              this.received++;
              this.receivedBytes += size;
              this.lastReceivedAt = at;
              if (!ok) this.badHashes++;
              o.onReceived?.(a.name, filename, size, at, ok);
            },
            closed: () => {
              this.closes++;
            },
          },
        }),
      );
    }
  }

  get connected(): number {
    let n = 0;
    for (const a of this.agents) if (a.connected) n++;
    return n;
  }

  /** Counts again which devices get a session from now on (a relay restart, say). */
  mark(): void {
    this.since = new Set();
    this.allBackAt = undefined;
    this.markedAt = hrNow();
  }

  get establishedSinceMark(): number {
    return this.since.size;
  }

  /**
   * Starts every agent, at most `inFlight` handshakes outstanding at a time; resolves when all were
   * established once or `timeoutMs` passed (the rest keep dialing on their own).
   */
  async start(inFlight = 256, timeoutMs = 120_000): Promise<{ established: number; ms: number }> {
    const t0 = hrNow();
    const until = t0 + timeoutMs;
    let next = 0;
    while (hrNow() < until) {
      while (next < this.agents.length && next - this.everEstablished < inFlight) this.agents[next++]!.start();
      if (this.everEstablished >= this.agents.length) break;
      await sleep(5);
    }
    return { established: this.everEstablished, ms: hrNow() - t0 };
  }

  stats(): Record<string, number> {
    return {
      agents: this.agents.length,
      connected: this.connected,
      everEstablished: this.everEstablished,
      establishedSinceMark: this.since.size,
      sessions: this.sessions,
      resumes: this.resumes,
      closes: this.closes,
      received: this.received,
      receivedBytes: this.receivedBytes,
      badHashes: this.badHashes,
      redelivered: this.agents.reduce((n, a) => n + a.redelivered, 0),
      lastReceivedAt: this.lastReceivedAt,
      allBackAt: this.allBackAt ?? 0,
      markedAt: this.markedAt,
      rssKiB: Math.round(process.memoryUsage.rss() / 1024),
    };
  }

  close(): void {
    for (const a of this.agents) a.close();
  }
}

/**
 * Child-process mode: `start` { relay, relayKey (hex), from, count, hash, inFlight, crypto }, then
 * `stats`, `mark`, `close`. Receipts are pushed as `recv` events in batches: parallel arrays of file
 * names and receipt times (hrNow ms), every 10 ms at most.
 */
async function main(): Promise<void> {
  let pool: LoadAgents | undefined;
  let names: string[] = [];
  let times: number[] = [];
  let flushTimer: NodeJS.Timeout | undefined;
  const { emit } = serveParent({
    start: async (a: { relay: { host: string; port: number }; relayKey: string; from: number; count: number; hash?: boolean; inFlight?: number; timeoutMs?: number; crypto?: 'node' | 'noble' }) => {
      pool = new LoadAgents({
        relay: a.relay,
        relayKey: fromHex(a.relayKey),
        crypto: a.crypto === 'noble' ? nobleCrypto : nodeCrypto,
        from: a.from,
        count: a.count,
        hash: a.hash ?? false,
        onReceived: (_device, filename, _size, at) => {
          names.push(filename);
          times.push(at);
          flushTimer ??= setTimeout(flush, 10);
        },
      });
      return pool.start(a.inFlight ?? 256, a.timeoutMs ?? 120_000);
    },
    stats: () => pool?.stats() ?? {},
    mark: () => {
      pool?.mark();
      return true;
    },
    close: async () => {
      pool?.close();
      await sleep(200);
      return true;
    },
  });
  const flush = () => {
    flushTimer = undefined;
    if (names.length === 0) return;
    emit({ event: 'recv', names, times });
    names = [];
    times = [];
  };
  process.on('SIGTERM', () => {
    pool?.close();
    setTimeout(() => process.exit(0), 200).unref();
  });
}

const entry = process.argv[1];
if (entry !== undefined && import.meta.url === pathToFileURL(entry).href) {
  main().catch((err: unknown) => {
    console.error(err);
    process.exit(1);
  });
}
