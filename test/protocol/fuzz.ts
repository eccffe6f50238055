/**
 * Deterministic fuzzing of the pure protocol core. Random, structured and mutated bytes go into every
 * decoder and into both ends of a `Connection`, in random chunkings. Every case must end either fine or
 * with a `DropwireError` carrying a `DW_*` code: decoders throw one, connections emit a `close` output.
 * Anything else (another exception, an uncoded error, a coded error wrapping a native one in a
 * catch-all, a hang, a result that depends on the chunking, a forged hello or data) stops the run with a
 * `FuzzFailure` naming the seed and case index; `runFuzz({ seed, start: index, cases: 1 })` replays it.
 *
 * Valid samples (real handshakes and record streams) are built once per seed. Connections are re-created
 * per case with the samples' fixed ephemeral keys, so a captured message 2 or record stream is valid for
 * them and mutations reach every stage: magic, handshake frames, Noise, hellos, records, counters.
 */
import { LOW_ORDER_HEX } from '../fixtures/low-order.js';
import { concat, equal, toHex } from '../../src/protocol/bytes.js';
import { Connection, type Output } from '../../src/protocol/connection.js';
import { generateKeyPair, type KeyPair } from '../../src/protocol/crypto.js';
import { nodeCrypto } from '../../src/protocol/crypto-node.js';
import { ProtocolCode, type ProtocolError } from '../../src/protocol/errors.js';
import { encodeFrame, FrameDecoder } from '../../src/protocol/frame.js';
import {
  decodeClientHello,
  decodeServerHello,
  encodeClientHello,
  encodeServerHello,
  HelloKind,
  type ClientHello,
  type ServerHello,
} from '../../src/protocol/hello.js';
import {
  MAGIC,
  MAX_DATA_PAYLOAD,
  MAX_FRAME,
  MAX_HANDSHAKE_MESSAGE,
  MAX_MESSAGE_BODY,
  MAX_MESSAGE_HEADER,
  SESSION_ID_LENGTH,
  type ConnectionTimers,
} from '../../src/protocol/limits.js';
import { encodeMessage, MessageDecoder, MessageType, type Message } from '../../src/protocol/messages.js';
import { decodeRecord, encodeRecord, RecordType, type Record as WireRecord } from '../../src/protocol/records.js';
import { Session } from '../../src/protocol/session.js';
import { DropwireError } from '../../src/shared/errors.js';

export interface FuzzOptions {
  /** How many cases to run. */
  cases: number;
  /** Everything (samples, keys, inputs, chunkings, clocks) derives from it. */
  seed: number;
  /** Index of the first case (to replay one case: `{ seed, start: index, cases: 1 }`). */
  start?: number;
}

export interface FuzzReport {
  cases: number;
  /** How many cases ended with each code; `ok` when a case ended without an error. */
  byCode: Record<string, number>;
  /** The same per target, with the innermost DW_* cause of a connection's close in parentheses. */
  byTarget: Record<string, Record<string, number>>;
}

/** A case broke an invariant; everything needed to reproduce it is on the error. */
export class FuzzFailure extends Error {
  readonly seed: number;
  readonly index: number;
  readonly target: string;
  readonly detail: string;
  /** The bytes fed, and how they were cut. */
  readonly input: Uint8Array;
  readonly chunks: readonly number[];

  constructor(seed: number, index: number, target: string, detail: string, input: Uint8Array, chunks: readonly number[], options?: { cause?: unknown }) {
    const hex = toHex(input);
    const cuts = chunks.length > 64 ? `${chunks.slice(0, 64).join(',')},... (${chunks.length} chunks)` : chunks.join(',');
    super(
      `fuzz failure (seed ${seed}, case ${index}, target ${target}): ${detail}\n` +
        `replay: runFuzz({ seed: ${seed}, start: ${index}, cases: 1 })\n` +
        `chunks: [${cuts}]\n` +
        `input (${input.length} bytes): ${hex.length > 8192 ? `${hex.slice(0, 8192)}...` : hex}`,
      options,
    );
    this.name = 'FuzzFailure';
    this.seed = seed;
    this.index = index;
    this.target = target;
    this.detail = detail;
    this.input = input;
    this.chunks = chunks;
  }
}

/** An invariant broken inside a case; turned into a FuzzFailure with the case's coordinates. */
class Broken extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'Broken';
  }
}

// --- seeded randomness -------------------------------------------------------------------------

/** sfc32, seeded by splitmix32 from (seed, stream): small, fast, and good enough to pick mutations. */
export class Prng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(seed: number, stream = 0) {
    let s = (seed ^ Math.imul(stream + 0x632be5ab, 0x9e3779b9)) >>> 0;
    const next = (): number => {
      s = (s + 0x9e3779b9) | 0;
      let z = s;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.a = next();
    this.b = next();
    this.c = next();
    this.d = next();
    for (let i = 0; i < 12; i++) this.u32();
  }

  u32(): number {
    const t = (((this.a + this.b) | 0) + this.d) | 0;
    this.d = (this.d + 1) | 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) | 0;
    this.c = (this.c << 21) | (this.c >>> 11);
    this.c = (this.c + t) | 0;
    return t >>> 0;
  }

  /** 0 <= x < n (n <= 2^32). */
  int(n: number): number {
    return Math.floor((this.u32() / 0x1_0000_0000) * n);
  }

  chance(p: number): boolean {
    return this.u32() / 0x1_0000_0000 < p;
  }

  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }

  bytes(n: number): Uint8Array {
    const out = new Uint8Array(n);
    let i = 0;
    for (; i + 4 <= n; i += 4) {
      const x = this.u32();
      out[i] = x;
      out[i + 1] = x >>> 8;
      out[i + 2] = x >>> 16;
      out[i + 3] = x >>> 24;
    }
    for (; i < n; i++) out[i] = this.u32();
    return out;
  }

  /** A length biased towards small values, at most `max`. */
  size(max: number): number {
    const r = this.int(10);
    const cap = r < 4 ? 16 : r < 7 ? 256 : r < 9 ? 2048 : max;
    return this.int(Math.min(cap, max) + 1);
  }

  /** The `random` source a Connection or key generation takes. */
  get source(): (n: number) => Uint8Array {
    return (n) => this.bytes(n);
  }
}

// --- bounds and dictionaries -------------------------------------------------------------------

/** No case feeds more than this (a max-size message plus change). */
const MAX_INPUT = MAX_MESSAGE_BODY + 64 * 1024;
/** Byte-by-byte chunking only up to this size (ChunkReader.take is quadratic in chunks; see report). */
const MAX_BYTEWISE = 2048;
/** A connection that keeps producing outputs past this is hung. */
const MAX_OUTPUTS = 20_000;
const T0 = 1_000_000;

const U8 = [0, 1, 0x7f, 0x80, 0xfe, 0xff];
const U16 = [0, 1, 2, 7, 8, 9, 16, 17, 32, 33, 47, 48, 49, 64, 80, 96, 97, 1023, 1024, 1025, 0x7fff, 0x8000, 0xffef, 0xfff0, 0xfffe, 0xffff];
const U32 = [0, 1, 0xff, 0x3fff, 0x4000, 0x4001, 0xffff, 0x10000, 0xfffff, 0x100000, 0x100001, 0x7fffffff, 0x80000000, 0xffffffff];
/** X25519 public keys of small order (and non-canonical encodings): DH with them must fail cleanly. */
const LOW_ORDER = LOW_ORDER_HEX.map((h) => Uint8Array.from(h.match(/../g)!, (x) => parseInt(x, 16)));
const JSON_ODDITIES: unknown[] = [null, true, false, 0, -1, 1.5, 2 ** 53, -0, 1e308, '', 'x'.repeat(1025), [], {}, [1], { a: 1 }, '🙂'];
const HEADER_ODDITIES = ['', '{', '[]', 'null', '1', '"s"', '{}', '{"__proto__":{"id":"x"}}', '\ufeff{}', '{"id":"\\ud800"}'];
const ALPHABET = ['a', 'Z', '0', '-', '_', '.', ' ', 'é', '€', '🙂', '"', '\\', '\n', '\u0000', '\ufeff'];

const enc = new TextEncoder();

function u16(n: number): Uint8Array {
  return Uint8Array.of(n >>> 8, n & 0xff);
}

function u32(n: number): Uint8Array {
  return Uint8Array.of(n >>> 24, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff);
}

/** Mostly short strings, some with multi-byte characters; with `long`, now and then one at the 1024 limit. */
function randomString(rng: Prng, max = 24, long = true): string {
  if (long && rng.chance(0.02)) return 'x'.repeat(rng.pick([1023, 1024, 1025]));
  let s = '';
  const n = 1 + rng.int(max);
  const ascii = rng.chance(0.7);
  for (let i = 0; i < n; i++) s += ascii ? String.fromCharCode(0x61 + rng.int(26)) : rng.pick(ALPHABET);
  return s;
}

function randomCount(rng: Prng): number {
  return rng.pick([0, 1, rng.int(1000), rng.int(0x1_0000_0000), Number.MAX_SAFE_INTEGER, 2 ** 53, -1]);
}

// --- mutation and chunking ---------------------------------------------------------------------

/** 1..5 random edits: bit flips, byte sets, insertions, deletions, truncation, duplication, splicing. */
export function mutate(rng: Prng, input: Uint8Array, donors: readonly Uint8Array[], maxLen = MAX_INPUT): Uint8Array {
  let b: Uint8Array = input.slice();
  const edits = rng.chance(0.5) ? 1 : 2 + rng.int(4);
  for (let k = 0; k < edits; k++) {
    const n = b.length;
    const at = rng.int(n + 1);
    switch (rng.int(12)) {
      case 0: // flip one bit
        if (n > 0) b[rng.int(n)]! ^= 1 << rng.int(8);
        break;
      case 1: // set one byte
        if (n > 0) b[rng.int(n)] = rng.chance(0.5) ? rng.int(256) : rng.pick(U8);
        break;
      case 2: // insert random or interesting bytes
        b = concat([b.subarray(0, at), rng.chance(0.5) ? rng.bytes(1 + rng.int(16)) : rng.chance(0.5) ? u16(rng.pick(U16)) : u32(rng.pick(U32)), b.subarray(at)]);
        break;
      case 3: // delete a range
        b = concat([b.subarray(0, at), b.subarray(Math.min(n, at + 1 + rng.int(32)))]);
        break;
      case 4: // truncate (often near the end)
        b = b.slice(0, rng.chance(0.5) ? at : Math.max(0, n - 1 - rng.int(Math.min(n, 17))));
        break;
      case 5: {
        // duplicate a range somewhere
        const from = rng.int(n + 1);
        const len = rng.int(Math.min(n - from, 64) + 1);
        b = concat([b.subarray(0, at), b.slice(from, from + len), b.subarray(at)]);
        break;
      }
      case 6: {
        // splice: our head, a donor's tail
        const d = donors.length > 0 ? rng.pick(donors) : rng.bytes(rng.size(256));
        b = concat([b.subarray(0, at), d.subarray(rng.int(d.length + 1))]);
        break;
      }
      case 7: // overwrite a u16 with an interesting length
        if (n >= 2) b.set(u16(rng.pick(U16)), rng.int(n - 1));
        break;
      case 8: // overwrite a u32 with an interesting length
        if (n >= 4) b.set(u32(rng.pick(U32)), rng.int(n - 3));
        break;
      case 9: // append random bytes
        b = concat([b, rng.bytes(1 + rng.int(64))]);
        break;
      case 10: // a low-order X25519 point over 32 bytes
        if (n >= 32) b.set(rng.pick(LOW_ORDER), rng.chance(0.5) ? rng.int(n - 31) : Math.min(n - 32, rng.pick([0, 2, 4, 6])));
        break;
      default: // a short run of random bytes
        if (n > 0) {
          const i = rng.int(n);
          b.set(rng.bytes(Math.min(n - i, 1 + rng.int(8))), i);
        }
    }
    if (b.length > maxLen) b = b.slice(0, maxLen);
  }
  return b;
}

/** Cuts `bytes` the way a socket might: whole, byte by byte, at random points, in fixed sizes. */
export function chunk(rng: Prng, bytes: Uint8Array): Uint8Array[] {
  const n = bytes.length;
  const out: Uint8Array[] = [];
  const mode = rng.int(8);
  if (mode < 2 || n <= 1) {
    out.push(bytes);
  } else if (mode === 2 && n <= MAX_BYTEWISE) {
    for (let i = 0; i < n; i++) out.push(bytes.subarray(i, i + 1));
  } else if (mode <= 5) {
    const cuts = new Set<number>();
    const k = 1 + rng.int(Math.min(16, n - 1));
    for (let i = 0; i < k; i++) cuts.add(1 + rng.int(n - 1));
    let from = 0;
    for (const c of [...cuts].sort((x, y) => x - y)) {
      out.push(bytes.subarray(from, c));
      from = c;
    }
    out.push(bytes.subarray(from));
  } else {
    const size = Math.max(1 + rng.int(Math.min(n, 4096)), Math.ceil(n / 4096));
    for (let i = 0; i < n; i += size) out.push(bytes.subarray(i, i + size));
  }
  // An empty read now and then.
  if (rng.chance(0.1)) out.splice(rng.int(out.length + 1), 0, new Uint8Array(0));
  return out;
}

// --- error classification ----------------------------------------------------------------------

const DW_CODE = /^DW_[A-Z0-9_]+$/;
/** Codes whose raiser wraps a native error on purpose, in a narrow try block. */
const WRAPS_NATIVE = new Set<string>(['DW_BAD_KEY', 'DW_BAD_MAC', ProtocolCode.BAD_HELLO, ProtocolCode.BAD_MESSAGE]);

/**
 * The error's code when it is a proper coded error. A native error is allowed in the cause chain only
 * right under a code that wraps native errors on purpose; under a catch-all (DW_PROTOCOL,
 * DW_HANDSHAKE_FAILED) it is a bug the catch-all hid.
 */
function codedOrThrow(err: unknown, expected?: readonly string[]): string {
  if (!(err instanceof DropwireError)) throw new Broken(`threw a non-DropwireError: ${describe(err)}`, { cause: err });
  if (!DW_CODE.test(err.code)) throw new Broken(`error code ${JSON.stringify(err.code)} is not DW_*`, { cause: err });
  if (expected && !expected.includes(err.code)) throw new Broken(`unexpected code ${err.code} (expected ${expected.join('|')})`, { cause: err });
  let parent: DropwireError = err;
  for (let cause: unknown = err.cause, depth = 0; cause !== undefined && depth < 16; depth++) {
    if (cause instanceof DropwireError) {
      if (!DW_CODE.test(cause.code)) throw new Broken(`cause code ${JSON.stringify(cause.code)} is not DW_*`, { cause: err });
      parent = cause;
      cause = cause.cause;
      continue;
    }
    if (cause instanceof Error && !WRAPS_NATIVE.has(parent.code)) {
      throw new Broken(`${parent.code} hides a native error: ${describe(cause)}`, { cause: err });
    }
    break; // a native error under a wrapping code, or a string cause (a refusal code)
  }
  return err.code;
}

/** The innermost DW_* code of an error's cause chain. */
function rootCode(err: DropwireError): string {
  let code = err.code;
  for (let c: unknown = err.cause, d = 0; c instanceof DropwireError && d < 16; c = c.cause, d++) code = c.code;
  return code;
}

function describe(err: unknown): string {
  return err instanceof Error ? `${err.name}: ${err.message}\n${err.stack ?? ''}` : String(err);
}

// --- valid samples -----------------------------------------------------------------------------

interface Sample {
  relay: KeyPair;
  device: KeyPair;
  /** Fixed ephemerals: a re-created initiator writes the same msg 1, a re-created responder the same msg 2. */
  initiatorE: KeyPair;
  responderE: KeyPair;
  timestamp: number;
  enroll: { name: string; secret: string } | undefined;
  hello: ClientHello;
  sessionId: Uint8Array;
  clientData: Uint8Array[];
  serverData: Uint8Array[];
  /** MAGIC + frame(msg 1). */
  msg1: Uint8Array;
  /** frame(msg 2), accepted. */
  msg2: Uint8Array;
  /** frame(msg 2), refused. */
  refusal: Uint8Array;
  /** Every record frame each side wrote after the handshake, in order. */
  c2s: Uint8Array;
  s2c: Uint8Array;
  /** Whether the streams end with a CLOSE record. */
  closes: boolean;
}

interface Pool {
  samples: Sample[];
  /** Everything valid, for splicing. */
  donors: Uint8Array[];
  /** A few valid message streams, for splicing into message inputs. */
  messageDonors: Uint8Array[];
}

function pollAll(c: Connection, now: number): Output[] {
  const out: Output[] = [];
  for (let o = c.poll(now); o; o = c.poll(now)) {
    out.push(o);
    if (out.length > MAX_OUTPUTS) throw new Broken('pool: connection does not stop producing outputs');
  }
  return out;
}

function writes(outs: Output[]): Uint8Array[] {
  return outs.flatMap((o) => (o.type === 'write' ? [o.bytes] : []));
}

type Random = (n: number) => Uint8Array;

function newInitiator(s: Sample, random: Random, timers?: Partial<ConnectionTimers>): { conn: Connection; session: Session } {
  const session = new Session();
  const conn = Connection.initiator({
    crypto: nodeCrypto,
    random,
    staticKey: s.device,
    remoteStatic: s.relay.publicKey,
    session,
    timestamp: s.timestamp,
    now: T0,
    ephemeral: s.initiatorE,
    ...(s.enroll ? { enroll: s.enroll } : {}),
    ...(timers ? { timers } : {}),
  });
  return { conn, session };
}

function newResponder(s: Sample, random: Random, timers?: Partial<ConnectionTimers>): Connection {
  return Connection.responder({ crypto: nodeCrypto, random, staticKey: s.relay, now: T0, ephemeral: s.responderE, ...(timers ? { timers } : {}) });
}

/** Responder policy in every connection case: accept the sample's session and queue its data. */
function acceptSample(conn: Connection, s: Sample, now: number): void {
  const session = new Session({ id: s.sessionId });
  conn.accept(session, now);
  for (const d of s.serverData) session.write(d);
}

/** The initiator of `s` after it read msg 2 and sent its data, as in the live run: ready for `s2c`. */
function readyInitiator(s: Sample, random: Random, timers?: Partial<ConnectionTimers>): Connection {
  const { conn, session } = newInitiator(s, random, timers);
  pollAll(conn, T0);
  conn.receive(s.msg2, T0);
  if (!pollAll(conn, T0).some((o) => o.type === 'established')) throw new Broken('pool: re-created initiator did not establish');
  for (const d of s.clientData) session.write(d);
  pollAll(conn, T0);
  return conn;
}

/** The responder of `s` after it accepted msg 1 and sent msg 2 and its data, as in the live run: ready for `c2s`. */
function readyResponder(s: Sample, random: Random, timers?: Partial<ConnectionTimers>): Connection {
  const conn = newResponder(s, random, timers);
  conn.receive(s.msg1, T0);
  if (!pollAll(conn, T0).some((o) => o.type === 'hello')) throw new Broken('pool: re-created responder saw no hello');
  acceptSample(conn, s, T0);
  pollAll(conn, T0);
  return conn;
}

/**
 * One real exchange between fresh keys: handshake, data both ways, ACKs, a PING and its PONG, and
 * optionally CLOSE records. Each side's steps up to the peer's records are the ones `readyInitiator`
 * and `readyResponder` replay, so the captured record streams are valid input for those.
 */
function buildSample(rng: Prng, spec: { enroll?: { name: string; secret: string }; dataSizes: number[]; closes: boolean }): Sample {
  const s: Sample = {
    relay: generateKeyPair(nodeCrypto, rng.source),
    device: generateKeyPair(nodeCrypto, rng.source),
    initiatorE: generateKeyPair(nodeCrypto, rng.source),
    responderE: generateKeyPair(nodeCrypto, rng.source),
    timestamp: 1 + rng.int(1_000_000),
    enroll: spec.enroll,
    hello: undefined as never, // set below, from the responder's hello output
    sessionId: rng.bytes(SESSION_ID_LENGTH),
    clientData: spec.dataSizes.map((n) => rng.bytes(n)),
    serverData: spec.dataSizes.map((n) => rng.bytes(n)).reverse(),
    msg1: new Uint8Array(0),
    msg2: new Uint8Array(0),
    refusal: new Uint8Array(0),
    c2s: new Uint8Array(0),
    s2c: new Uint8Array(0),
    closes: spec.closes,
  };
  const { conn: c, session: cs } = newInitiator(s, rng.source);
  s.msg1 = concat(writes(pollAll(c, T0)));
  const srv = newResponder(s, rng.source);
  srv.receive(s.msg1, T0);
  const hello = pollAll(srv, T0).find((o) => o.type === 'hello');
  if (hello?.type !== 'hello') throw new Broken('pool: no hello');
  s.hello = hello.hello;
  acceptSample(srv, s, T0);
  const [msg2, ...s2cA] = writes(pollAll(srv, T0)); // msg 2, then DATA
  s.msg2 = msg2!;
  c.receive(s.msg2, T0);
  pollAll(c, T0);
  for (const d of s.clientData) cs.write(d);
  const c2sA = writes(pollAll(c, T0)); // DATA
  const t1 = T0 + 100;
  c.receive(concat(s2cA), t1);
  const c2sB = writes(pollAll(c, t1));
  srv.receive(concat([...c2sA, ...c2sB]), t1);
  const s2cB = writes(pollAll(srv, t1));
  const t2 = t1 + 10_000;
  const c2sC = writes(pollAll(c, t2)); // ACK, PING
  srv.receive(concat(c2sC), t2);
  const s2cC = writes(pollAll(srv, t2)); // ACK, PONG
  c.receive(concat([...s2cB, ...s2cC]), t2);
  pollAll(c, t2);
  const c2sD: Uint8Array[] = [];
  const s2cD: Uint8Array[] = [];
  if (spec.closes) {
    c.close('DW_CLOSED');
    c2sD.push(...writes(pollAll(c, t2)));
    srv.close('DW_FUZZ_DONE');
    s2cD.push(...writes(pollAll(srv, t2)));
  }
  s.c2s = concat([...c2sA, ...c2sB, ...c2sC, ...c2sD]);
  s.s2c = concat([...s2cA, ...s2cB, ...s2cC, ...s2cD]);
  const refuser = newResponder(s, rng.source);
  refuser.receive(s.msg1, T0);
  pollAll(refuser, T0);
  refuser.refuse('DW_UNKNOWN_DEVICE', T0);
  s.refusal = writes(pollAll(refuser, T0))[0]!;

  // Self-check: re-created sides take the unmodified streams and end as the live ones did.
  for (const [conn, stream, want, label] of [
    [readyInitiator(s, rng.source), s.s2c, s.serverData, 'initiator'],
    [readyResponder(s, rng.source), s.c2s, s.clientData, 'responder'],
  ] as const) {
    conn.receive(stream, T0);
    const outs = pollAll(conn, T0);
    const got = concat(outs.flatMap((o) => (o.type === 'data' ? [o.bytes] : [])));
    if (!equal(got, concat(want))) throw new Broken(`pool: re-created ${label} did not deliver the sample's data`);
    const close = outs.find((o) => o.type === 'close');
    const code = close?.type === 'close' ? close.error.code : undefined;
    if (code !== (spec.closes ? ProtocolCode.PEER_CLOSED : undefined)) throw new Broken(`pool: re-created ${label} ended with ${code}`);
  }
  return s;
}

function buildPool(seed: number): Pool {
  const rng = new Prng(seed, 0xfffffff0);
  const samples = [
    buildSample(rng, { dataSizes: [1, 37, 300], closes: false }),
    buildSample(rng, { enroll: { name: 'host-1', secret: 'tok_3f9a' }, dataSizes: [5, 1200], closes: true }),
    // The largest record there is: a DATA record of MAX_DATA_PAYLOAD bytes fills a MAX_FRAME frame.
    buildSample(rng, { dataSizes: [MAX_DATA_PAYLOAD + 3000], closes: rng.chance(0.5) }),
  ];
  const messageDonors: Uint8Array[] = [];
  for (let i = 0; i < 8; i++) messageDonors.push(concat(randomMessages(rng, 1 + rng.int(3))));
  const donors = samples.flatMap((s) => [s.msg1, s.msg1.subarray(MAGIC.length), s.msg2, s.refusal, s.c2s, s.s2c]);
  return { samples, donors, messageDonors };
}

// --- generators of valid (or nearly valid) inputs -----------------------------------------------

function randomHeader(rng: Prng, type: MessageType): { [k: string]: unknown } {
  const id = () => randomString(rng);
  switch (type) {
    case MessageType.HELLO:
      return { agent: randomString(rng), partial: Array.from({ length: rng.int(4) }, () => ({ id: id(), have: randomCount(rng) })) };
    case MessageType.FILE: {
      const size = randomCount(rng);
      return { id: id(), from: id(), filename: id(), size, sha256: toHex(rng.bytes(32)), offset: rng.chance(0.8) ? Math.min(size, rng.int(1000)) : randomCount(rng), createdAt: randomCount(rng) };
    }
    case MessageType.RESULT:
      return {
        id: id(),
        status: rng.pick(['handled', 'failed', 'rejected']),
        ...(rng.chance(0.5) ? { code: 'DW_' + randomString(rng, 8) } : {}),
        ...(rng.chance(0.5) ? { detail: { exit: rng.int(256), note: randomString(rng) } } : {}),
      };
    case MessageType.CONFIRM:
      return { ids: Array.from({ length: rng.int(5) }, id) };
    case MessageType.RESTART:
      return { id: id(), offset: randomCount(rng), code: 'DW_' + randomString(rng, 8) };
    case MessageType.PRESENCE_QUERY:
      return { qid: randomCount(rng), device: id() };
    case MessageType.PRESENCE:
      return { qid: randomCount(rng), device: id(), known: rng.chance(0.5), online: rng.chance(0.5), lastSeen: rng.chance(0.5) ? null : randomCount(rng) };
    case MessageType.SEND:
      return { sid: sid(rng), to: id(), filename: id(), size: randomCount(rng), sha256: toHex(rng.bytes(32)), ...(rng.chance(0.5) ? { sealed: rng.chance(0.5) } : {}) };
    case MessageType.SEND_ACK:
      return { sid: sid(rng), have: randomCount(rng) };
    case MessageType.SEND_CHUNK:
      return { sid: sid(rng) };
    case MessageType.SEND_END:
      return rng.chance(0.5) ? { sid: sid(rng), id: id() } : { sid: sid(rng), code: 'DW_FORBIDDEN', message: randomString(rng) };
    case MessageType.STATUS:
      return { id: id(), status: rng.pick(['queued', 'handled', 'failed']), ...(rng.chance(0.5) ? { result: { exitCode: rng.int(256) } } : {}) };
    case MessageType.REDIRECT:
      return { rid: toHex(rng.bytes(16)), to: id(), deadline: randomCount(rng) };
    case MessageType.REDIRECT_REFUSED:
      return { rid: toHex(rng.bytes(16)), code: rng.pick(['DW_REDIRECT_REFUSED', 'DW_REDIRECT_BUSY', 'DW_' + randomString(rng, 8)]) };
    default:
      return { id: id() };
  }
}

const MESSAGE_TYPES = Object.values(MessageType);

/** An upload id (PROTOCOL 7.14): 1 to 64 of [0-9a-z]. */
function sid(rng: Prng): string {
  return Array.from({ length: 1 + rng.int(12) }, () => '0123456789abcdefghijklmnopqrstuvwxyz'[rng.int(36)]).join('');
}

function randomMessages(rng: Prng, count: number): Uint8Array[] {
  const parts: Uint8Array[] = [];
  for (let i = 0; i < count; i++) {
    const type = rng.pick(MESSAGE_TYPES);
    const body = rng.chance(0.002) ? rng.bytes(MAX_MESSAGE_BODY) : rng.bytes(rng.size(70_000));
    try {
      parts.push(...encodeMessage(type, randomHeader(rng, type) as never, body));
    } catch (err) {
      codedOrThrow(err, [ProtocolCode.MESSAGE_TOO_LARGE]);
    }
  }
  return parts;
}

/** A prefix, header and body that each may or may not agree with one another. */
function structuredMessage(rng: Prng): Uint8Array {
  const type = rng.chance(0.8) ? rng.pick(MESSAGE_TYPES) : rng.int(256);
  const h = randomHeader(rng, (MESSAGE_TYPES as number[]).includes(type) ? (type as MessageType) : MessageType.CHUNK);
  let header: Uint8Array;
  const r = rng.int(10);
  if (r < 6) {
    const keys = Object.keys(h);
    const key = rng.chance(0.8) ? rng.pick(keys) : randomString(rng, 6);
    if (rng.chance(0.2)) delete h[key];
    else h[key] = rng.pick(JSON_ODDITIES);
    header = enc.encode(JSON.stringify(h));
  } else if (r < 8) {
    header = enc.encode(rng.pick(HEADER_ODDITIES));
  } else if (r < 9) {
    header = enc.encode('['.repeat(rng.int(MAX_MESSAGE_HEADER + 1)));
  } else {
    header = rng.bytes(rng.size(512));
  }
  const body = rng.bytes(rng.size(4096));
  const hl = rng.chance(0.8) ? header.length : rng.pick(U16);
  const bl = rng.chance(0.8) ? body.length : rng.pick(U32);
  return concat([Uint8Array.of(type), u16(hl), u32(bl), header, body]);
}

function randomClientHello(rng: Prng): ClientHello {
  const kind = rng.pick([HelloKind.NEW, HelloKind.RESUME, HelloKind.ENROLL, HelloKind.HANDOVER]);
  return {
    kind,
    timestamp: Math.max(0, randomCount(rng)),
    sessionId: kind === HelloKind.RESUME || kind === HelloKind.HANDOVER ? rng.bytes(SESSION_ID_LENGTH) : new Uint8Array(SESSION_ID_LENGTH),
    received: Math.max(0, randomCount(rng)),
    ...(kind === HelloKind.ENROLL ? { enroll: { name: randomString(rng, 60, false), secret: randomString(rng, 60, false) } } : {}),
    ...(kind === HelloKind.HANDOVER ? { requestId: rng.bytes(16) } : {}),
  };
}

function randomServerHello(rng: Prng): ServerHello {
  const result = rng.int(4) as ServerHello['result'];
  let code = 'DW_';
  for (let i = rng.int(40); i > 0; i--) code += rng.pick([...'ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_']);
  return { result, sessionId: rng.bytes(SESSION_ID_LENGTH), received: Math.max(0, randomCount(rng)), ...(result === 3 ? { code } : {}) };
}

function randomRecord(rng: Prng): WireRecord {
  switch (rng.pick([RecordType.DATA, RecordType.ACK, RecordType.PING, RecordType.PONG, RecordType.CLOSE])) {
    case RecordType.DATA:
      return { type: RecordType.DATA, bytes: rng.bytes(rng.chance(0.01) ? MAX_DATA_PAYLOAD + rng.int(2) : rng.size(MAX_DATA_PAYLOAD)) };
    case RecordType.CLOSE: {
      let code = 'DW_';
      for (let i = rng.int(70); i > 0; i--) code += rng.pick([...'ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_']);
      return { type: RecordType.CLOSE, code };
    }
    default:
      return { type: rng.pick([RecordType.ACK, RecordType.PING, RecordType.PONG]), received: Math.max(0, randomCount(rng)) };
  }
}

// --- decoder cases -----------------------------------------------------------------------------

interface Outcome {
  /** The code the case ended with, or undefined when it ended fine. */
  code: string | undefined;
  /** Extra detail for the per-target tally. */
  detail?: string;
}

interface CaseCtx {
  rng: Prng;
  pool: Pool;
  /** What was fed, for the failure report. */
  input: Uint8Array;
  chunks: number[];
}

interface Decoded<T> {
  items: T[];
  code: string | undefined;
  buffered: number;
  /** Bytes pushed when the error was thrown, and the size of the last push. */
  pushedAtError: number;
  lastChunk: number;
}

function runDecoder<T>(chunks: readonly Uint8Array[], make: () => { push(b: Uint8Array): void; next(): T | undefined; buffered: number }, expected: readonly string[]): Decoded<T> {
  const d = make();
  const items: T[] = [];
  let pushed = 0;
  for (const c of chunks) {
    d.push(c);
    pushed += c.length;
    try {
      for (let x = d.next(); x !== undefined; x = d.next()) {
        items.push(x);
        if (items.length > MAX_INPUT) throw new Broken('decoder yields more items than input bytes');
      }
    } catch (err) {
      if (err instanceof Broken) throw err;
      return { items, code: codedOrThrow(err, expected), buffered: d.buffered, pushedAtError: pushed, lastChunk: c.length };
    }
  }
  return { items, code: undefined, buffered: d.buffered, pushedAtError: -1, lastChunk: 0 };
}

/** Decoding must not depend on chunking, and an error must come with the chunk that completes its cause. */
function compareChunkings<T>(whole: Decoded<T>, cut: Decoded<T>, same: (a: T, b: T) => boolean, errorPoint: (w: Decoded<T>) => number): void {
  if (whole.items.length !== cut.items.length) throw new Broken(`chunking changed the item count: ${whole.items.length} whole, ${cut.items.length} chunked`);
  for (let i = 0; i < whole.items.length; i++) if (!same(whole.items[i]!, cut.items[i]!)) throw new Broken(`chunking changed item ${i}`);
  if (whole.code !== cut.code) throw new Broken(`chunking changed the outcome: ${whole.code} whole, ${cut.code} chunked`);
  if (whole.code === undefined) {
    if (whole.buffered !== cut.buffered) throw new Broken(`chunking changed the bytes left buffered: ${whole.buffered} vs ${cut.buffered}`);
    return;
  }
  const point = errorPoint(whole);
  if (cut.pushedAtError < point || cut.pushedAtError - cut.lastChunk >= point) {
    throw new Broken(`${cut.code} raised after ${cut.pushedAtError} bytes; it was decidable at byte ${point}`);
  }
}

function frameCase(ctx: CaseCtx): Outcome {
  const { rng, pool } = ctx;
  let input: Uint8Array;
  const r = rng.int(4);
  if (r === 0) {
    input = rng.bytes(rng.chance(0.05) ? rng.int(70_000) : rng.size(2048));
  } else if (r === 1) {
    const parts: Uint8Array[] = [];
    for (let i = rng.int(7); i > 0; i--) {
      const len = rng.chance(0.2) ? rng.pick(U16) : rng.chance(0.02) ? MAX_FRAME : rng.size(2048);
      parts.push(u16(len), rng.bytes(rng.chance(0.9) ? len : rng.int(len + 1)));
    }
    input = concat(parts);
    if (rng.chance(0.5)) input = mutate(rng, input, pool.donors);
  } else {
    const s = rng.pick(pool.samples);
    const src = rng.pick([s.msg1.subarray(MAGIC.length), s.msg2, s.c2s, s.s2c, s.refusal]);
    input = mutate(rng, src, pool.donors);
  }
  const maxBody = rng.pick([MAX_FRAME, MAX_FRAME, MAX_HANDSHAKE_MESSAGE, rng.int(300), 0]);
  ctx.input = input;
  const chunks = chunk(rng, input);
  ctx.chunks = chunks.map((c) => c.length);
  const make = () => new FrameDecoder(maxBody);
  const expected = [ProtocolCode.FRAME_TOO_LARGE];
  const whole = runDecoder([input], make, expected);
  const cut = runDecoder(chunks, make, expected);
  compareChunkings(whole, cut, equal, (w) => w.items.reduce((n, f) => n + 2 + f.length, 0) + 2);
  for (const f of whole.items) if (f.length > maxBody) throw new Broken(`frame of ${f.length} bytes passed maxBody ${maxBody}`);
  return { code: whole.code };
}

function sameMessage(a: Message, b: Message): boolean {
  return a.type === b.type && JSON.stringify(a.header) === JSON.stringify(b.header) && equal(a.body, b.body);
}

/** Where the error in `bytes` becomes decidable, given `consumed` bytes went into whole messages. */
function messageErrorPoint(bytes: Uint8Array, consumed: number): number {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const type = bytes[consumed]!;
  const hl = v.getUint16(consumed + 1);
  const bl = v.getUint32(consumed + 3);
  const prefixBad = !(MESSAGE_TYPES as number[]).includes(type) || hl > MAX_MESSAGE_HEADER || bl > MAX_MESSAGE_BODY;
  return consumed + 7 + (prefixBad ? 0 : hl + bl);
}

function messageCase(ctx: CaseCtx): Outcome {
  const { rng, pool } = ctx;
  let input: Uint8Array;
  const r = rng.int(6);
  if (r === 0) input = rng.bytes(rng.size(4096));
  else if (r <= 2) input = concat(Array.from({ length: 1 + rng.int(3) }, () => structuredMessage(rng)));
  else {
    input = concat(randomMessages(rng, 1 + rng.int(4)));
    if (r <= 4) input = mutate(rng, input, pool.messageDonors);
  }
  ctx.input = input;
  const chunks = chunk(rng, input);
  ctx.chunks = chunks.map((c) => c.length);
  const make = () => new MessageDecoder();
  const expected = [ProtocolCode.BAD_MESSAGE, ProtocolCode.MESSAGE_TOO_LARGE];
  const whole = runDecoder([input], make, expected);
  const cut = runDecoder(chunks, make, expected);
  compareChunkings(whole, cut, sameMessage, (w) => {
    let consumed = 0;
    for (const m of w.items) consumed += 7 + headerLengthAt(input, consumed) + m.body.length;
    return messageErrorPoint(input, consumed);
  });
  return { code: whole.code };
}

function headerLengthAt(bytes: Uint8Array, at: number): number {
  return (bytes[at + 1]! << 8) | bytes[at + 2]!;
}

function helloCase(ctx: CaseCtx): Outcome {
  const { rng, pool } = ctx;
  const client = rng.chance(0.5);
  const side = client ? 'client' : 'server';
  const valid = client ? encodeClientHello(randomClientHello(rng)) : encodeServerHello(randomServerHello(rng));
  const r = rng.int(5);
  const input = r === 0 ? rng.bytes(rng.chance(0.5) ? 26 + rng.int(16) : rng.size(600)) : r === 1 ? valid : mutate(rng, valid, pool.donors, 4096);
  ctx.input = input;
  ctx.chunks = [input.length];
  let again: Uint8Array;
  try {
    again = client ? encodeClientHello(decodeClientHello(input)) : encodeServerHello(decodeServerHello(input));
  } catch (err) {
    const code = codedOrThrow(err, [ProtocolCode.BAD_HELLO]);
    return { code, detail: `${side}:${code}` };
  }
  if (!equal(again, input)) {
    throw new Broken(`${side} hello does not re-encode to the same bytes: ${toHex(again)}`);
  }
  return { code: undefined, detail: `${side}:ok` };
}

function recordCase(ctx: CaseCtx): Outcome {
  const { rng, pool } = ctx;
  const r = rng.int(5);
  let input: Uint8Array;
  if (r === 0) input = rng.bytes(rng.size(64));
  else if (r === 1) input = concat([Uint8Array.of(rng.chance(0.8) ? 1 + rng.int(5) : rng.int(256)), rng.bytes(rng.size(300))]);
  else {
    const valid = encodeRecord(randomRecord(rng));
    input = r === 2 ? valid : mutate(rng, valid, pool.donors, MAX_FRAME + 16);
  }
  ctx.input = input;
  ctx.chunks = [input.length];
  let rec: WireRecord;
  try {
    rec = decodeRecord(input);
  } catch (err) {
    return { code: codedOrThrow(err, [ProtocolCode.BAD_RECORD]) };
  }
  if (!(rec.type === RecordType.CLOSE && rec.code.length > 64) && !equal(encodeRecord(rec), input)) {
    throw new Broken('record does not re-encode to the same bytes');
  }
  return { code: undefined };
}

// --- connection cases --------------------------------------------------------------------------

interface Expect {
  /** Data delivered upward may only ever be a prefix of this (the peer's real stream). */
  data: Uint8Array;
  /** A hello, if any, must be this one from this key; undefined: no hello may appear at all. */
  hello?: { hello: ClientHello; from: Uint8Array };
  /** An `established`, if any, must carry this session id; undefined: none may appear. */
  sessionId?: Uint8Array;
}

function randomTimers(rng: Prng): Partial<ConnectionTimers> | undefined {
  if (!rng.chance(0.2)) return undefined;
  return { handshakeTimeout: 1 + rng.int(5_000), pingInterval: 1 + rng.int(5_000), idleTimeout: 1 + rng.int(10_000) };
}

function sameHello(a: ClientHello, b: ClientHello): boolean {
  return (
    a.kind === b.kind &&
    a.timestamp === b.timestamp &&
    a.received === b.received &&
    equal(a.sessionId, b.sessionId) &&
    JSON.stringify(a.enroll) === JSON.stringify(b.enroll) &&
    (a.requestId === undefined) === (b.requestId === undefined) &&
    (a.requestId === undefined || equal(a.requestId, b.requestId!))
  );
}

/**
 * Feeds `chunks` into `conn` at slowly advancing times, polling after each as a transport does, then
 * half the time jumps past every deadline. Checks each output as it comes; returns how the case ended.
 */
function drive(rng: Prng, conn: Connection, chunks: readonly Uint8Array[], want: Expect, onHello: (now: number) => void): Outcome {
  const st: { closed: ProtocolError | undefined; delivered: number; outputs: number } = { closed: undefined, delivered: 0, outputs: 0 };
  const allowData = rng.chance(0.9);
  const pump = (now: number): void => {
    for (;;) {
      let o: Output | undefined;
      try {
        o = conn.poll(now, allowData);
      } catch (err) {
        throw new Broken(`poll() threw: ${describe(err)}`, { cause: err });
      }
      if (!o) return;
      if (++st.outputs > MAX_OUTPUTS) throw new Broken(`more than ${MAX_OUTPUTS} outputs: the connection does not settle`);
      if (st.closed) throw new Broken(`output '${o.type}' after close`);
      switch (o.type) {
        case 'close':
          st.closed = o.error;
          break;
        case 'write':
          if (o.bytes.length > MAGIC.length + 2 + MAX_FRAME) throw new Broken(`write of ${o.bytes.length} bytes`);
          break;
        case 'data': {
          const at = st.delivered;
          st.delivered += o.bytes.length;
          if (st.delivered > want.data.length || !equal(o.bytes, want.data.subarray(at, st.delivered))) {
            throw new Broken(`delivered data at stream offset ${at} that the peer never sent`);
          }
          break;
        }
        case 'hello':
          if (!want.hello || !sameHello(o.hello, want.hello.hello) || !equal(o.remoteStatic, want.hello.from)) {
            throw new Broken('a hello came out that the sample never sent (forged message 1?)');
          }
          onHello(now);
          break;
        case 'established':
          if (!want.sessionId || !equal(o.sessionId, want.sessionId)) throw new Broken('established a session the sample never offered (forged message 2?)');
          break;
        default:
          break;
      }
    }
  };
  let now = T0;
  for (const c of chunks) {
    try {
      conn.receive(c, now);
    } catch (err) {
      throw new Broken(`receive() threw: ${describe(err)}`, { cause: err });
    }
    pump(now);
    if (rng.chance(0.2)) now = Math.min(T0 + 5_000, now + rng.int(300));
  }
  if (!st.closed && rng.chance(0.5)) pump(now + 60_000);
  const error = st.closed;
  if (!error) {
    if (conn.isClosed) throw new Broken('connection closed without a close output');
    return { code: undefined };
  }
  // Closed means closed: more bytes and more time change nothing.
  try {
    conn.receive(rng.bytes(1 + rng.int(64)), now);
  } catch (err) {
    throw new Broken(`receive() after close threw: ${describe(err)}`, { cause: err });
  }
  pump(now + 120_000);
  const code = codedOrThrow(error);
  if (!conn.isClosed || conn.closeError !== error) throw new Broken('close output, but the connection does not say it closed with that error');
  const root = rootCode(error);
  return { code, detail: root === code ? code : `${code}(${root})` };
}

function connectionCase(ctx: CaseCtx, target: string): Outcome {
  const { rng, pool } = ctx;
  const s = rng.pick(pool.samples);
  const timers = randomTimers(rng);
  const random = rng.source;
  const fromClient: Expect = { data: concat(s.clientData), hello: { hello: s.hello, from: s.device.publicKey }, sessionId: s.sessionId };
  let conn: Connection;
  let input: Uint8Array;
  let want: Expect;
  switch (target) {
    case 'responder:random': {
      const r = rng.int(5);
      if (r === 0) input = rng.bytes(rng.size(2048));
      else if (r === 1) input = MAGIC.subarray(0, rng.int(MAGIC.length + 1));
      else if (r === 2) input = concat([MAGIC, rng.bytes(rng.size(2048))]);
      else {
        // Frames of msg 1 sizes, e (32) | s (48) | payload (16 + hello), often with a low-order e.
        const len = rng.chance(0.5) ? 96 + rng.pick([0, 34, 35, 50, 300]) : rng.pick(U16);
        const body = rng.bytes(Math.min(len, 2048));
        if (rng.chance(0.5) && body.length >= 32) body.set(rng.pick(LOW_ORDER), 0);
        input = concat([MAGIC, u16(len), body]);
      }
      conn = Connection.responder({ crypto: nodeCrypto, random, staticKey: s.relay, now: T0, ...(timers ? { timers } : {}) });
      want = { data: new Uint8Array(0) };
      break;
    }
    case 'responder:msg1':
      input = mutate(rng, s.msg1, pool.donors);
      if (rng.chance(0.3)) input = concat([input, s.c2s]);
      conn = newResponder(s, random, timers);
      want = fromClient;
      break;
    case 'responder:records':
      input = mutate(rng, s.c2s, pool.donors);
      conn = readyResponder(s, random, timers);
      want = fromClient;
      break;
    case 'initiator:msg2': {
      const r = rng.int(5);
      if (r === 0) input = rng.bytes(rng.size(512));
      else if (r === 1) input = mutate(rng, s.refusal, pool.donors);
      else if (r === 2) input = mutate(rng, concat([s.msg2, s.s2c]), pool.donors);
      else input = mutate(rng, s.msg2, pool.donors);
      conn = newInitiator(s, random, timers).conn;
      pollAll(conn, T0); // magic + msg 1 go out
      want = { data: concat(s.serverData), sessionId: s.sessionId };
      break;
    }
    default: // 'initiator:records'
      input = mutate(rng, s.s2c, pool.donors);
      conn = readyInitiator(s, random, timers);
      want = { data: concat(s.serverData) };
      break;
  }
  ctx.input = input;
  const chunks = chunk(rng, input);
  ctx.chunks = chunks.map((c) => c.length);
  return drive(rng, conn, chunks, want, (now) => {
    if (rng.chance(0.1)) conn.refuse('DW_FUZZ_REFUSED', now);
    else acceptSample(conn, s, now);
  });
}

// --- the run -----------------------------------------------------------------------------------

const TARGETS: readonly (readonly [string, number])[] = [
  ['frame', 2],
  ['message', 2],
  ['hello', 2],
  ['record', 1],
  ['responder:random', 1],
  ['responder:msg1', 2],
  ['responder:records', 1],
  ['initiator:msg2', 2],
  ['initiator:records', 2],
];
const WEIGHTS = TARGETS.reduce((n, [, w]) => n + w, 0);

function pickTarget(rng: Prng): string {
  let x = rng.int(WEIGHTS);
  for (const [t, w] of TARGETS) {
    if (x < w) return t;
    x -= w;
  }
  return TARGETS[0]![0];
}

const poolCache = new Map<number, Pool>();

export function runFuzz(o: FuzzOptions): FuzzReport {
  const seed = o.seed >>> 0;
  const start = o.start ?? 0;
  let pool = poolCache.get(seed);
  if (!pool) {
    pool = buildPool(seed);
    poolCache.set(seed, pool);
  }
  const byCode: Record<string, number> = {};
  const byTarget: Record<string, Record<string, number>> = {};
  let done = 0;
  for (let index = start; index < start + o.cases; index++) {
    const rng = new Prng(seed, index);
    const target = pickTarget(rng);
    const ctx: CaseCtx = { rng, pool, input: new Uint8Array(0), chunks: [] };
    let outcome: Outcome;
    try {
      switch (target) {
        case 'frame':
          outcome = frameCase(ctx);
          break;
        case 'message':
          outcome = messageCase(ctx);
          break;
        case 'hello':
          outcome = helloCase(ctx);
          break;
        case 'record':
          outcome = recordCase(ctx);
          break;
        default:
          outcome = connectionCase(ctx, target);
      }
    } catch (err) {
      const detail = err instanceof Broken ? err.message : `unexpected exception: ${describe(err)}`;
      throw new FuzzFailure(seed, index, target, detail, ctx.input, ctx.chunks, { cause: err instanceof Broken ? (err.cause ?? err) : err });
    }
    const code = outcome.code ?? 'ok';
    byCode[code] = (byCode[code] ?? 0) + 1;
    const t = (byTarget[target] ??= {});
    const key = outcome.detail ?? code;
    t[key] = (t[key] ?? 0) + 1;
    done++;
  }
  return { cases: done, byCode, byTarget };
}
