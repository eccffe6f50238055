import { concat, getU64, setU64 } from './bytes.js';
import { ProtocolCode, ProtocolError } from './errors.js';
import { MAX_DATA_PAYLOAD } from './limits.js';

/** PROTOCOL 4.2: the plaintext of a record starts with its type. */
export const RecordType = { DATA: 1, ACK: 2, PING: 3, PONG: 4, CLOSE: 5 } as const;
export type RecordType = (typeof RecordType)[keyof typeof RecordType];

export type Record =
  | { type: typeof RecordType.DATA; bytes: Uint8Array }
  | { type: typeof RecordType.ACK | typeof RecordType.PING | typeof RecordType.PONG; received: number }
  | { type: typeof RecordType.CLOSE; code: string };

/** ACK, PING and PONG plaintexts: type and a u64be count. */
export const COUNTER_LENGTH = 9;

/** A DATA record's payload as views of a plaintext that was opened in parts (see `decodeRecordParts`). */
export interface DataParts {
  type: typeof RecordType.DATA;
  parts: Uint8Array[];
}

/** Writes an ACK, PING or PONG plaintext into `out` (COUNTER_LENGTH bytes) and returns it. */
export function encodeCounter(
  out: Uint8Array,
  type: typeof RecordType.ACK | typeof RecordType.PING | typeof RecordType.PONG,
  received: number,
): Uint8Array {
  out[0] = type;
  setU64(out, 1, received);
  return out;
}

export function encodeRecord(r: Record): Uint8Array {
  switch (r.type) {
    case RecordType.DATA: {
      const out = new Uint8Array(1 + r.bytes.length);
      out[0] = r.type;
      out.set(r.bytes, 1);
      return out;
    }
    case RecordType.ACK:
    case RecordType.PING:
    case RecordType.PONG: {
      return encodeCounter(new Uint8Array(COUNTER_LENGTH), r.type, r.received);
    }
    case RecordType.CLOSE: {
      const code = new TextEncoder().encode(r.code.slice(0, 64));
      const out = new Uint8Array(2 + code.length);
      out[0] = r.type;
      out[1] = code.length;
      out.set(code, 2);
      return out;
    }
  }
}

function bad(msg: string): ProtocolError {
  return new ProtocolError(ProtocolCode.BAD_RECORD, msg);
}

export function decodeRecord(p: Uint8Array): Record {
  const type = p[0];
  switch (type) {
    case RecordType.DATA:
      if (p.length < 2) throw bad('empty DATA record');
      if (p.length - 1 > MAX_DATA_PAYLOAD) throw bad('DATA record too long');
      return { type, bytes: p.subarray(1) };
    case RecordType.ACK:
    case RecordType.PING:
    case RecordType.PONG: {
      if (p.length !== COUNTER_LENGTH) throw bad(`record type ${type} must be 9 bytes`);
      const received = getU64(p, 1);
      if (!Number.isFinite(received)) throw bad('counter out of range');
      return { type, received };
    }
    case RecordType.CLOSE: {
      const n = p[1];
      if (n === undefined || p.length !== 2 + n) throw bad('CLOSE record malformed');
      const code = String.fromCharCode(...p.subarray(2));
      if (!/^DW_[A-Z0-9_]*$/.test(code)) throw bad('CLOSE code malformed');
      return { type, code };
    }
    default:
      throw bad(`unknown record type ${type}`);
  }
}

/**
 * `decodeRecord` over a plaintext opened in parts (a frame that came in several socket reads). A DATA
 * payload stays as views of the parts; any other record is at most 66 bytes and is joined first.
 */
export function decodeRecordParts(parts: readonly Uint8Array[]): Record | DataParts {
  if (parts.length === 1) return decodeRecord(parts[0]!);
  const first = parts[0];
  if (first === undefined || first.length === 0 || first[0] !== RecordType.DATA) return decodeRecord(concat(parts));
  let n = -1;
  for (const p of parts) n += p.length;
  if (n < 1) throw bad('empty DATA record');
  if (n > MAX_DATA_PAYLOAD) throw bad('DATA record too long');
  const out: Uint8Array[] = [];
  if (first.length > 1) out.push(first.subarray(1));
  for (let i = 1; i < parts.length; i++) if (parts[i]!.length > 0) out.push(parts[i]!);
  return { type: RecordType.DATA, parts: out };
}
