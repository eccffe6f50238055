/**
 * The crypto primitives the Noise handshake needs, behind one small interface so that a second backend
 * and known-answer tests plug in. Two implementations: `crypto-node.ts` (node:crypto, the hot path) and
 * `crypto-noble.ts` (@noble, an independent reference). Both must produce identical bytes.
 *
 * Suite: Noise_*_25519_ChaChaPoly_SHA256 (Noise spec rev 34, sections 12.1, 12.3, 12.5).
 */
import { DropwireError } from '../shared/errors.js';

/** Raw 32-byte X25519 keys. `privateKey` is the unclamped scalar as generated; X25519 clamps it. */
export interface KeyPair {
  publicKey: Uint8Array;
  privateKey: Uint8Array;
}

/**
 * A ChaCha20-Poly1305 key bound once (a CipherState's key: PROTOCOL 4.1 records, or one step of the
 * handshake). Binding it once spares every record the key import and checks; the node backend keeps the
 * key only inside OpenSSL, not in the JavaScript heap. Plaintext and ciphertext travel as lists of parts,
 * so a record is never copied together from the stream bytes it carries, nor into a frame, only sealed.
 */
export interface AeadKey {
  /**
   * Seals the concatenation of `plaintext` under the Noise nonce `nonce`. The parts returned, concatenated,
   * are ciphertext || tag, exactly `encrypt(key, nonce, ad, concat(plaintext))`; how they are cut is the
   * backend's affair. The inputs are read before it returns (they may be reused afterwards).
   */
  seal(nonce: number, ad: Uint8Array, plaintext: readonly Uint8Array[]): Uint8Array[];
  /**
   * Opens a ciphertext given as parts (without its tag) and its 16-byte tag. Returns the plaintext as parts,
   * new arrays the caller owns. A bad tag throws DW_BAD_MAC and no plaintext comes out.
   */
  open(nonce: number, ad: Uint8Array, ciphertext: readonly Uint8Array[], tag: Uint8Array): Uint8Array[];
  /** Forgets the key; any later use throws DW_BAD_KEY. */
  destroy(): void;
}

export interface CryptoBackend {
  readonly name: 'node' | 'noble';
  /** Binds a 32-byte key (copied: the caller may wipe its array) for repeated seal and open. */
  aeadKey(key: Uint8Array): AeadKey;
  /** 32 raw bytes -> pair. */
  keyPairFromPrivate(privateKey: Uint8Array): KeyPair;
  /** X25519. An all-zero result (low-order public key) throws DW_BAD_KEY. */
  dh(privateKey: Uint8Array, publicKey: Uint8Array): Uint8Array;
  /** ChaCha20-Poly1305 with the Noise nonce (4 zero bytes + u64 LE counter); returns ciphertext || tag. */
  encrypt(key: Uint8Array, nonce: number, ad: Uint8Array, plaintext: Uint8Array): Uint8Array;
  /** Inverse of `encrypt`; a bad tag (or input shorter than a tag) throws DW_BAD_MAC. */
  decrypt(key: Uint8Array, nonce: number, ad: Uint8Array, ciphertext: Uint8Array): Uint8Array;
  /** SHA-256 of the concatenation of `parts`. */
  hash(...parts: Uint8Array[]): Uint8Array;
  /** HMAC-SHA256 over the concatenation of `parts`. */
  hmac(key: Uint8Array, ...parts: Uint8Array[]): Uint8Array;
}

export const HASHLEN = 32;
export const DHLEN = 32;
export const TAGLEN = 16;
export const KEYLEN = 32;
export const NONCELEN = 12;
/**
 * Noise reserves nonce 2^64-1; a JavaScript number is exact only up to 2^53, so nonces stop at 2^53-1.
 * At one record per microsecond that is 285 years per connection.
 */
export const MAX_NONCE = Number.MAX_SAFE_INTEGER;

/** Codes raised by the crypto layer. */
export const CryptoCode = {
  BAD_KEY: 'DW_BAD_KEY',
  BAD_MAC: 'DW_BAD_MAC',
  NONCE_EXHAUSTED: 'DW_NONCE_EXHAUSTED',
} as const;

export function badKey(message: string, cause?: unknown): DropwireError {
  return new DropwireError(CryptoCode.BAD_KEY, message, cause === undefined ? undefined : { cause });
}

export function badMac(cause?: unknown): DropwireError {
  return new DropwireError(
    CryptoCode.BAD_MAC,
    'authentication tag mismatch',
    cause === undefined ? undefined : { cause },
  );
}

export function checkKeyLength(what: string, key: Uint8Array, length = 32): void {
  if (key.length !== length) throw badKey(`${what} must be ${length} bytes, got ${key.length}`);
}

/**
 * Writes the ChaChaPoly nonce of Noise spec 12.3 (32 zero bits, then the counter as u64 little-endian)
 * into the 12-byte `out`.
 */
export function writeNoiseNonce(out: Uint8Array, nonce: number): void {
  if (!Number.isSafeInteger(nonce) || nonce < 0) {
    throw new DropwireError(CryptoCode.NONCE_EXHAUSTED, `nonce ${nonce} is outside 0..2^53-1`);
  }
  const lo = nonce % 0x1_0000_0000;
  const hi = (nonce - lo) / 0x1_0000_0000;
  out[0] = 0;
  out[1] = 0;
  out[2] = 0;
  out[3] = 0;
  out[4] = lo & 0xff;
  out[5] = (lo >>> 8) & 0xff;
  out[6] = (lo >>> 16) & 0xff;
  out[7] = lo >>> 24;
  out[8] = hi & 0xff;
  out[9] = (hi >>> 8) & 0xff;
  out[10] = (hi >>> 16) & 0xff;
  out[11] = hi >>> 24;
}

/** Total length of `parts`. */
export function partsLength(parts: readonly Uint8Array[]): number {
  let n = 0;
  for (let i = 0; i < parts.length; i++) n += parts[i]!.length;
  return n;
}

export function destroyedKey(): DropwireError {
  return badKey('the cipher key was destroyed');
}

/** True when every byte is zero; runs over all bytes regardless of content. */
export function isAllZero(bytes: Uint8Array): boolean {
  let acc = 0;
  for (let i = 0; i < bytes.length; i++) acc |= bytes[i]!;
  return acc === 0;
}

/** A fresh key pair from `random(32)`; randomness is injected (STYLE rule 4). */
export function generateKeyPair(crypto: CryptoBackend, random: (n: number) => Uint8Array): KeyPair {
  const privateKey = random(DHLEN);
  checkKeyLength('random(32) result', privateKey, DHLEN);
  return crypto.keyPairFromPrivate(privateKey);
}
