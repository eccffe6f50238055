import { readU64, writeU64 } from './bytes.js';
import { ProtocolCode, ProtocolError } from './errors.js';
import { MAX_ENROLL_FIELD, PROTOCOL_VERSION, SESSION_ID_LENGTH } from './limits.js';

/** PROTOCOL 3.4: what the initiator asks for, inside handshake message 1. */
export const HelloKind = { NEW: 0, RESUME: 1, ENROLL: 2, HANDOVER: 3 } as const;
export type HelloKind = (typeof HelloKind)[keyof typeof HelloKind];

export interface ClientHello {
  kind: HelloKind;
  /** Strictly increasing per device key (replay guard, PROTOCOL 3.7). */
  timestamp: number;
  /** Session to resume; all zeros unless kind is RESUME. */
  sessionId: Uint8Array;
  /** Bytes of the responder's stream this side has delivered upward. */
  received: number;
  /** ENROLL only: the device name and one-time secret from the enrollment token. */
  enroll?: { name: string; secret: string };
  /** HANDOVER only (PROTOCOL 3.4, 7.16): the 16-byte request id of the REDIRECT being followed. */
  requestId?: Uint8Array;
}

/** PROTOCOL 3.5: the responder's answer, inside handshake message 2. */
export const HelloResult = { NEW: 0, RESUMED: 1, LOST: 2, REFUSED: 3 } as const;
export type HelloResult = (typeof HelloResult)[keyof typeof HelloResult];

export interface ServerHello {
  result: HelloResult;
  sessionId: Uint8Array;
  received: number;
  /** REFUSED only: a DW_* code saying why. */
  code?: string;
}

const CLIENT_FIXED = 1 + 1 + 8 + SESSION_ID_LENGTH + 8;
/** PROTOCOL 3.4: a HANDOVER hello ends with the 16-byte request id of the REDIRECT (7.16). */
export const REQUEST_ID_LENGTH = 16;
const SERVER_FIXED = 1 + 1 + SESSION_ID_LENGTH + 8;
const enc = new TextEncoder();
const dec = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }); // a leading U+FEFF is part of the field

function bad(msg: string, cause?: unknown): ProtocolError {
  return new ProtocolError(ProtocolCode.BAD_HELLO, msg, { cause });
}

function short(name: string): Uint8Array {
  const b = enc.encode(name);
  if (b.length > MAX_ENROLL_FIELD) throw bad('enroll field longer than 255 bytes');
  return b;
}

export function encodeClientHello(h: ClientHello): Uint8Array {
  const extra: Uint8Array[] = [];
  if (h.kind === HelloKind.ENROLL) {
    if (!h.enroll) throw bad('ENROLL without enroll fields');
    extra.push(short(h.enroll.name), short(h.enroll.secret));
  }
  if (h.kind === HelloKind.HANDOVER && (!h.requestId || h.requestId.length !== REQUEST_ID_LENGTH)) throw bad('HANDOVER without a 16-byte request id');
  const extraLen = extra.reduce((n, b) => n + 1 + b.length, 0) + (h.kind === HelloKind.HANDOVER ? REQUEST_ID_LENGTH : 0);
  const out = new Uint8Array(CLIENT_FIXED + extraLen);
  const v = new DataView(out.buffer);
  out[0] = PROTOCOL_VERSION;
  out[1] = h.kind;
  writeU64(v, 2, h.timestamp);
  out.set(h.sessionId, 10);
  writeU64(v, 10 + SESSION_ID_LENGTH, h.received);
  let o = CLIENT_FIXED;
  for (const b of extra) {
    out[o++] = b.length;
    out.set(b, o);
    o += b.length;
  }
  if (h.kind === HelloKind.HANDOVER) out.set(h.requestId!, o);
  return out;
}

export function decodeClientHello(b: Uint8Array): ClientHello {
  if (b.length < CLIENT_FIXED) throw bad('client hello too short');
  if (b[0] !== PROTOCOL_VERSION) throw bad(`unsupported version ${b[0]}`);
  const kind = b[1]!;
  if (kind !== HelloKind.NEW && kind !== HelloKind.RESUME && kind !== HelloKind.ENROLL && kind !== HelloKind.HANDOVER) throw bad(`unknown kind ${kind}`);
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const timestamp = readU64(v, 2);
  const received = readU64(v, 10 + SESSION_ID_LENGTH);
  if (!Number.isFinite(timestamp) || !Number.isFinite(received)) throw bad('counter out of range');
  const hello: ClientHello = { kind, timestamp, sessionId: b.slice(10, 10 + SESSION_ID_LENGTH), received };
  let o = CLIENT_FIXED;
  if (kind === HelloKind.ENROLL) {
    const fields: string[] = [];
    for (let i = 0; i < 2; i++) {
      const n = b[o];
      if (n === undefined || o + 1 + n > b.length) throw bad('enroll field truncated');
      try {
        fields.push(dec.decode(b.subarray(o + 1, o + 1 + n)));
      } catch (err) {
        throw bad('enroll field is not UTF-8', err);
      }
      o += 1 + n;
    }
    hello.enroll = { name: fields[0]!, secret: fields[1]! };
  }
  if (kind === HelloKind.HANDOVER) {
    if (o + REQUEST_ID_LENGTH > b.length) throw bad('request id truncated');
    hello.requestId = b.slice(o, o + REQUEST_ID_LENGTH);
    o += REQUEST_ID_LENGTH;
  }
  if (o !== b.length) throw bad('trailing bytes in client hello');
  return hello;
}

export function encodeServerHello(h: ServerHello): Uint8Array {
  const code = h.result === HelloResult.REFUSED ? short(h.code ?? 'DW_HANDSHAKE_REFUSED') : undefined;
  const out = new Uint8Array(SERVER_FIXED + (code ? 1 + code.length : 0));
  const v = new DataView(out.buffer);
  out[0] = PROTOCOL_VERSION;
  out[1] = h.result;
  out.set(h.sessionId, 2);
  writeU64(v, 2 + SESSION_ID_LENGTH, h.received);
  if (code) {
    out[SERVER_FIXED] = code.length;
    out.set(code, SERVER_FIXED + 1);
  }
  return out;
}

export function decodeServerHello(b: Uint8Array): ServerHello {
  if (b.length < SERVER_FIXED) throw bad('server hello too short');
  if (b[0] !== PROTOCOL_VERSION) throw bad(`unsupported version ${b[0]}`);
  const result = b[1]!;
  if (result > HelloResult.REFUSED) throw bad(`unknown result ${result}`);
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const received = readU64(v, 2 + SESSION_ID_LENGTH);
  if (!Number.isFinite(received)) throw bad('counter out of range');
  const hello: ServerHello = { result: result as HelloResult, sessionId: b.slice(2, 2 + SESSION_ID_LENGTH), received };
  let o = SERVER_FIXED;
  if (result === HelloResult.REFUSED) {
    const n = b[o];
    if (n === undefined || o + 1 + n > b.length) throw bad('refusal code truncated');
    hello.code = String.fromCharCode(...b.subarray(o + 1, o + 1 + n));
    if (!/^DW_[A-Z0-9_]+$/.test(hello.code)) throw bad('refusal code malformed');
    o += 1 + n;
  }
  if (o !== b.length) throw bad('trailing bytes in server hello');
  return hello;
}

/**
 * PROTOCOL 3.7: the replay guard. A handshake message 1 is accepted only when its timestamp is above
 * the highest one already accepted from the same device key; a captured message 1 sent again is refused.
 */
export function isFresh(hello: ClientHello, lastAccepted: number | undefined): boolean {
  return lastAccepted === undefined || hello.timestamp > lastAccepted;
}
