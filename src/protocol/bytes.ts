/** Small byte helpers for the pure protocol code (no Buffer: it runs wherever Uint8Array does). */

export function concat(parts: readonly Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/**
 * Splits the last `n` bytes off `parts` (whose total is at least `n`): the parts before them, as views,
 * and those bytes, a view when they lie in one part (a record's tag nearly always does).
 */
export function splitTail(parts: readonly Uint8Array[], n: number): [Uint8Array[], Uint8Array] {
  const last = parts[parts.length - 1];
  if (last !== undefined && last.length >= n) {
    const head = parts.slice(0, -1);
    if (last.length > n) head.push(last.subarray(0, last.length - n));
    return [head, last.subarray(last.length - n)];
  }
  const head = parts.slice();
  const tail = new Uint8Array(n);
  let need = n;
  while (need > 0) {
    const p = head.pop()!;
    if (p.length <= need) {
      tail.set(p, need - p.length);
      need -= p.length;
    } else {
      tail.set(p.subarray(p.length - need), 0);
      head.push(p.subarray(0, p.length - need));
      need = 0;
    }
  }
  return [head, tail];
}

export function equal(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i]! ^ b[i]!;
  return d === 0;
}

const TWO_32 = 0x1_0000_0000;

export function writeU64(view: DataView, offset: number, value: number): void {
  if (!Number.isSafeInteger(value) || value < 0) {
    view.setBigUint64(offset, BigInt(value)); // what it always did with such values (throws or wraps)
    return;
  }
  view.setUint32(offset, Math.floor(value / TWO_32));
  view.setUint32(offset + 4, value >>> 0);
}

/** Reads a u64 that must fit a JavaScript safe integer (counts of bytes do, for 2^53 bytes). */
export function readU64(view: DataView, offset: number): number {
  const hi = view.getUint32(offset);
  // 2^53 - 1 is hi 0x1fffff, lo 0xffffffff: anything above does not fit.
  return hi > 0x1f_ffff ? Number.NaN : hi * TWO_32 + view.getUint32(offset + 4);
}

/** `writeU64` straight into bytes (no DataView): for the counter records written on every heartbeat. */
export function setU64(bytes: Uint8Array, offset: number, value: number): void {
  if (!Number.isSafeInteger(value) || value < 0) {
    writeU64(new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength), offset, value);
    return;
  }
  const hi = Math.floor(value / TWO_32);
  const lo = value >>> 0;
  bytes[offset] = hi >>> 24;
  bytes[offset + 1] = (hi >>> 16) & 0xff;
  bytes[offset + 2] = (hi >>> 8) & 0xff;
  bytes[offset + 3] = hi & 0xff;
  bytes[offset + 4] = lo >>> 24;
  bytes[offset + 5] = (lo >>> 16) & 0xff;
  bytes[offset + 6] = (lo >>> 8) & 0xff;
  bytes[offset + 7] = lo & 0xff;
}

/** `readU64` straight from bytes (the caller checked there are 8). */
export function getU64(bytes: Uint8Array, offset: number): number {
  const hi = ((bytes[offset]! << 24) | (bytes[offset + 1]! << 16) | (bytes[offset + 2]! << 8) | bytes[offset + 3]!) >>> 0;
  if (hi > 0x1f_ffff) return Number.NaN;
  const lo = ((bytes[offset + 4]! << 24) | (bytes[offset + 5]! << 16) | (bytes[offset + 6]! << 8) | bytes[offset + 7]!) >>> 0;
  return hi * TWO_32 + lo;
}

const HEX_DIGITS = '0123456789abcdef';

/**
 * Lowercase hex as one flat string. Built from character codes rather than `+=`: a string grown by `+=`
 * is a rope of small strings, and one kept as a map key holds all of them (~1 KB for a 32-byte key).
 */
export function toHex(b: Uint8Array): string {
  const codes = new Array<number>(b.length * 2);
  for (let i = 0; i < b.length; i++) {
    codes[2 * i] = HEX_DIGITS.charCodeAt(b[i]! >>> 4);
    codes[2 * i + 1] = HEX_DIGITS.charCodeAt(b[i]! & 0xf);
  }
  let s = '';
  // fromCharCode takes its codes as arguments: stay far below the engine's argument limit.
  for (let i = 0; i < codes.length; i += 8192) s += String.fromCharCode(...codes.slice(i, i + 8192));
  return s;
}

export function fromHex(s: string): Uint8Array {
  if (s.length % 2 !== 0 || /[^0-9a-f]/i.test(s)) throw new TypeError('not hex');
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.slice(i * 2, i * 2 + 2), 16);
  return out;
}

/**
 * A FIFO of byte chunks addressed by absolute stream offsets: bytes [base, end) are held. The replay
 * buffer of a session direction. Chunks are kept as given (no copy); dropping from the front is O(chunks).
 */
export class ByteQueue {
  private chunks: Uint8Array[] = [];
  private head = 0; // bytes of chunks[0] already dropped
  base = 0;
  end = 0;

  get length(): number {
    return this.end - this.base;
  }

  push(bytes: Uint8Array): void {
    if (bytes.length === 0) return;
    this.chunks.push(bytes);
    this.end += bytes.length;
  }

  /** Drops bytes before absolute offset `to`. */
  dropTo(to: number): void {
    let n = Math.min(to, this.end) - this.base;
    while (n > 0) {
      const first = this.chunks[0]!;
      const avail = first.length - this.head;
      if (n >= avail) {
        this.chunks.shift();
        this.head = 0;
        this.base += avail;
        n -= avail;
      } else {
        this.head += n;
        this.base += n;
        n = 0;
      }
    }
  }

  /** Bytes from absolute offset `from`, at most `max`, without copying when they lie in one chunk. */
  read(from: number, max: number): Uint8Array {
    const parts: Uint8Array[] = [];
    const want = this.readInto(from, max, parts);
    if (parts.length === 1) return parts[0]!;
    const out = new Uint8Array(want);
    let o = 0;
    for (const p of parts) {
      out.set(p, o);
      o += p.length;
    }
    return out;
  }

  /**
   * Appends to `out` views of the bytes from absolute offset `from`, at most `max` of them, copying
   * nothing (a record is sealed from these views directly); returns how many bytes.
   */
  readInto(from: number, max: number, out: Uint8Array[]): number {
    if (from < this.base || from > this.end) throw new RangeError('offset outside the queue');
    const want = Math.min(max, this.end - from);
    let skip = from - this.base + this.head;
    let i = 0;
    let got = 0;
    while (got < want) {
      const c = this.chunks[i++]!;
      if (skip >= c.length) {
        skip -= c.length;
        continue;
      }
      const take = Math.min(c.length - skip, want - got);
      out.push(skip === 0 && take === c.length ? c : c.subarray(skip, skip + take));
      got += take;
      skip = 0;
    }
    return want;
  }
}

const EMPTY_BYTES = new Uint8Array(0);
/** Never written to: ChunkReader replaces it before pushing. */
const NO_CHUNKS: Uint8Array[] = Object.freeze([]) as unknown as Uint8Array[];

/**
 * Bytes received in arbitrary chunks, taken off the front in exact amounts (parsers' input buffer).
 * Consumed chunks are skipped by index and compacted in bulk, so taking across many tiny chunks stays
 * linear (a peer sending one byte at a time cannot make it quadratic). The read position inside the first
 * chunk is an offset, so taking makes no view but the one it returns.
 */
export class ChunkReader {
  /** NO_CHUNKS while empty: an idle reader holds no array, and the next chunk makes one of one slot. */
  private chunks: Uint8Array[] = NO_CHUNKS;
  private head = 0; // index of the first chunk still holding bytes
  private offset = 0; // bytes of chunks[head] already taken
  length = 0;

  push(bytes: Uint8Array): void {
    if (bytes.length === 0) return;
    if (this.chunks === NO_CHUNKS) this.chunks = [bytes];
    else this.chunks.push(bytes);
    this.length += bytes.length;
  }

  /** Takes `n` bytes (n <= length), as a view when they lie in one chunk. */
  take(n: number): Uint8Array {
    if (n === 0) return new Uint8Array(0);
    const first = this.chunks[this.head]!;
    const off = this.offset;
    let out: Uint8Array;
    if (first.length - off >= n) {
      out = first.subarray(off, off + n);
      this.advance(first, n);
    } else {
      out = new Uint8Array(n);
      let o = 0;
      while (o < n) {
        const c = this.chunks[this.head]!;
        const k = Math.min(c.length - this.offset, n - o);
        out.set(c.subarray(this.offset, this.offset + k), o);
        o += k;
        this.advance(c, k);
      }
    }
    this.length -= n;
    this.compact();
    return out;
  }

  /** Takes two bytes as a u16be (length >= 2) without making a view: every frame starts with one. */
  takeU16(): number {
    const first = this.chunks[this.head]!;
    const off = this.offset;
    if (first.length - off < 2) {
      const b = this.take(2);
      return (b[0]! << 8) | b[1]!;
    }
    const v = (first[off]! << 8) | first[off + 1]!;
    this.advance(first, 2);
    this.length -= 2;
    this.compact();
    return v;
  }

  /** Takes `n` bytes as views of the chunks they lie in (no copy). */
  takeParts(n: number): Uint8Array[] {
    if (n === 0) return [];
    const first = this.chunks[this.head]!;
    const off = this.offset;
    if (first.length - off >= n) {
      // One chunk holds it all (every record of a quiet connection): an array of exactly one view.
      const out = [off === 0 && n === first.length ? first : first.subarray(off, off + n)];
      this.advance(first, n);
      this.length -= n;
      this.compact();
      return out;
    }
    const out: Uint8Array[] = [];
    let left = n;
    while (left > 0) {
      const c = this.chunks[this.head]!;
      const off = this.offset;
      const k = Math.min(c.length - off, left);
      out.push(off === 0 && k === c.length ? c : c.subarray(off, off + k));
      this.advance(c, k);
      left -= k;
    }
    this.length -= n;
    this.compact();
    return out;
  }

  /** Moves past `k` bytes of the first chunk `c`. */
  private advance(c: Uint8Array, k: number): void {
    this.offset += k;
    if (this.offset === c.length) {
      this.chunks[this.head++] = EMPTY_BYTES; // let the chunk go now, not at the next compaction
      this.offset = 0;
    }
  }

  private compact(): void {
    if (this.head === this.chunks.length) {
      // Emptied (the usual case after each frame): keep no chunk alive and no array.
      this.chunks = NO_CHUNKS;
      this.head = 0;
    } else if (this.head >= 1024 && this.head * 2 >= this.chunks.length) {
      this.chunks = this.chunks.slice(this.head);
      this.head = 0;
    }
  }

  /** Hands over everything held. */
  drain(): Uint8Array[] {
    const out = this.chunks.slice(this.head);
    if (out.length > 0 && this.offset > 0) out[0] = out[0]!.subarray(this.offset);
    this.chunks = NO_CHUNKS;
    this.head = 0;
    this.offset = 0;
    this.length = 0;
    return out;
  }
}

/**
 * Small byte arrays carved from a shared slab (what Buffer's pool does, without Buffer): the frames of
 * heartbeats and other small records cost one ArrayBuffer per 8 KiB of them instead of one each. A slice
 * is handed out once and its bytes are never touched again by this module; the slab is freed with its
 * last slice. Larger requests get their own array.
 */
const SLAB_SIZE = 8 * 1024;
let slab = EMPTY_BYTES;
let slabUsed = 0;

export function smallBytes(n: number): Uint8Array {
  if (n > SLAB_SIZE / 8) return new Uint8Array(n);
  if (slabUsed + n > slab.length) {
    slab = new Uint8Array(SLAB_SIZE);
    slabUsed = 0;
  }
  const out = slab.subarray(slabUsed, slabUsed + n);
  slabUsed = (slabUsed + n + 7) & ~7; // 8-byte aligned, like Buffer's pool
  return out;
}
