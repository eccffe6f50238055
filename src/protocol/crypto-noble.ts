/**
 * The @noble backend: audited pure-JavaScript primitives, an implementation independent of OpenSSL.
 * It is the reference the node backend is checked against, and a fallback where node:crypto lacks
 * chacha20-poly1305 (some FIPS builds).
 */
import { chacha20poly1305 } from '@noble/ciphers/chacha.js';
import { x25519 } from '@noble/curves/ed25519.js';
import { hmac } from '@noble/hashes/hmac.js';
import { sha256 } from '@noble/hashes/sha2.js';
import { concat } from './bytes.js';
import {
  badKey,
  badMac,
  checkKeyLength,
  destroyedKey,
  DHLEN,
  isAllZero,
  NONCELEN,
  TAGLEN,
  writeNoiseNonce,
  type AeadKey,
  type CryptoBackend,
  type KeyPair,
} from './crypto.js';

function nonceBytes(nonce: number): Uint8Array {
  const out = new Uint8Array(NONCELEN);
  writeNoiseNonce(out, nonce);
  return out;
}

/** The reference: parts are simply joined (noble's AEAD takes one contiguous input). */
class NobleAeadKey implements AeadKey {
  #key: Uint8Array | undefined;

  constructor(key: Uint8Array) {
    checkKeyLength('cipher key', key);
    this.#key = key.slice();
  }

  seal(nonce: number, ad: Uint8Array, plaintext: readonly Uint8Array[]): Uint8Array[] {
    const key = this.#key;
    if (key === undefined) throw destroyedKey();
    return [chacha20poly1305(key, nonceBytes(nonce), ad).encrypt(plaintext.length === 1 ? plaintext[0]! : concat(plaintext))];
  }

  open(nonce: number, ad: Uint8Array, ciphertext: readonly Uint8Array[], tag: Uint8Array): Uint8Array[] {
    const key = this.#key;
    if (key === undefined) throw destroyedKey();
    if (tag.length !== TAGLEN) throw badMac();
    try {
      return [chacha20poly1305(key, nonceBytes(nonce), ad).decrypt(concat([...ciphertext, tag]))];
    } catch (err) {
      throw badMac(err);
    }
  }

  destroy(): void {
    this.#key?.fill(0);
    this.#key = undefined;
  }
}

export const nobleCrypto: CryptoBackend = {
  name: 'noble',

  aeadKey(key: Uint8Array): AeadKey {
    return new NobleAeadKey(key);
  },

  keyPairFromPrivate(privateKey: Uint8Array): KeyPair {
    checkKeyLength('X25519 private key', privateKey, DHLEN);
    const own = privateKey.slice();
    return { publicKey: x25519.getPublicKey(own), privateKey: own };
  },

  dh(privateKey: Uint8Array, publicKey: Uint8Array): Uint8Array {
    checkKeyLength('X25519 private key', privateKey, DHLEN);
    checkKeyLength('X25519 public key', publicKey, DHLEN);
    let shared: Uint8Array;
    try {
      shared = x25519.getSharedSecret(privateKey, publicKey);
    } catch (err) {
      // noble refuses an all-zero shared secret (RFC 7748 6.1).
      throw badKey('X25519 rejected the public key (low-order point?)', err);
    }
    if (isAllZero(shared)) throw badKey('X25519 result is all zero (low-order public key)');
    return shared;
  },

  encrypt(key: Uint8Array, nonce: number, ad: Uint8Array, plaintext: Uint8Array): Uint8Array {
    checkKeyLength('cipher key', key);
    return chacha20poly1305(key, nonceBytes(nonce), ad).encrypt(plaintext);
  },

  decrypt(key: Uint8Array, nonce: number, ad: Uint8Array, ciphertext: Uint8Array): Uint8Array {
    checkKeyLength('cipher key', key);
    if (ciphertext.length < TAGLEN) throw badMac();
    const aead = chacha20poly1305(key, nonceBytes(nonce), ad);
    try {
      return aead.decrypt(ciphertext);
    } catch (err) {
      throw badMac(err);
    }
  },

  hash(...parts: Uint8Array[]): Uint8Array {
    const h = sha256.create();
    for (const p of parts) h.update(p);
    return h.digest();
  },

  hmac(key: Uint8Array, ...parts: Uint8Array[]): Uint8Array {
    const h = hmac.create(sha256, key);
    for (const p of parts) h.update(p);
    return h.digest();
  },
};
