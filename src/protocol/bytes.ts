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

export function equal(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i]! ^ b[i]!;
  return d === 0;
}

export function writeU64(view: DataView, offset: number, value: number): void {
  view.setBigUint64(offset, BigInt(value));
}

/** Reads a u64 that must fit a JavaScript safe integer (counts of bytes do, for 2^53 bytes). */
export function readU64(view: DataView, offset: number): number {
  const v = view.getBigUint64(offset);
  return v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.NaN : Number(v);
}

export function toHex(b: Uint8Array): string {
  let s = '';
  for (const x of b) s += x.toString(16).padStart(2, '0');
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
    if (from < this.base || from > this.end) throw new RangeError('offset outside the queue');
    const want = Math.min(max, this.end - from);
    if (want === 0) return new Uint8Array(0);
    let skip = from - this.base + this.head;
    let i = 0;
    while (skip >= this.chunks[i]!.length) {
      skip -= this.chunks[i]!.length;
      i++;
    }
    const first = this.chunks[i]!;
    if (first.length - skip >= want) return first.subarray(skip, skip + want);
    const out = new Uint8Array(want);
    let o = 0;
    while (o < want) {
      const c = this.chunks[i++]!;
      const take = Math.min(c.length - skip, want - o);
      out.set(c.subarray(skip, skip + take), o);
      o += take;
      skip = 0;
    }
    return out;
  }
}

/**
 * Bytes received in arbitrary chunks, taken off the front in exact amounts (parsers' input buffer).
 * Consumed chunks are skipped by index and compacted in bulk, so taking across many tiny chunks stays
 * linear (a peer sending one byte at a time cannot make it quadratic).
 */
export class ChunkReader {
  private chunks: Uint8Array[] = [];
  private head = 0; // index of the first chunk still holding bytes
  length = 0;

  push(bytes: Uint8Array): void {
    if (bytes.length === 0) return;
    this.chunks.push(bytes);
    this.length += bytes.length;
  }

  /** Takes `n` bytes (n <= length), as a view when they lie in one chunk. */
  take(n: number): Uint8Array {
    if (n === 0) return new Uint8Array(0);
    const first = this.chunks[this.head]!;
    let out: Uint8Array;
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.head++;
      else this.chunks[this.head] = first.subarray(n);
    } else {
      out = new Uint8Array(n);
      let o = 0;
      while (o < n) {
        const c = this.chunks[this.head]!;
        const k = Math.min(c.length, n - o);
        out.set(k === c.length ? c : c.subarray(0, k), o);
        o += k;
        if (k === c.length) this.head++;
        else this.chunks[this.head] = c.subarray(k);
      }
    }
    this.length -= n;
    this.compact();
    return out;
  }

  /** Takes `n` bytes as views of the chunks they lie in (no copy). */
  takeParts(n: number): Uint8Array[] {
    const out: Uint8Array[] = [];
    let left = n;
    while (left > 0) {
      const c = this.chunks[this.head]!;
      if (c.length <= left) {
        out.push(c);
        this.head++;
        left -= c.length;
      } else {
        out.push(c.subarray(0, left));
        this.chunks[this.head] = c.subarray(left);
        left = 0;
      }
    }
    this.length -= n;
    this.compact();
    return out;
  }

  private compact(): void {
    if (this.head === this.chunks.length) {
      this.chunks = [];
      this.head = 0;
    } else if (this.head >= 1024 && this.head * 2 >= this.chunks.length) {
      this.chunks = this.chunks.slice(this.head);
      this.head = 0;
    }
  }

  /** Hands over everything held. */
  drain(): Uint8Array[] {
    const out = this.chunks.slice(this.head);
    this.chunks = [];
    this.head = 0;
    this.length = 0;
    return out;
  }
}
