import { ChunkReader, smallBytes } from './bytes.js';
import { MAX_FRAME } from './limits.js';
import { ProtocolCode, ProtocolError } from './errors.js';

/** PROTOCOL 2.1: a frame is `u16be length || body`. */
export function encodeFrame(body: Uint8Array): Uint8Array {
  if (body.length > MAX_FRAME) throw new ProtocolError(ProtocolCode.FRAME_TOO_LARGE, `frame body ${body.length} > ${MAX_FRAME}`);
  const out = new Uint8Array(2 + body.length);
  out[0] = body.length >>> 8;
  out[1] = body.length & 0xff;
  out.set(body, 2);
  return out;
}

/** A frame body up to this size is joined into one array: one socket write beats several for so few bytes. */
const JOIN_BODY = 1024;
/** Leading parts up to this size in all ride in the header's array (a sealed record type byte does). */
const JOIN_HEAD = 256;

/**
 * `encodeFrame` for a body given in parts, copying as little as possible: a small frame becomes one array
 * (carved from the small-bytes slab), a large one its header, carrying any small leading parts, followed
 * by the other parts as they are. Concatenated, the result is exactly `encodeFrame(concat(body))`.
 */
export function encodeFrameParts(body: readonly Uint8Array[]): Uint8Array[] {
  let n = 0;
  for (const p of body) n += p.length;
  if (n > MAX_FRAME) throw new ProtocolError(ProtocolCode.FRAME_TOO_LARGE, `frame body ${n} > ${MAX_FRAME}`);
  let k = 0;
  let head = 2;
  if (n <= JOIN_BODY) {
    k = body.length;
    head += n;
  } else {
    while (k < body.length && head - 2 + body[k]!.length <= JOIN_HEAD) head += body[k++]!.length;
  }
  const first = smallBytes(head);
  first[0] = n >>> 8;
  first[1] = n & 0xff;
  for (let i = 0, o = 2; i < k; i++) {
    first.set(body[i]!, o);
    o += body[i]!.length;
  }
  const out = [first];
  for (let i = k; i < body.length; i++) if (body[i]!.length > 0) out.push(body[i]!);
  return out;
}

/**
 * Resumable frame parser: bytes go in however they were chunked, whole frame bodies come out. The
 * length is checked against `maxBody` before the body is buffered (PROTOCOL 2.2).
 */
export class FrameDecoder {
  private readonly input = new ChunkReader();
  private need = -1; // body length of the frame being read; -1 while reading the length
  maxBody: number;

  constructor(maxBody = MAX_FRAME) {
    this.maxBody = maxBody;
  }

  /** Bytes held that do not yet make a whole frame. */
  get buffered(): number {
    return this.input.length;
  }

  push(bytes: Uint8Array): void {
    this.input.push(bytes);
  }

  /** The next whole frame body, or undefined when more bytes are needed. Throws DW_FRAME_TOO_LARGE. */
  next(): Uint8Array | undefined {
    if (!this.whole()) return undefined;
    const body = this.input.take(this.need);
    this.need = -1;
    return body;
  }

  /**
   * `next()` without joining: the body as views of the chunks it arrived in. A record is opened from
   * these directly, so a frame split across socket reads is never copied together.
   */
  nextParts(): Uint8Array[] | undefined {
    if (!this.whole()) return undefined;
    const body = this.input.takeParts(this.need);
    this.need = -1;
    return body;
  }

  /** Reads the length once it has arrived (checking it first: PROTOCOL 2.2); true when the body is here. */
  private whole(): boolean {
    if (this.need < 0) {
      if (this.input.length < 2) return false;
      const len = this.input.takeU16();
      if (len > this.maxBody) throw new ProtocolError(ProtocolCode.FRAME_TOO_LARGE, `frame of ${len} bytes exceeds ${this.maxBody}`);
      this.need = len;
    }
    return this.input.length >= this.need;
  }

  /** Everything still buffered, handed over. */
  drain(): Uint8Array[] {
    return this.input.drain();
  }
}
