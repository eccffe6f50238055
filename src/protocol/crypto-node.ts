/**
 * The node:crypto backend (OpenSSL): the hot path. X25519 goes through KeyObjects imported from raw
 * bytes, ChaCha20-Poly1305 through createCipheriv. Outputs are plain Uint8Array views, never Buffers
 * (Buffer#slice does not copy, which would surprise callers of a Uint8Array API).
 */
import {
  createCipheriv,
  createDecipheriv,
  createHash,
  createHmac,
  createPrivateKey,
  createPublicKey,
  createSecretKey,
  diffieHellman,
  timingSafeEqual,
  type KeyObject,
} from 'node:crypto';
import {
  badKey,
  badMac,
  checkKeyLength,
  destroyedKey,
  DHLEN,
  isAllZero,
  NONCELEN,
  partsLength,
  TAGLEN,
  writeNoiseNonce,
  type AeadKey,
  type CryptoBackend,
  type KeyPair,
} from './crypto.js';

/** DER headers of an X25519 PKCS#8 private key and SPKI public key (RFC 8410), before the 32 raw bytes. */
const PKCS8_X25519_PREFIX = Uint8Array.of(
  0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20,
);
const SPKI_X25519_PREFIX = Uint8Array.of(0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x03, 0x21, 0x00);

function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function asBytes(buf: Buffer): Uint8Array {
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
}

/**
 * Raw key import ('raw-private'/'raw-public') is faster than DER and arrived during Node 24's life;
 * probe it once and fall back to DER on runtimes without it.
 */
const RAW_KEYS: boolean = (() => {
  try {
    createPrivateKey({ key: Buffer.alloc(32, 1), format: 'raw-private', asymmetricKeyType: 'x25519' });
    return true;
  } catch {
    return false;
  }
})();

function importPrivate(raw: Uint8Array): KeyObject {
  if (RAW_KEYS) return createPrivateKey({ key: asBuffer(raw), format: 'raw-private', asymmetricKeyType: 'x25519' });
  const der = Buffer.allocUnsafeSlow(PKCS8_X25519_PREFIX.length + DHLEN);
  der.set(PKCS8_X25519_PREFIX, 0);
  der.set(raw, PKCS8_X25519_PREFIX.length);
  try {
    return createPrivateKey({ key: der, format: 'der', type: 'pkcs8' });
  } finally {
    der.fill(0);
  }
}

function importPublic(raw: Uint8Array): KeyObject {
  if (RAW_KEYS) return createPublicKey({ key: asBuffer(raw), format: 'raw-public', asymmetricKeyType: 'x25519' });
  const der = Buffer.allocUnsafe(SPKI_X25519_PREFIX.length + DHLEN);
  der.set(SPKI_X25519_PREFIX, 0);
  der.set(raw, SPKI_X25519_PREFIX.length);
  return createPublicKey({ key: der, format: 'der', type: 'spki' });
}

function exportPublic(key: KeyObject): Uint8Array {
  if (RAW_KEYS) return asBytes(key.export({ format: 'raw-public' }));
  return asBytes(key.export({ format: 'der', type: 'spki' })).slice(SPKI_X25519_PREFIX.length);
}

/**
 * Importing an X25519 private key costs a full scalar multiplication (OpenSSL derives the public key),
 * as much as the DH itself, and every Noise key is used in two DHs (IK: e in es+ee, s in ss+se), the
 * static key in every handshake. So KeyObjects are cached per key array, weakly (the entry lives no
 * longer than the caller's array) and checked against a copy of the bytes on every hit, so mutating or
 * wiping the array in place can never make a stale key be used.
 */
interface CachedKey {
  readonly bytes: Uint8Array;
  readonly key: KeyObject;
}
const privateKeys = new WeakMap<Uint8Array, CachedKey>();
const publicKeys = new WeakMap<Uint8Array, CachedKey>();

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

function cachedKey(
  cache: WeakMap<Uint8Array, CachedKey>,
  raw: Uint8Array,
  make: (raw: Uint8Array) => KeyObject,
): KeyObject {
  const hit = cache.get(raw);
  if (hit !== undefined && sameBytes(hit.bytes, raw)) return hit.key;
  const key = make(raw);
  cache.set(raw, { bytes: raw.slice(), key });
  return key;
}

const privateKeyObject = (raw: Uint8Array): KeyObject => cachedKey(privateKeys, raw, importPrivate);
const publicKeyObject = (raw: Uint8Array): KeyObject => cachedKey(publicKeys, raw, importPublic);

/**
 * createCipheriv and createHmac are about five times faster given a secret KeyObject than given raw key
 * bytes (Node 24: ~3 us against ~19 us; making the KeyObject costs ~1.3 us). A CipherState seals every
 * record of a connection with one key array, so cipher KeyObjects are cached like the X25519 ones.
 */
const secretKeys = new WeakMap<Uint8Array, CachedKey>();
const secretKeyObject = (raw: Uint8Array): KeyObject => cachedKey(secretKeys, raw, (k) => createSecretKey(k));

/** Scratch nonce: createCipheriv copies the IV synchronously, and the nonce is not secret. */
const nonceScratch = Buffer.alloc(NONCELEN);
const EMPTY = Buffer.alloc(0);
/** Small multi-part plaintexts are joined here before sealing: update() copies its input at once. */
const joinScratch = Buffer.alloc(1024);
/** One options object for every cipher: the tag length is the suite's, not a per-call choice. */
const CIPHER_OPTIONS = { authTagLength: TAGLEN } as const;

/**
 * A bound key: the secret KeyObject is made once (the key then lives only inside OpenSSL), so a record
 * costs one createCipheriv and no cache lookup or key comparison. Each part goes through its own
 * `update()` (ChaCha20 and Poly1305 carry partial blocks over between calls), so nothing is joined.
 */
class NodeAeadKey implements AeadKey {
  #key: KeyObject | undefined;

  constructor(key: Uint8Array) {
    checkKeyLength('cipher key', key);
    this.#key = createSecretKey(key); // copies the bytes
  }

  seal(nonce: number, ad: Uint8Array, plaintext: readonly Uint8Array[]): Uint8Array[] {
    const key = this.#key;
    if (key === undefined) throw destroyedKey();
    writeNoiseNonce(nonceScratch, nonce);
    const cipher = createCipheriv('chacha20-poly1305', key, nonceScratch, CIPHER_OPTIONS);
    const n = partsLength(plaintext);
    if (ad.length > 0) cipher.setAAD(ad, { plaintextLength: n });
    let one = plaintext.length === 1 ? plaintext[0] : undefined;
    const joined = plaintext.length > 1 && n <= joinScratch.length;
    if (joined) {
      // A small record in parts (a type byte and a few bytes): one update() costs less than several.
      let o = 0;
      for (const p of plaintext) {
        joinScratch.set(p, o);
        o += p.length;
      }
      one = joinScratch.subarray(0, n);
    }
    if (one !== undefined || n === 0) {
      // The usual case, in arrays of exactly the size needed: a heartbeat allocates little.
      const ct = n > 0 ? asBytes(cipher.update(one!)) : undefined;
      if (joined) joinScratch.fill(0, 0, n); // no plaintext left lying around
      cipher.final();
      const tag = asBytes(cipher.getAuthTag());
      return ct === undefined ? [tag] : [ct, tag];
    }
    const out: Uint8Array[] = [];
    for (const p of plaintext) if (p.length > 0) out.push(asBytes(cipher.update(p)));
    cipher.final();
    out.push(asBytes(cipher.getAuthTag()));
    return out;
  }

  open(nonce: number, ad: Uint8Array, ciphertext: readonly Uint8Array[], tag: Uint8Array): Uint8Array[] {
    const key = this.#key;
    if (key === undefined) throw destroyedKey();
    if (tag.length !== TAGLEN) throw badMac();
    writeNoiseNonce(nonceScratch, nonce);
    const decipher = createDecipheriv('chacha20-poly1305', key, nonceScratch, CIPHER_OPTIONS);
    decipher.setAuthTag(tag);
    if (ad.length > 0) decipher.setAAD(ad, { plaintextLength: partsLength(ciphertext) });
    let out: Uint8Array[];
    if (ciphertext.length === 1 && ciphertext[0]!.length > 0) out = [asBytes(decipher.update(ciphertext[0]!))];
    else {
      out = [];
      for (const c of ciphertext) if (c.length > 0) out.push(asBytes(decipher.update(c)));
    }
    try {
      decipher.final();
    } catch (err) {
      for (const p of out) p.fill(0); // unauthenticated plaintext must not leak out
      throw badMac(err);
    }
    return out;
  }

  destroy(): void {
    this.#key = undefined;
  }
}

export const nodeCrypto: CryptoBackend = {
  name: 'node',

  aeadKey(key: Uint8Array): AeadKey {
    return new NodeAeadKey(key);
  },

  keyPairFromPrivate(privateKey: Uint8Array): KeyPair {
    checkKeyLength('X25519 private key', privateKey, DHLEN);
    const own = privateKey.slice();
    let key: KeyObject;
    try {
      key = privateKeyObject(own);
    } catch (err) {
      throw badKey('X25519 private key rejected', err);
    }
    return { publicKey: exportPublic(createPublicKey(key)), privateKey: own };
  },

  dh(privateKey: Uint8Array, publicKey: Uint8Array): Uint8Array {
    checkKeyLength('X25519 private key', privateKey, DHLEN);
    checkKeyLength('X25519 public key', publicKey, DHLEN);
    let shared: Buffer;
    try {
      shared = diffieHellman({ privateKey: privateKeyObject(privateKey), publicKey: publicKeyObject(publicKey) });
    } catch (err) {
      // OpenSSL refuses an all-zero shared secret (RFC 7748 6.1) with a derivation failure.
      throw badKey('X25519 rejected the public key (low-order point?)', err);
    }
    const out = asBytes(shared);
    if (isAllZero(out)) throw badKey('X25519 result is all zero (low-order public key)');
    return out;
  },

  encrypt(key: Uint8Array, nonce: number, ad: Uint8Array, plaintext: Uint8Array): Uint8Array {
    checkKeyLength('cipher key', key);
    writeNoiseNonce(nonceScratch, nonce);
    const cipher = createCipheriv('chacha20-poly1305', secretKeyObject(key), nonceScratch, {
      authTagLength: TAGLEN,
    });
    if (ad.length > 0) cipher.setAAD(ad, { plaintextLength: plaintext.length });
    const out = new Uint8Array(plaintext.length + TAGLEN);
    out.set(cipher.update(plaintext), 0);
    cipher.final();
    out.set(cipher.getAuthTag(), plaintext.length);
    return out;
  },

  decrypt(key: Uint8Array, nonce: number, ad: Uint8Array, ciphertext: Uint8Array): Uint8Array {
    checkKeyLength('cipher key', key);
    if (ciphertext.length < TAGLEN) throw badMac();
    writeNoiseNonce(nonceScratch, nonce);
    const n = ciphertext.length - TAGLEN;
    const decipher = createDecipheriv('chacha20-poly1305', secretKeyObject(key), nonceScratch, {
      authTagLength: TAGLEN,
    });
    decipher.setAuthTag(ciphertext.subarray(n));
    if (ad.length > 0) decipher.setAAD(ad, { plaintextLength: n });
    const body = n > 0 ? decipher.update(ciphertext.subarray(0, n)) : EMPTY;
    try {
      decipher.final();
    } catch (err) {
      body.fill(0); // unauthenticated plaintext must not leak out
      throw badMac(err);
    }
    return asBytes(body);
  },

  hash(...parts: Uint8Array[]): Uint8Array {
    const h = createHash('sha256');
    for (const p of parts) h.update(p);
    return asBytes(h.digest());
  },

  hmac(key: Uint8Array, ...parts: Uint8Array[]): Uint8Array {
    // HKDF keys change on every call: a fresh KeyObject, not cached (still faster than raw bytes).
    const h = createHmac('sha256', createSecretKey(key));
    for (const p of parts) h.update(p);
    return asBytes(h.digest());
  },
};
