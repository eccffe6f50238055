import { randomBytes } from 'node:crypto';
import { Connection, type Output } from '../../src/protocol/connection.js';
import type { CryptoBackend, KeyPair } from '../../src/protocol/crypto.js';
import { generateKeyPair } from '../../src/protocol/crypto.js';
import { nodeCrypto } from '../../src/protocol/crypto-node.js';
import { HelloKind } from '../../src/protocol/hello.js';
import type { ConnectionTimers, SessionLimits } from '../../src/protocol/limits.js';
import { Session } from '../../src/protocol/session.js';
import { toHex } from '../../src/protocol/bytes.js';
import { DropwireError } from '../../src/shared/errors.js';

export const random = (n: number): Uint8Array => new Uint8Array(randomBytes(n));

/** A deterministic byte source for reproducible property tests. */
export function seededRandom(seed: number): (n: number) => Uint8Array {
  let x = seed >>> 0 || 1;
  return (n) => {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      out[i] = x & 0xff;
    }
    return out;
  };
}

export interface Keys {
  relay: KeyPair;
  device: KeyPair;
}

export function makeKeys(crypto: CryptoBackend = nodeCrypto): Keys {
  return { relay: generateKeyPair(crypto, random), device: generateKeyPair(crypto, random) };
}

export interface PairOptions {
  crypto?: CryptoBackend;
  keys?: Keys;
  limits?: Partial<SessionLimits>;
  timers?: Partial<ConnectionTimers>;
  /** The initiator's own timers, when they differ from the responder's (`timers`). */
  clientTimers?: Partial<ConnectionTimers>;
  /** What the relay writes on each new session as soon as it accepts it. */
  serverScript?: Uint8Array[];
  /** Responder policy: refuse with this code instead of accepting. */
  refuse?: (remoteStatic: Uint8Array) => string | undefined;
}

/** One side's view: the session, what it delivered upward, and the events it saw. */
export interface Side {
  session: Session;
  delivered: Uint8Array[];
  events: Output[];
}

export function joined(parts: Uint8Array[]): Uint8Array {
  return Buffer.concat(parts);
}

/**
 * An agent and a relay in memory, joined by a "wire" the test controls byte by byte. The relay keeps
 * sessions by id like the real one does, and accepts a resume when the session can continue.
 */
export class Pair {
  readonly crypto: CryptoBackend;
  readonly keys: Keys;
  readonly client: Side;
  server: Side | undefined;
  readonly sessions = new Map<string, Side>();
  /** Every non-data output of any responder connection (closes before a session exists included). */
  readonly serverEvents: Output[] = [];
  c: Connection | undefined;
  s: Connection | undefined;
  c2s: Uint8Array[] = [];
  s2c: Uint8Array[] = [];
  now = 1_000_000;
  timestamp = 1;
  readonly o: PairOptions;

  constructor(o: PairOptions = {}) {
    this.o = o;
    this.crypto = o.crypto ?? nodeCrypto;
    this.keys = o.keys ?? makeKeys(this.crypto);
    this.client = { session: new Session({ limits: o.limits ?? {} }), delivered: [], events: [] };
  }

  /** A fresh TCP connection: both ends new, the wire empty. */
  connect(): void {
    this.c2s = [];
    this.s2c = [];
    this.c = Connection.initiator({
      crypto: this.crypto,
      random,
      staticKey: this.keys.device,
      remoteStatic: this.keys.relay.publicKey,
      session: this.client.session,
      timestamp: this.timestamp++,
      now: this.now,
      timers: this.o.clientTimers ?? this.o.timers ?? {},
    });
    this.s = Connection.responder({ crypto: this.crypto, random, staticKey: this.keys.relay, now: this.now, timers: this.o.timers ?? {} });
  }

  /** Cuts the connection: neither end sends anything more; bytes on the wire are gone. */
  cut(): void {
    this.c?.abort();
    this.s?.abort();
    this.drainOutputs();
    this.c2s = [];
    this.s2c = [];
  }

  /** Polls both ends once until neither has output; returns the number of outputs handled. */
  drainOutputs(): number {
    let n = 0;
    for (let progress = true; progress; ) {
      progress = false;
      for (const [conn, side] of [
        [this.c, 'client'],
        [this.s, 'server'],
      ] as const) {
        if (!conn) continue;
        for (let out = conn.poll(this.now); out; out = conn.poll(this.now)) {
          n++;
          progress = true;
          this.handle(conn, side, out);
        }
      }
    }
    return n;
  }

  private handle(conn: Connection, side: 'client' | 'server', out: Output): void {
    if (out.type === 'write') {
      (side === 'client' ? this.c2s : this.s2c).push(out.bytes);
      return;
    }
    if (out.type === 'hello') {
      const code = this.o.refuse?.(out.remoteStatic);
      if (code) {
        conn.refuse(code, this.now);
        return;
      }
      const existing = out.hello.kind === HelloKind.RESUME ? this.sessions.get(toHex(out.hello.sessionId)) : undefined;
      let target = existing && existing.session.canResume(out.hello.received) ? existing : undefined;
      if (!target) {
        if (existing) this.sessions.delete(toHex(existing.session.id));
        target = { session: new Session({ id: random(16), limits: this.o.limits ?? {} }), delivered: [], events: [] };
        this.sessions.set(toHex(target.session.id), target);
      }
      const fresh = target.session.epoch === 0;
      this.server = target;
      conn.accept(target.session, this.now);
      if (fresh) for (const b of this.o.serverScript ?? []) target.session.write(b);
      return;
    }
    if (side === 'server' && out.type !== 'data') this.serverEvents.push(out);
    const who = side === 'client' ? this.client : this.server;
    if (!who) return;
    if (out.type === 'data') who.delivered.push(out.bytes.slice());
    else who.events.push(out);
  }

  /** Moves up to `max` bytes across the wire in each direction (in chunks of `chunk` bytes). */
  transfer(max = Infinity, chunk = Infinity): number {
    let moved = 0;
    for (const [queue, to] of [
      [this.c2s, this.s],
      [this.s2c, this.c],
    ] as const) {
      let budget = max;
      while (queue.length > 0 && budget > 0) {
        const head = queue[0]!;
        const n = Math.min(head.length, budget, chunk);
        to?.receive(head.subarray(0, n), this.now);
        if (n === head.length) queue.shift();
        else queue[0] = head.subarray(n);
        budget -= n;
        moved += n;
      }
    }
    return moved;
  }

  /** Runs until nothing moves. */
  settle(chunk = Infinity, maxRounds = 100_000): void {
    for (let i = 0; i < maxRounds; i++) {
      const outs = this.drainOutputs();
      const moved = this.transfer(Infinity, chunk);
      if (outs === 0 && moved === 0) return;
    }
    throw new Error('pair did not settle');
  }

  /** Advances the clock (and lets timers fire through poll). */
  advance(ms: number): void {
    this.now += ms;
  }
}

/** Cuts at `cuts` (taken modulo length + 1; repeats give empty chunks, as an empty read would). */
export function split(bytes: Uint8Array, cuts: readonly number[]): Uint8Array[] {
  const at = cuts.map((c) => c % (bytes.length + 1)).sort((a, b) => a - b);
  const out: Uint8Array[] = [];
  let from = 0;
  for (const c of at) {
    out.push(bytes.subarray(from, c));
    from = c;
  }
  out.push(bytes.subarray(from));
  return out;
}

export const hex = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');

/** The code of what `fn` throws; fails the test when it returns or throws something uncoded. */
export function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    if (!(err instanceof DropwireError)) throw err;
    return err.code;
  }
  throw new Error('expected a DW_* error, nothing was thrown');
}
