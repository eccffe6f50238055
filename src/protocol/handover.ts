import { concat, readU64, writeU64 } from './bytes.js';
import { ProtocolCode, ProtocolError } from './errors.js';
import { SESSION_ID_LENGTH, type SessionLimits } from './limits.js';
import { Session } from './session.js';

/**
 * PROTOCOL 7.16 step 6: what a node hands over with a session, so that the next node continues both streams
 * byte for byte. Pure: the relay moves it through Redis.
 *
 * - `base`..`base + bytes.length` is the relay's stream not yet acknowledged by the agent (its replay
 *   buffer, including what was written but never put on the wire); `wire` is how far the old connection
 *   put it on the wire (for the re-sent count only).
 * - `received` is the relay's count of the agent's stream; `pending` the bytes of an agent message begun
 *   but not complete at that count.
 * - `state` is the relay's own message-level state (delivery position, partial files), as JSON.
 */
export interface SessionHandoverState {
  id: Uint8Array;
  base: number;
  wire: number;
  bytes: Uint8Array;
  received: number;
  pending: Uint8Array;
  state: Record<string, unknown>;
}

/** The relay's side of a session as it stands (call when nothing more is written to it). */
export function exportSession(s: Session, pending: Uint8Array, state: Record<string, unknown>): SessionHandoverState {
  return { id: s.id.slice(), base: s.out.base, wire: Math.max(s.wire, s.out.base), bytes: s.out.read(s.out.base, s.out.length), received: s.received, pending, state };
}

/** A session that continues the exported one: established, streams at the same counts. */
export function restoreSession(h: SessionHandoverState, limits: Partial<SessionLimits> = {}): Session {
  const s = new Session({ id: h.id.slice(), limits });
  s.out.base = s.out.end = h.base;
  if (h.bytes.length > 0) s.out.push(h.bytes.slice());
  s.wire = s.out.end; // all of it may be on the agent's side; the first count after HANDOVER says (7.16 step 8)
  s.acked = h.base;
  s.received = h.received;
  s.ackSent = h.received;
  s.epoch = 1;
  return s;
}

const MAGIC = Uint8Array.of(0x44, 0x57, 0x48, 0x01); // "DWH" 1
const enc = new TextEncoder();
const dec = new TextDecoder('utf-8', { fatal: true });

/**
 * Bytes of a hand-over state: magic `44 57 48 01` ‖ id (16) ‖ base u64be ‖ wire u64be ‖ received u64be ‖
 * bytes length u32be ‖ pending length u32be ‖ state length u32be ‖ bytes ‖ pending ‖ state (UTF-8 JSON).
 */
export function encodeHandoverState(h: SessionHandoverState): Uint8Array {
  const state = enc.encode(JSON.stringify(h.state));
  const head = new Uint8Array(4 + SESSION_ID_LENGTH + 24 + 12);
  const v = new DataView(head.buffer);
  head.set(MAGIC, 0);
  head.set(h.id, 4);
  let o = 4 + SESSION_ID_LENGTH;
  writeU64(v, o, h.base);
  writeU64(v, o + 8, h.wire);
  writeU64(v, o + 16, h.received);
  o += 24;
  v.setUint32(o, h.bytes.length);
  v.setUint32(o + 4, h.pending.length);
  v.setUint32(o + 8, state.length);
  return concat([head, h.bytes, h.pending, state]);
}

export function decodeHandoverState(b: Uint8Array): SessionHandoverState {
  const bad = (why: string) => new ProtocolError(ProtocolCode.PROTOCOL, `hand-over state: ${why}`);
  const fixed = 4 + SESSION_ID_LENGTH + 24 + 12;
  if (b.length < fixed || b[0] !== 0x44 || b[1] !== 0x57 || b[2] !== 0x48 || b[3] !== 0x01) throw bad('not a hand-over state');
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  let o = 4 + SESSION_ID_LENGTH;
  const base = readU64(v, o);
  const wire = readU64(v, o + 8);
  const received = readU64(v, o + 16);
  o += 24;
  const nb = v.getUint32(o);
  const np = v.getUint32(o + 4);
  const ns = v.getUint32(o + 8);
  o += 12;
  if (fixed + nb + np + ns !== b.length) throw bad('lengths do not add up');
  const state = JSON.parse(dec.decode(b.subarray(o + nb + np))) as Record<string, unknown>;
  return { id: b.slice(4, 4 + SESSION_ID_LENGTH), base, wire, received, bytes: b.slice(o, o + nb), pending: b.slice(o + nb, o + nb + np), state };
}
