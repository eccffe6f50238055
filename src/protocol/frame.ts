import { ChunkReader } from './bytes.js';
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
    if (this.need < 0) {
      if (this.input.length < 2) return undefined;
      const h = this.input.take(2);
      const len = (h[0]! << 8) | h[1]!;
      if (len > this.maxBody) throw new ProtocolError(ProtocolCode.FRAME_TOO_LARGE, `frame of ${len} bytes exceeds ${this.maxBody}`);
      this.need = len;
    }
    if (this.input.length < this.need) return undefined;
    const body = this.input.take(this.need);
    this.need = -1;
    return body;
  }

  /** Everything still buffered, handed over. */
  drain(): Uint8Array[] {
    return this.input.drain();
  }
}
