import { readU64, writeU64 } from './bytes.js';
import { ProtocolCode, ProtocolError } from './errors.js';
import { MAX_DATA_PAYLOAD } from './limits.js';

/** PROTOCOL 4.2: the plaintext of a record starts with its type. */
export const RecordType = { DATA: 1, ACK: 2, PING: 3, PONG: 4, CLOSE: 5 } as const;
export type RecordType = (typeof RecordType)[keyof typeof RecordType];

export type Record =
  | { type: typeof RecordType.DATA; bytes: Uint8Array }
  | { type: typeof RecordType.ACK | typeof RecordType.PING | typeof RecordType.PONG; received: number }
  | { type: typeof RecordType.CLOSE; code: string };

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
      const out = new Uint8Array(9);
      out[0] = r.type;
      writeU64(new DataView(out.buffer), 1, r.received);
      return out;
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
      if (p.length !== 9) throw bad(`record type ${type} must be 9 bytes`);
      const received = readU64(new DataView(p.buffer, p.byteOffset, p.byteLength), 1);
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
