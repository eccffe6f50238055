import { LOW_ORDER_HEX } from '../fixtures/low-order.js';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { generateKeyPair, MAX_NONCE, TAGLEN, type CryptoBackend } from '../../src/protocol/crypto.js';
import { nobleCrypto } from '../../src/protocol/crypto-noble.js';
import { nodeCrypto } from '../../src/protocol/crypto-node.js';
import { hex } from '../helpers/protocol.js';

const backends: readonly CryptoBackend[] = [nodeCrypto, nobleCrypto];
const bytes = (h: string): Uint8Array => new Uint8Array(Buffer.from(h, 'hex'));

function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  throw new Error('expected a throw');
}

const key32 = fc.uint8Array({ minLength: 32, maxLength: 32 });
const nonce = fc.oneof(
  fc.nat(1000),
  fc.integer({ min: 0, max: MAX_NONCE }),
  fc.constant(MAX_NONCE),
  fc.constant(2 ** 32),
);
const small = (max: number) => fc.uint8Array({ minLength: 0, maxLength: max });

/**
 * Points of small order on curve25519 (u-coordinates), as listed in libsodium's and others' blocklists;
 * X25519 with any of them yields all zeros.
 */
const LOW_ORDER = LOW_ORDER_HEX;

describe('the two backends agree byte for byte', () => {
  it('keyPairFromPrivate', () => {
    fc.assert(
      fc.property(key32, (priv) => {
        const a = nodeCrypto.keyPairFromPrivate(priv);
        const b = nobleCrypto.keyPairFromPrivate(priv);
        expect(hex(a.publicKey)).toBe(hex(b.publicKey));
        expect(hex(a.privateKey)).toBe(hex(priv));
        expect(hex(b.privateKey)).toBe(hex(priv));
      }),
      { numRuns: 100 },
    );
  });

  it('dh, on real public keys and on arbitrary 32-byte strings', () => {
    fc.assert(
      fc.property(key32, key32, key32, (privA, privB, arbitrary) => {
        const pubB = nobleCrypto.keyPairFromPrivate(privB).publicKey;
        const pubA = nodeCrypto.keyPairFromPrivate(privA).publicKey;
        const node = nodeCrypto.dh(privA, pubB);
        expect(hex(node)).toBe(hex(nobleCrypto.dh(privA, pubB)));
        expect(hex(node)).toBe(hex(nodeCrypto.dh(privB, pubA)));
        // Non-canonical u-coordinates (>= p, high bit set) are reduced/masked the same way by both.
        expect(hex(nodeCrypto.dh(privA, arbitrary))).toBe(hex(nobleCrypto.dh(privA, arbitrary)));
      }),
      { numRuns: 100 },
    );
  });

  it('encrypt and decrypt, across backends', () => {
    fc.assert(
      fc.property(key32, nonce, small(64), small(2048), (key, n, ad, plaintext) => {
        const a = nodeCrypto.encrypt(key, n, ad, plaintext);
        const b = nobleCrypto.encrypt(key, n, ad, plaintext);
        expect(a.length).toBe(plaintext.length + TAGLEN);
        expect(hex(a)).toBe(hex(b));
        expect(hex(nodeCrypto.decrypt(key, n, ad, b))).toBe(hex(plaintext));
        expect(hex(nobleCrypto.decrypt(key, n, ad, a))).toBe(hex(plaintext));
      }),
      { numRuns: 200 },
    );
  });

  it('hash and hmac over any split of the input', () => {
    fc.assert(
      fc.property(fc.array(small(200), { maxLength: 5 }), small(100), (parts, key) => {
        expect(hex(nodeCrypto.hash(...parts))).toBe(hex(nobleCrypto.hash(...parts)));
        expect(hex(nodeCrypto.hmac(key, ...parts))).toBe(hex(nobleCrypto.hmac(key, ...parts)));
        const joined = new Uint8Array(Buffer.concat(parts));
        expect(hex(nodeCrypto.hash(joined))).toBe(hex(nodeCrypto.hash(...parts)));
      }),
      { numRuns: 200 },
    );
  });
});

describe.each(backends)('$name backend', (crypto) => {
  it('matches published answers (RFC 7748 6.1, FIPS 180-2 "abc", RFC 4231 case 2)', () => {
    const alice = bytes('77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a');
    const bob = bytes('5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb');
    const alicePair = crypto.keyPairFromPrivate(alice);
    expect(hex(alicePair.publicKey)).toBe('8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a');
    const bobPub = crypto.keyPairFromPrivate(bob).publicKey;
    expect(hex(crypto.dh(alice, bobPub))).toBe('4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742');
    expect(hex(crypto.hash(new TextEncoder().encode('abc')))).toBe(
      'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad',
    );
    const enc = new TextEncoder();
    expect(hex(crypto.hmac(enc.encode('Jefe'), enc.encode('what do ya '), enc.encode('want for nothing?')))).toBe(
      '5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843',
    );
  });

  it('rejects a tampered ciphertext, a wrong ad, a wrong nonce and a short input with DW_BAD_MAC', () => {
    fc.assert(
      fc.property(key32, fc.nat(1000), small(32), small(300), fc.nat(), (key, n, ad, plaintext, where) => {
        const ct = crypto.encrypt(key, n, ad, plaintext);
        const bit = where % (ct.length * 8);
        const bad = ct.slice();
        bad[bit >> 3]! ^= 1 << (bit & 7);
        expect(thrown(() => crypto.decrypt(key, n, ad, bad))).toMatchObject({ code: 'DW_BAD_MAC' });
        const otherAd = new Uint8Array([...ad, 0]);
        expect(thrown(() => crypto.decrypt(key, n, otherAd, ct))).toMatchObject({ code: 'DW_BAD_MAC' });
        expect(thrown(() => crypto.decrypt(key, n + 1, ad, ct))).toMatchObject({ code: 'DW_BAD_MAC' });
        expect(thrown(() => crypto.decrypt(key, n, ad, ct.subarray(0, TAGLEN - 1)))).toMatchObject({
          code: 'DW_BAD_MAC',
        });
      }),
      { numRuns: 100 },
    );
  });

  it('rejects low-order public keys with DW_BAD_KEY', () => {
    const priv = bytes('a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4');
    for (const point of LOW_ORDER) {
      expect(thrown(() => crypto.dh(priv, bytes(point))), point).toMatchObject({ code: 'DW_BAD_KEY' });
    }
  });

  it('rejects keys of the wrong length with DW_BAD_KEY', () => {
    expect(thrown(() => crypto.keyPairFromPrivate(new Uint8Array(31)))).toMatchObject({ code: 'DW_BAD_KEY' });
    expect(thrown(() => crypto.dh(new Uint8Array(32).fill(1), new Uint8Array(33)))).toMatchObject({
      code: 'DW_BAD_KEY',
    });
    expect(thrown(() => crypto.encrypt(new Uint8Array(16), 0, new Uint8Array(0), new Uint8Array(1)))).toMatchObject({
      code: 'DW_BAD_KEY',
    });
    expect(thrown(() => generateKeyPair(crypto, (n) => new Uint8Array(n - 1)))).toMatchObject({ code: 'DW_BAD_KEY' });
  });

  it('refuses nonces outside 0..2^53-1', () => {
    const key = new Uint8Array(32);
    for (const n of [-1, 0.5, 2 ** 53, Number.NaN]) {
      expect(thrown(() => crypto.encrypt(key, n, new Uint8Array(0), new Uint8Array(0)))).toMatchObject({
        code: 'DW_NONCE_EXHAUSTED',
      });
    }
  });

  it('returns plain Uint8Arrays', () => {
    const key = new Uint8Array(32).fill(7);
    const kp = crypto.keyPairFromPrivate(key);
    for (const out of [
      kp.publicKey,
      crypto.dh(key, kp.publicKey),
      crypto.encrypt(key, 1, new Uint8Array(0), new Uint8Array(5)),
      crypto.hash(key),
      crypto.hmac(key, key),
    ]) {
      expect(Object.getPrototypeOf(out)).toBe(Uint8Array.prototype);
    }
  });

  it('generateKeyPair draws 32 bytes from the injected randomness', () => {
    const asked: number[] = [];
    const kp = generateKeyPair(crypto, (n) => {
      asked.push(n);
      return new Uint8Array(n).fill(9);
    });
    expect(asked).toEqual([32]);
    expect(hex(kp.publicKey)).toBe(hex(nobleCrypto.keyPairFromPrivate(new Uint8Array(32).fill(9)).publicKey));
  });
});

describe('node backend key cache', () => {
  it('never uses a stale key when the key array is changed in place', () => {
    const peer = nobleCrypto.keyPairFromPrivate(new Uint8Array(32).fill(3)).publicKey;
    const kp = nodeCrypto.keyPairFromPrivate(new Uint8Array(32).fill(1));
    const before = nodeCrypto.dh(kp.privateKey, peer);
    kp.privateKey.fill(2);
    const after = nodeCrypto.dh(kp.privateKey, peer);
    expect(hex(after)).toBe(hex(nobleCrypto.dh(new Uint8Array(32).fill(2), peer)));
    expect(hex(after)).not.toBe(hex(before));

    const pub = peer.slice();
    nodeCrypto.dh(kp.privateKey, pub);
    pub.set(nobleCrypto.keyPairFromPrivate(new Uint8Array(32).fill(4)).publicKey);
    expect(hex(nodeCrypto.dh(kp.privateKey, pub))).toBe(hex(nobleCrypto.dh(kp.privateKey, pub)));
  });

  it('keyPairFromPrivate copies the input, so wiping the input does not change the pair', () => {
    const input = new Uint8Array(32).fill(5);
    const kp = nodeCrypto.keyPairFromPrivate(input);
    input.fill(0);
    expect(hex(kp.privateKey)).toBe('05'.repeat(32));
  });
});
