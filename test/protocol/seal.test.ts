import { randomBytes } from 'node:crypto';
import { x25519 } from '@noble/curves/ed25519.js';
import { describe, expect, it } from 'vitest';
import { concat } from '../../src/protocol/bytes.js';
import { Opener, plainSize, SEAL_SEGMENT, sealAd, sealedSize, Sealer } from '../../src/protocol/seal.js';

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');
const fromHex = (s: string) => new Uint8Array(Buffer.from(s.replace(/\s+/g, ''), 'hex'));
const text = (s: string) => new TextEncoder().encode(s);

const recipientPrivate = new Uint8Array(32).fill(0x55);
const recipientPublic = x25519.getPublicKey(recipientPrivate);

function seal(plain: Uint8Array, o: { sender?: string; filename?: string; chunk?: number; eph?: Uint8Array } = {}): Uint8Array {
  const s = new Sealer({ recipientPublic, ephemeralPrivate: o.eph ?? new Uint8Array(randomBytes(32)), sender: o.sender ?? 'till-1', filename: o.filename ?? 'z.csv' });
  const out: Uint8Array[] = [];
  const step = o.chunk ?? plain.length;
  for (let i = 0; i < plain.length; i += Math.max(1, step)) out.push(...s.push(plain.subarray(i, i + Math.max(1, step))));
  out.push(...s.finish());
  return concat(out);
}

function open(env: Uint8Array, o: { sender?: string; filename?: string; chunk?: number } = {}): Uint8Array {
  const op = new Opener({ recipientPrivate, sender: o.sender ?? 'till-1', filename: o.filename ?? 'z.csv', sealedBytes: env.length });
  const out: Uint8Array[] = [];
  const step = Math.max(1, o.chunk ?? env.length);
  for (let i = 0; i < env.length; i += step) out.push(...op.push(env.subarray(i, i + step)));
  op.finish();
  return concat(out);
}

describe('sealed files (PROTOCOL 12)', () => {
  it('gives the test vector of PROTOCOL 12.5 byte for byte, and opens it', () => {
    expect(hex(recipientPublic)).toBe('38ab664bd86f77d7e66bdd9ae0792913a94fd8b33a1260027e4b46c1f4884c67');
    expect(hex(sealAd('till-1', 'z.csv'))).toBe('0674696c6c2d3100057a2e637376');
    const env = seal(text('a;b\n1;2\n'), { eph: new Uint8Array(32).fill(0x66) });
    expect(hex(env)).toBe(
      hex(
        fromHex(`44 57 53 31 21 9e 4d 80 0d a9 68 d2 a5 fc b0 09 c7 84 f4 74 6c 71 38 ed b9 ee 48 44 b7 39 e8 30
                 b0 5c f4 24 5a 26 55 28 73 06 9b 47 f3 62 7d dc d6 55 fa 96 78 7a 6b 2e 79 a6 98 06`),
      ),
    );
    expect(new TextDecoder().decode(open(env))).toBe('a;b\n1;2\n');
  });

  it('round-trips every size around the segment boundary, whatever the chunking on either side', () => {
    for (const n of [0, 1, SEAL_SEGMENT - 1, SEAL_SEGMENT, SEAL_SEGMENT + 1, 2 * SEAL_SEGMENT, 3 * SEAL_SEGMENT + 17]) {
      const plain = new Uint8Array(randomBytes(n));
      for (const [a, b] of [[n, n], [1000, 7], [SEAL_SEGMENT, SEAL_SEGMENT + 16], [65535, 100_000]] as const) {
        if (n > 70_000 && (a < 100 || b < 100)) continue; // byte-sized steps on big inputs only cost time
        const env = seal(plain, { chunk: a });
        expect(env.length).toBe(sealedSize(n));
        expect(plainSize(env.length)).toBe(n);
        expect(hex(open(env, { chunk: b }))).toBe(hex(plain));
      }
    }
  });

  it('refuses a flipped bit anywhere, a truncation at a segment boundary, and another sender or file name', () => {
    const plain = new Uint8Array(randomBytes(2 * SEAL_SEGMENT + 5));
    const env = seal(plain);
    for (const at of [0, 3, 4, 35, 36, 100, SEAL_SEGMENT + 36 + 15, SEAL_SEGMENT + 36 + 16 + 3, env.length - 1]) {
      const bad = env.slice();
      bad[at]! ^= 0x01;
      expect(() => open(bad), `bit flipped at ${at}`).toThrow(expect.objectContaining({ code: 'DW_BAD_SEAL' }));
    }
    // Two whole segments, the second flagged "not final": the missing end is detected.
    const cut = env.subarray(0, 36 + 2 * (SEAL_SEGMENT + 16));
    expect(() => open(cut)).toThrow(expect.objectContaining({ code: 'DW_BAD_SEAL' }));
    expect(() => open(env, { sender: 'till-2' })).toThrow(expect.objectContaining({ code: 'DW_BAD_SEAL' }));
    expect(() => open(env, { filename: 'y.csv' })).toThrow(expect.objectContaining({ code: 'DW_BAD_SEAL' }));
    // Sizes no plaintext seals to.
    for (const n of [0, 35, 36 + 15, sealedSize(SEAL_SEGMENT) + 5]) expect(plainSize(n)).toBeUndefined();
  });

  it('uses a fresh ephemeral key per file: the same file seals differently', () => {
    const plain = text('same bytes');
    expect(hex(seal(plain))).not.toBe(hex(seal(plain)));
  });
});
