import { ChunkReader, concat } from './bytes.js';
import { ProtocolCode, ProtocolError } from './errors.js';
import { MAX_MESSAGE_BODY, MAX_MESSAGE_HEADER } from './limits.js';

/**
 * PROTOCOL 6-7: application messages on a session stream. Each is
 * `type u8 | headerLength u16be | bodyLength u32be | header (UTF-8 JSON object) | body (raw bytes)`.
 * Bodies are raw (never base64); a file travels as one FILE message and as many CHUNK messages as needed.
 */
export const MessageType = {
  HELLO: 1,
  FILE: 2,
  CHUNK: 3,
  RECEIVED: 4,
  RESULT: 5,
  CONFIRM: 6,
  RESTART: 7,
  CANCEL: 8,
  PRESENCE_QUERY: 9,
  PRESENCE: 10,
  SEND: 11,
  SEND_ACK: 12,
  SEND_CHUNK: 13,
  SEND_END: 14,
  WATCH: 15,
  STATUS: 16,
  REDIRECT: 17,
  REDIRECT_REFUSED: 18,
  FILE_END: 19,
} as const;
export type MessageType = (typeof MessageType)[keyof typeof MessageType];

/** Headers, by type (PROTOCOL 7). */
export interface Headers {
  /**
   * Agent → relay on every new stream, after re-sending unconfirmed reports: the partial files it holds.
   * `agent` names what it runs, `dropwire/<version> (<commit>)` (PROTOCOL 7.3).
   */
  [MessageType.HELLO]: { agent: string; partial: { id: string; have: number }[]; caps?: string[] };
  /**
   * Relay → agent: a file follows from `offset` in CHUNKs. Without `sha256` (cut-through, PROTOCOL 7.18, only
   * to an agent that listed CAP_CUT_THROUGH) the hash comes after the last CHUNK, in FILE_END.
   */
  [MessageType.FILE]: { id: string; from: string; filename: string; size: number; sha256?: string; offset: number; createdAt: number; sealed?: boolean };
  /** Relay → agent: the next bytes of the current file `id`. */
  [MessageType.CHUNK]: { id: string };
  /** Agent → relay: the file is complete on the host's disk (fsync'd) and its SHA-256 matched. */
  [MessageType.RECEIVED]: { id: string };
  /** Agent → relay: what the handler did. */
  [MessageType.RESULT]: { id: string; status: 'handled' | 'failed' | 'rejected'; code?: string; detail?: Record<string, unknown> };
  /** Relay → agent: these outcomes are stored durably; the agent may stop re-reporting them. */
  [MessageType.CONFIRM]: { ids: string[] };
  /** Agent → relay: the file must be sent again from `offset` (its bytes did not match). */
  [MessageType.RESTART]: { id: string; offset: number; code: string };
  /** Relay → agent: stop the transfer of `id` and drop what was spooled. */
  [MessageType.CANCEL]: { id: string };
  /** Agent → relay: is `device` connected? (`dropwire online` on a host) */
  [MessageType.PRESENCE_QUERY]: { qid: number; device: string };
  /** Relay → agent: the answer to PRESENCE_QUERY `qid`; `known` false for a device that does not exist. */
  [MessageType.PRESENCE]: { qid: number; device: string; known: boolean; online: boolean; lastSeen: number | null; publicKey?: string };
  /** Agent → relay: offers a file for `to` (PROTOCOL 7.14); `sid` is the sender's own name for the upload. */
  [MessageType.SEND]: { sid: string; to: string; filename: string; size: number; sha256: string; sealed?: boolean };
  /** Relay → agent: the relay holds the first `have` bytes of upload `sid`; send from there, at most SEND_WINDOW ahead. */
  [MessageType.SEND_ACK]: { sid: string; have: number };
  /** Agent → relay: the next bytes of upload `sid`. */
  [MessageType.SEND_CHUNK]: { sid: string };
  /** Relay → agent: upload `sid` is stored durably as message `id`, or refused with `code`. */
  [MessageType.SEND_END]: { sid: string; id?: string; code?: string; message?: string };
  /** Agent → relay: report the status of message `id`, which this device sent, now and when it is final. */
  [MessageType.WATCH]: { id: string };
  /** Relay → agent: the status of a watched message; `result` is what the receiver's handler reported. */
  [MessageType.STATUS]: { id: string; status: string; result?: Record<string, unknown> };
  /** Relay → agent (PROTOCOL 7.16): continue this session at the node `to` before `deadline` (Unix ms), presenting `rid`. */
  [MessageType.REDIRECT]: { rid: string; to: string; deadline: number };
  /** Agent → relay (PROTOCOL 7.17): the agent stays where it is; `code` says why. */
  [MessageType.REDIRECT_REFUSED]: { rid: string; code: string };
  /** Relay → agent (PROTOCOL 7.18): the cut-through file `id` is stored durably; its whole SHA-256. */
  [MessageType.FILE_END]: { id: string; sha256: string };
}

/** PROTOCOL 7.3: the capability an agent lists in HELLO `caps` when it understands REDIRECT (7.16). */
export const CAP_REDIRECT = 'redirect';
/** PROTOCOL 7.18: the capability an agent lists in HELLO `caps` when it takes cut-through files (FILE_END). */
export const CAP_CUT_THROUGH = 'cut-through';
/** PROTOCOL 7.16: a request id is 16 bytes, written as 32 lowercase hex digits. */
export const isRequestId = (x: unknown): x is string => typeof x === 'string' && /^[0-9a-f]{32}$/.test(x);
const KNOWN_TYPES: ReadonlySet<number> = new Set(Object.values(MessageType));

/**
 * A decoded message. `parts` is the body as it arrived (views of the received records, no copy: a
 * receiver writes them in order); `body` joins them (a copy only when there is more than one part).
 */
export type Message = { [T in MessageType]: { type: T; header: Headers[T]; readonly body: Uint8Array; parts: Uint8Array[] } }[MessageType];

const PREFIX = 7;
const enc = new TextEncoder();
const dec = new TextDecoder('utf-8', { fatal: true });
const EMPTY = new Uint8Array(0);

export function encodeMessage<T extends MessageType>(type: T, header: Headers[T], body: Uint8Array = EMPTY): Uint8Array[] {
  const h = enc.encode(JSON.stringify(header));
  if (h.length > MAX_MESSAGE_HEADER) throw new ProtocolError(ProtocolCode.MESSAGE_TOO_LARGE, `header ${h.length} > ${MAX_MESSAGE_HEADER}`);
  if (body.length > MAX_MESSAGE_BODY) throw new ProtocolError(ProtocolCode.MESSAGE_TOO_LARGE, `body ${body.length} > ${MAX_MESSAGE_BODY}`);
  const head = new Uint8Array(PREFIX + h.length);
  const v = new DataView(head.buffer);
  head[0] = type;
  v.setUint16(1, h.length);
  v.setUint32(3, body.length);
  head.set(h, PREFIX);
  return body.length > 0 ? [head, body] : [head];
}

/**
 * Like `encodeMessage`, with a body given as several pieces (sent as they are, never joined): a CHUNK made
 * of the pieces an upload arrived in (PROTOCOL 7.18).
 */
export function encodeMessageParts<T extends MessageType>(type: T, header: Headers[T], parts: readonly Uint8Array[]): Uint8Array[] {
  let length = 0;
  for (const p of parts) length += p.length;
  const h = enc.encode(JSON.stringify(header));
  if (h.length > MAX_MESSAGE_HEADER) throw new ProtocolError(ProtocolCode.MESSAGE_TOO_LARGE, `header ${h.length} > ${MAX_MESSAGE_HEADER}`);
  if (length > MAX_MESSAGE_BODY) throw new ProtocolError(ProtocolCode.MESSAGE_TOO_LARGE, `body ${length} > ${MAX_MESSAGE_BODY}`);
  const head = new Uint8Array(PREFIX + h.length);
  const v = new DataView(head.buffer);
  head[0] = type;
  v.setUint16(1, h.length);
  v.setUint32(3, length);
  head.set(h, PREFIX);
  const out: Uint8Array[] = [head];
  for (const p of parts) if (p.length > 0) out.push(p);
  return out;
}

/** PROTOCOL 7.3: the relay keeps at most this many characters of a HELLO's `agent` as the device's agent version. */
export const MAX_AGENT_VERSION = 128;

/** PROTOCOL 7.3: the agent version a relay records from HELLO `agent`: control characters dropped, cut to 128. */
export function agentVersionOf(agent: string): string | undefined {
  const v = agent.replace(/[\u0000-\u001f\u007f]/g, '').trim().slice(0, MAX_AGENT_VERSION);
  return v === '' ? undefined : v;
}

function bad(msg: string, cause?: unknown): ProtocolError {
  return new ProtocolError(ProtocolCode.BAD_MESSAGE, msg, { cause });
}

const isStr = (x: unknown): x is string => typeof x === 'string' && x.length > 0 && x.length <= 1024;
const isCount = (x: unknown): x is number => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
/** PROTOCOL 7.14: an upload id, chosen by the sender. */
const isSid = (x: unknown): x is string => typeof x === 'string' && /^[0-9a-z]{1,64}$/.test(x);

/** PROTOCOL 7: every header is checked field by field before anyone uses it. */
function checkHeader(type: number, h: Record<string, unknown>): Message {
  const fail = (field: string) => bad(`message type ${type}: bad field '${field}'`);
  switch (type) {
    case MessageType.HELLO: {
      if (!Array.isArray(h.partial) || h.partial.length > 10_000) throw fail('partial');
      for (const p of h.partial as Record<string, unknown>[]) {
        if (typeof p !== 'object' || p === null || !isStr(p.id) || !isCount(p.have)) throw fail('partial');
      }
      if (typeof h.agent !== 'string') throw fail('agent');
      if (h.caps !== undefined && (!Array.isArray(h.caps) || h.caps.length > 64 || !h.caps.every(isStr))) throw fail('caps');
      break;
    }
    case MessageType.FILE:
      for (const f of ['id', 'from', 'filename'] as const) if (!isStr(h[f])) throw fail(f);
      // PROTOCOL 7.18: absent in a cut-through FILE (the hash follows in FILE_END).
      if (h.sha256 !== undefined && !isStr(h.sha256)) throw fail('sha256');
      for (const f of ['size', 'offset', 'createdAt'] as const) if (!isCount(h[f])) throw fail(f);
      if ((h.offset as number) > (h.size as number)) throw fail('offset');
      if (h.sealed !== undefined && typeof h.sealed !== 'boolean') throw fail('sealed');
      break;
    case MessageType.CHUNK:
    case MessageType.RECEIVED:
    case MessageType.CANCEL:
      if (!isStr(h.id)) throw fail('id');
      break;
    case MessageType.RESULT:
      if (!isStr(h.id)) throw fail('id');
      if (h.status !== 'handled' && h.status !== 'failed' && h.status !== 'rejected') throw fail('status');
      if (h.code !== undefined && typeof h.code !== 'string') throw fail('code');
      if (h.detail !== undefined && (typeof h.detail !== 'object' || h.detail === null || Array.isArray(h.detail))) throw fail('detail');
      break;
    case MessageType.CONFIRM:
      if (!Array.isArray(h.ids) || !h.ids.every(isStr)) throw fail('ids');
      break;
    case MessageType.PRESENCE_QUERY:
      if (!isCount(h.qid)) throw fail('qid');
      if (!isStr(h.device)) throw fail('device');
      break;
    case MessageType.PRESENCE:
      if (!isCount(h.qid)) throw fail('qid');
      if (!isStr(h.device)) throw fail('device');
      if (typeof h.known !== 'boolean') throw fail('known');
      if (typeof h.online !== 'boolean') throw fail('online');
      if (h.lastSeen !== null && !isCount(h.lastSeen)) throw fail('lastSeen');
      if (h.publicKey !== undefined && (typeof h.publicKey !== 'string' || !/^[0-9a-f]{64}$/.test(h.publicKey))) throw fail('publicKey');
      break;
    case MessageType.SEND:
      if (!isSid(h.sid)) throw fail('sid');
      for (const f of ['to', 'filename'] as const) if (!isStr(h[f])) throw fail(f);
      if (!isCount(h.size)) throw fail('size');
      if (typeof h.sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(h.sha256)) throw fail('sha256');
      if (h.sealed !== undefined && typeof h.sealed !== 'boolean') throw fail('sealed');
      break;
    case MessageType.SEND_ACK:
      if (!isSid(h.sid)) throw fail('sid');
      if (!isCount(h.have)) throw fail('have');
      break;
    case MessageType.SEND_CHUNK:
      if (!isSid(h.sid)) throw fail('sid');
      break;
    case MessageType.SEND_END:
      if (!isSid(h.sid)) throw fail('sid');
      if ((h.id === undefined) === (h.code === undefined)) throw fail(h.id === undefined ? 'code' : 'id');
      if (h.id !== undefined && !isStr(h.id)) throw fail('id');
      if (h.code !== undefined && (typeof h.code !== 'string' || !/^DW_[A-Z0-9_]+$/.test(h.code))) throw fail('code');
      if (h.message !== undefined && typeof h.message !== 'string') throw fail('message');
      break;
    case MessageType.WATCH:
      if (!isStr(h.id)) throw fail('id');
      break;
    case MessageType.STATUS:
      if (!isStr(h.id)) throw fail('id');
      if (!isStr(h.status)) throw fail('status');
      if (h.result !== undefined && (typeof h.result !== 'object' || h.result === null || Array.isArray(h.result))) throw fail('result');
      break;
    case MessageType.REDIRECT:
      if (!isRequestId(h.rid)) throw fail('rid');
      if (!isStr(h.to)) throw fail('to');
      if (!isCount(h.deadline)) throw fail('deadline');
      break;
    case MessageType.REDIRECT_REFUSED:
      if (!isRequestId(h.rid)) throw fail('rid');
      if (typeof h.code !== 'string' || !/^DW_[A-Z0-9_]{1,60}$/.test(h.code)) throw fail('code');
      break;
    case MessageType.FILE_END:
      if (!isStr(h.id)) throw fail('id');
      if (typeof h.sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(h.sha256)) throw fail('sha256');
      break;
    case MessageType.RESTART:
      if (!isStr(h.id)) throw fail('id');
      if (!isCount(h.offset)) throw fail('offset');
      if (typeof h.code !== 'string') throw fail('code');
      break;
    default:
      throw bad(`unknown message type ${type}`);
  }
  return {
    type,
    header: h,
    parts: [],
    get body(): Uint8Array {
      const parts = (this as { parts: Uint8Array[] }).parts;
      return parts.length === 1 ? parts[0]! : concat(parts);
    },
  } as unknown as Message;
}

/** Resumable parser of a message stream; limits are checked on the 7-byte prefix, before buffering. */
export class MessageDecoder {
  private readonly input = new ChunkReader();
  private prefix: { type: number; headerLength: number; bodyLength: number } | undefined;

  push(bytes: Uint8Array): void {
    this.input.push(bytes);
  }

  get buffered(): number {
    return this.input.length;
  }

  /**
   * The bytes of a message begun but not complete (PROTOCOL 7.16: handed over with the session), taking
   * them out; a decoder fed them again continues where this one stopped.
   */
  takePending(): Uint8Array {
    const rest = this.input.take(this.input.length);
    if (!this.prefix) return rest;
    const head = new Uint8Array(PREFIX);
    const v = new DataView(head.buffer);
    head[0] = this.prefix.type;
    v.setUint16(1, this.prefix.headerLength);
    v.setUint32(3, this.prefix.bodyLength);
    this.prefix = undefined;
    return concat([head, rest]);
  }

  next(): Message | undefined {
    if (!this.prefix) {
      if (this.input.length < PREFIX) return undefined;
      const p = this.input.take(PREFIX);
      const v = new DataView(p.buffer, p.byteOffset, PREFIX);
      const type = p[0]!;
      const headerLength = v.getUint16(1);
      const bodyLength = v.getUint32(3);
      if (!KNOWN_TYPES.has(type)) throw bad(`unknown message type ${type}`);
      if (headerLength > MAX_MESSAGE_HEADER) throw new ProtocolError(ProtocolCode.MESSAGE_TOO_LARGE, `header ${headerLength} > ${MAX_MESSAGE_HEADER}`);
      if (bodyLength > MAX_MESSAGE_BODY) throw new ProtocolError(ProtocolCode.MESSAGE_TOO_LARGE, `body ${bodyLength} > ${MAX_MESSAGE_BODY}`);
      this.prefix = { type, headerLength, bodyLength };
    }
    const { type, headerLength, bodyLength } = this.prefix;
    if (this.input.length < headerLength + bodyLength) return undefined;
    this.prefix = undefined;
    const headerBytes = this.input.take(headerLength);
    const parts = this.input.takeParts(bodyLength);
    let header: unknown;
    try {
      header = JSON.parse(dec.decode(headerBytes));
    } catch (err) {
      throw bad(`message type ${type}: header is not UTF-8 JSON`, err);
    }
    if (typeof header !== 'object' || header === null || Array.isArray(header)) throw bad(`message type ${type}: header is not an object`);
    const m = checkHeader(type, header as Record<string, unknown>);
    m.parts = parts;
    return m;
  }
}
