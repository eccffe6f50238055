/**
 * The zero-copy paths (records sealed and opened as parts, frames written and read as parts, counters
 * without BigInt) checked against the joined originals they replace: same bytes, same codes.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ByteQueue, ChunkReader, concat, getU64, readU64, setU64, smallBytes, splitTail, toHex, writeU64 } from '../../src/protocol/bytes.js';
import { MAX_NONCE, TAGLEN, type CryptoBackend } from '../../src/protocol/crypto.js';
import { nobleCrypto } from '../../src/protocol/crypto-noble.js';
import { nodeCrypto } from '../../src/protocol/crypto-node.js';
import { DropwireError } from '../../src/shared/errors.js';
import { encodeFrame, encodeFrameParts, FrameDecoder } from '../../src/protocol/frame.js';
import { MAX_FRAME, MAX_RECORD_PLAINTEXT } from '../../src/protocol/limits.js';
import { CipherState, MAX_NOISE_MESSAGE } from '../../src/protocol/noise.js';
import { decodeRecord, decodeRecordParts, encodeRecord, RecordType } from '../../src/protocol/records.js';
import { codeOf, hex, split } from '../helpers/protocol.js';

const backends: readonly CryptoBackend[] = [nodeCrypto, nobleCrypto];
const EMPTY = new Uint8Array(0);


const key32 = fc.uint8Array({ minLength: 32, maxLength: 32 });
const nonce = fc.oneof(fc.nat(1000), fc.integer({ min: 0, max: MAX_NONCE }), fc.constant(MAX_NONCE));
const cuts = fc.array(fc.nat(), { maxLength: 5 });

describe('AeadKey: records sealed and opened in parts', () => {
  it('seal gives encrypt() bytes, on both backends, however the plaintext is cut', () => {
    fc.assert(
      fc.property(key32, nonce, fc.uint8Array({ maxLength: 64 }), fc.uint8Array({ maxLength: 3000 }), cuts, (key, n, ad, plaintext, c) => {
        const want = hex(nobleCrypto.encrypt(key, n, ad, plaintext));
        for (const crypto of backends) {
          const sealed = crypto.aeadKey(key).seal(n, ad, split(plaintext, c));
          expect(hex(concat(sealed)), crypto.name).toBe(want);
          for (const p of sealed) expect(Object.getPrototypeOf(p)).toBe(Uint8Array.prototype);
        }
      }),
      { numRuns: 150 },
    );
  });

  it('open gives decrypt() bytes, on both backends, however the ciphertext is cut', () => {
    fc.assert(
      fc.property(key32, nonce, fc.uint8Array({ maxLength: 64 }), fc.uint8Array({ maxLength: 3000 }), cuts, (key, n, ad, plaintext, c) => {
        const ct = nodeCrypto.encrypt(key, n, ad, plaintext);
        const body = ct.subarray(0, plaintext.length);
        const tag = ct.subarray(plaintext.length);
        for (const crypto of backends) {
          const opened = crypto.aeadKey(key).open(n, ad, split(body, c), tag);
          expect(hex(concat(opened)), crypto.name).toBe(hex(plaintext));
        }
      }),
      { numRuns: 150 },
    );
  });

  it.each(backends)('$name: a flipped bit, a wrong nonce, ad or tag length is DW_BAD_MAC; a destroyed key DW_BAD_KEY', (crypto) => {
    fc.assert(
      fc.property(key32, fc.nat(1000), fc.uint8Array({ minLength: 1, maxLength: 300 }), cuts, fc.nat(), (key, n, plaintext, c, where) => {
        const k = crypto.aeadKey(key);
        const ct = concat(k.seal(n, EMPTY, [plaintext]));
        const bit = where % (ct.length * 8);
        const bad = ct.slice();
        bad[bit >> 3]! ^= 1 << (bit & 7);
        const body = (b: Uint8Array) => split(b.subarray(0, plaintext.length), c);
        const tag = (b: Uint8Array) => b.subarray(plaintext.length);
        expect(codeOf(() => k.open(n, EMPTY, body(bad), tag(bad)))).toBe('DW_BAD_MAC');
        expect(codeOf(() => k.open(n + 1, EMPTY, body(ct), tag(ct)))).toBe('DW_BAD_MAC');
        expect(codeOf(() => k.open(n, Uint8Array.of(0), body(ct), tag(ct)))).toBe('DW_BAD_MAC');
        expect(codeOf(() => k.open(n, EMPTY, body(ct), tag(ct).subarray(1)))).toBe('DW_BAD_MAC');
        k.destroy();
        expect(codeOf(() => k.seal(n, EMPTY, [plaintext]))).toBe('DW_BAD_KEY');
        expect(codeOf(() => k.open(n, EMPTY, body(ct), tag(ct)))).toBe('DW_BAD_KEY');
      }),
      { numRuns: 60 },
    );
  });

  it('a bound key does not see later changes to the array it was made from', () => {
    for (const crypto of backends) {
      const raw = new Uint8Array(32).fill(3);
      const k = crypto.aeadKey(raw);
      raw.fill(0);
      expect(hex(concat(k.seal(7, EMPTY, [Uint8Array.of(1, 2, 3)])))).toBe(hex(nobleCrypto.encrypt(new Uint8Array(32).fill(3), 7, EMPTY, Uint8Array.of(1, 2, 3))));
    }
  });
});

describe('CipherState parts API', () => {
  it.each(backends)('$name: encryptParts / decryptParts match encryptWithAd / decryptWithAd and advance the nonce alike', (crypto) => {
    fc.assert(
      fc.property(key32, fc.array(fc.uint8Array({ maxLength: 2000 }), { minLength: 1, maxLength: 4 }), cuts, (key, messages, c) => {
        const whole = [new CipherState(crypto, key), new CipherState(crypto, key)];
        const parts = [new CipherState(crypto, key), new CipherState(crypto, key)];
        for (const m of messages) {
          const ct = whole[0]!.encryptWithAd(EMPTY, m);
          expect(hex(concat(parts[0]!.encryptParts(EMPTY, split(m, c))))).toBe(hex(ct));
          expect(hex(concat(parts[1]!.decryptParts(EMPTY, split(ct, c))))).toBe(hex(whole[1]!.decryptWithAd(EMPTY, ct)));
        }
        expect(parts[0]!.nonce).toBe(messages.length);
        expect(parts[1]!.nonce).toBe(messages.length);
      }),
      { numRuns: 60 },
    );
  });

  it('keeps the limits and the nonce on failure', () => {
    const send = new CipherState(nodeCrypto, new Uint8Array(32).fill(1));
    const recv = new CipherState(nodeCrypto, new Uint8Array(32).fill(1));
    expect(codeOf(() => send.encryptParts(EMPTY, [new Uint8Array(MAX_RECORD_PLAINTEXT), Uint8Array.of(0)]))).toBe('DW_MESSAGE_TOO_LARGE');
    expect(concat(send.encryptParts(EMPTY, [new Uint8Array(MAX_RECORD_PLAINTEXT)])).length).toBe(MAX_NOISE_MESSAGE);
    expect(codeOf(() => recv.decryptParts(EMPTY, [new Uint8Array(MAX_NOISE_MESSAGE), Uint8Array.of(0)]))).toBe('DW_MESSAGE_TOO_LARGE');
    expect(codeOf(() => recv.decryptParts(EMPTY, [new Uint8Array(7), new Uint8Array(8)]))).toBe('DW_BAD_MAC');
    expect(codeOf(() => recv.decryptParts(EMPTY, [new Uint8Array(40)]))).toBe('DW_BAD_MAC');
    expect(recv.nonce).toBe(0);
  });
});

describe('frames in parts (PROTOCOL 2.1)', () => {
  it('encodeFrameParts gives encodeFrame bytes, however the body is cut', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: MAX_FRAME }), cuts, fc.nat(255), (n, c, fill) => {
        const body = new Uint8Array(n).fill(fill);
        body[0] = 1;
        const out = encodeFrameParts(split(body, c));
        expect(hex(concat(out))).toBe(hex(encodeFrame(body)));
        if (n <= 1024) expect(out.length).toBe(1);
      }),
      { numRuns: 200 },
    );
    expect(codeOf(() => encodeFrameParts([new Uint8Array(MAX_FRAME), Uint8Array.of(1)]))).toBe('DW_FRAME_TOO_LARGE');
  });

  it('nextParts gives the bodies next() gives, whatever the chunking', () => {
    fc.assert(
      fc.property(fc.array(fc.uint8Array({ maxLength: 3000 }), { maxLength: 5 }), cuts, (bodies, c) => {
        const wire = concat(bodies.map(encodeFrame));
        const a = new FrameDecoder();
        const b = new FrameDecoder();
        const got: string[][] = [[], []];
        for (const chunk of split(wire, c)) {
          a.push(chunk);
          b.push(chunk);
          for (let f = a.next(); f; f = a.next()) got[0]!.push(hex(f));
          for (let f = b.nextParts(); f; f = b.nextParts()) got[1]!.push(hex(concat(f)));
        }
        expect(got[0]).toEqual(bodies.map(hex));
        expect(got[1]).toEqual(bodies.map(hex));
        expect(b.buffered).toBe(0);
      }),
      { numRuns: 200 },
    );
  });
});

describe('records in parts (PROTOCOL 4.2)', () => {
  it('decodeRecordParts decodes like decodeRecord on the joined plaintext, or fails with the same code', () => {
    const records = fc.oneof(
      fc.uint8Array({ minLength: 1, maxLength: 600 }).map((b) => encodeRecord({ type: RecordType.DATA, bytes: b })),
      fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }).map((n) => encodeRecord({ type: RecordType.PING, received: n })),
      fc.constant(encodeRecord({ type: RecordType.CLOSE, code: 'DW_CLOSED' })),
      fc.uint8Array({ maxLength: 40 }),
    );
    fc.assert(
      fc.property(records, cuts, (plain, c) => {
        const outcome = (fn: () => unknown): unknown => {
          try {
            const r = fn() as Record<string, unknown>;
            return 'parts' in r ? { type: r.type, bytes: hex(concat(r.parts as Uint8Array[])) } : 'bytes' in r ? { type: r.type, bytes: hex(r.bytes as Uint8Array) } : r;
          } catch (err) {
            return (err as DropwireError).code;
          }
        };
        expect(outcome(() => decodeRecordParts(split(plain, c)))).toEqual(outcome(() => decodeRecord(plain)));
      }),
      { numRuns: 300 },
    );
  });
});

describe('byte helpers', () => {
  it('u64 without BigInt reads and writes what the BigInt versions did', () => {
    const values = fc.oneof(fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }), fc.constantFrom(0, 1, 2 ** 32 - 1, 2 ** 32, 2 ** 53 - 1));
    fc.assert(
      fc.property(values, fc.uint8Array({ minLength: 8, maxLength: 8 }), (v, raw) => {
        const a = new Uint8Array(10);
        const b = new Uint8Array(10);
        writeU64(new DataView(a.buffer), 1, v);
        new DataView(b.buffer).setBigUint64(1, BigInt(v));
        expect(hex(a)).toBe(hex(b));
        const c = new Uint8Array(10);
        setU64(c, 1, v);
        expect(hex(c)).toBe(hex(b));
        expect(readU64(new DataView(b.buffer), 1)).toBe(v);
        expect(getU64(b, 1)).toBe(v);
        const big = new DataView(raw.buffer).getBigUint64(0);
        const want = big > BigInt(Number.MAX_SAFE_INTEGER) ? Number.NaN : Number(big);
        expect(readU64(new DataView(raw.buffer), 0)).toBe(want);
        expect(getU64(raw, 0)).toBe(want);
      }),
      { numRuns: 300 },
    );
    // Out-of-range values behave as they always did (BigInt's own checks).
    expect(() => writeU64(new DataView(new ArrayBuffer(8)), 0, 1.5)).toThrow(RangeError);
    expect(() => setU64(new Uint8Array(8), 0, 1.5)).toThrow(RangeError);
  });

  it('toHex is Buffer hex, as one flat string', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 20_000 }), (b) => {
        expect(toHex(b)).toBe(Buffer.from(b).toString('hex'));
      }),
      { numRuns: 50 },
    );
  });

  it('splitTail cuts the last n bytes off any cutting', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 16, maxLength: 100 }), cuts, (b, c) => {
        const [head, tail] = splitTail(split(b, c), TAGLEN);
        expect(hex(concat(head))).toBe(hex(b.subarray(0, b.length - TAGLEN)));
        expect(hex(tail)).toBe(hex(b.subarray(b.length - TAGLEN)));
      }),
      { numRuns: 200 },
    );
  });

  it('ChunkReader take, takeU16 and takeParts agree with the bytes pushed', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 500 }), cuts, fc.array(fc.tuple(fc.nat(2), fc.nat(40)), { maxLength: 40 }), (b, c, ops) => {
        const r = new ChunkReader();
        for (const p of split(b, c)) r.push(p);
        let at = 0;
        for (const [op, n0] of ops) {
          const n = Math.min(n0, r.length);
          if (op === 0) expect(hex(r.take(n))).toBe(hex(b.subarray(at, at + n)));
          else if (op === 1) expect(hex(concat(r.takeParts(n)))).toBe(hex(b.subarray(at, at + n)));
          else if (r.length >= 2) {
            expect(r.takeU16()).toBe((b[at]! << 8) | b[at + 1]!);
            at += 2;
            continue;
          } else continue;
          at += n;
          expect(r.length).toBe(b.length - at);
        }
        expect(hex(concat(r.drain()))).toBe(hex(b.subarray(at)));
        expect(r.length).toBe(0);
      }),
      { numRuns: 300 },
    );
  });

  it('ByteQueue.readInto gives views of the bytes read() gives', () => {
    fc.assert(
      fc.property(fc.array(fc.uint8Array({ maxLength: 50 }), { maxLength: 8 }), fc.nat(), fc.nat(), fc.nat(80), (chunks, drop0, from0, max) => {
        const q = new ByteQueue();
        for (const ch of chunks) q.push(ch);
        const all = concat(chunks);
        q.dropTo(drop0 % (all.length + 1));
        const from = q.base + (from0 % (q.length + 1));
        const parts: Uint8Array[] = [Uint8Array.of(9)];
        const n = q.readInto(from, max, parts);
        expect(n).toBe(Math.min(max, q.end - from));
        expect(hex(concat(parts.slice(1)))).toBe(hex(all.subarray(from, from + n)));
        expect(hex(q.read(from, max))).toBe(hex(all.subarray(from, from + n)));
      }),
      { numRuns: 300 },
    );
  });

  it('smallBytes hands out slices that never overlap', () => {
    const got = Array.from({ length: 2000 }, (_, i) => smallBytes(1 + (i % 300)).fill(i & 0xff));
    got.forEach((b, i) => expect(b.every((x) => x === (i & 0xff))).toBe(true));
    expect(smallBytes(5000).length).toBe(5000);
  });
});
