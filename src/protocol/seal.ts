/**
 * PROTOCOL 12: a file sealed end to end to the recipient device's X25519 key. The relay stores and forwards
 * the envelope only; the receiving agent opens it before its rule runs.
 *
 *   envelope = "DWS1" ‖ ephemeral public key (32) ‖ segment 0 ‖ … ‖ segment n-1
 *   segment i = XChaCha20-Poly1305(key, prefix19 ‖ u32be(i) ‖ final, ad, plaintext bytes [i·64 KiB, …))
 *
 * A STREAM-like construction: every segment but the last holds exactly SEAL_SEGMENT bytes of plaintext and
 * its nonce says "not final"; the last one says "final", so truncation, reordering and extension all fail.
 * Pure: the ephemeral private key is passed in (randomness is the caller's).
 */
import { xchacha20poly1305 } from '@noble/ciphers/chacha.js';
import { x25519 } from '@noble/curves/ed25519.js';
import { hkdf } from '@noble/hashes/hkdf.js';
import { sha256 } from '@noble/hashes/sha2.js';
import { concat } from './bytes.js';
import { ProtocolError } from './errors.js';

/** "DWS1": dropwire seal, version 1. */
export const SEAL_MAGIC = Uint8Array.of(0x44, 0x57, 0x53, 0x31);
export const SEAL_HEADER = 36;
/** Plaintext bytes per segment (all but the last, which holds 0 to this many). */
export const SEAL_SEGMENT = 65536;
export const SEAL_TAG = 16;
const SEALED_SEGMENT = SEAL_SEGMENT + SEAL_TAG;
const INFO = new TextEncoder().encode('dropwire seal v1');
const enc = new TextEncoder();

export const BAD_SEAL = 'DW_BAD_SEAL';
const badSeal = (why: string, cause?: unknown) => new ProtocolError(BAD_SEAL, `sealed file: ${why}`, { cause });

/** PROTOCOL 12.3: u8 sender length ‖ sender ‖ u16be file-name length ‖ file name (UTF-8). */
export function sealAd(sender: string, filename: string): Uint8Array {
  const s = enc.encode(sender);
  const f = enc.encode(filename);
  if (s.length < 1 || s.length > 255) throw badSeal('sender name must be 1 to 255 bytes');
  if (f.length < 1 || f.length > 65535) throw badSeal('file name must be 1 to 65535 bytes');
  const ad = new Uint8Array(3 + s.length + f.length);
  ad[0] = s.length;
  ad.set(s, 1);
  ad[1 + s.length] = f.length >> 8;
  ad[2 + s.length] = f.length & 0xff;
  ad.set(f, 3 + s.length);
  return ad;
}

/** The envelope size for `plain` bytes of plaintext: there is always at least one (final) segment. */
export function sealedSize(plain: number): number {
  const segments = Math.max(1, Math.ceil(plain / SEAL_SEGMENT));
  return SEAL_HEADER + plain + segments * SEAL_TAG;
}

/** The plaintext size of an envelope of `sealed` bytes, or undefined when no plaintext seals to that size. */
export function plainSize(sealed: number): number | undefined {
  const body = sealed - SEAL_HEADER;
  if (body < SEAL_TAG) return undefined;
  const plain = body - Math.ceil(body / SEALED_SEGMENT) * SEAL_TAG;
  return plain >= 0 && sealedSize(plain) === sealed ? plain : undefined;
}

/** PROTOCOL 12.2: key (32) and nonce prefix (19) from the shared secret, both public keys in the salt. */
function schedule(shared: Uint8Array, ephemeralPublic: Uint8Array, recipientPublic: Uint8Array): { key: Uint8Array; prefix: Uint8Array } {
  if (shared.every((b) => b === 0)) throw badSeal('low-order public key');
  const okm = hkdf(sha256, shared, concat([ephemeralPublic, recipientPublic]), INFO, 51);
  return { key: okm.subarray(0, 32), prefix: okm.subarray(32, 51) };
}

function nonce(prefix: Uint8Array, index: number, final: boolean): Uint8Array {
  if (index > 0xffffffff) throw badSeal('too many segments');
  const n = new Uint8Array(24);
  n.set(prefix, 0);
  new DataView(n.buffer).setUint32(19, index);
  n[23] = final ? 1 : 0;
  return n;
}

/**
 * Seals a stream: `push` any chunks, then `finish`; each returns the envelope bytes ready so far. Holds at
 * most one segment of plaintext.
 */
export class Sealer {
  private readonly key: Uint8Array;
  private readonly prefix: Uint8Array;
  private readonly ad: Uint8Array;
  private readonly header: Uint8Array;
  private held: Uint8Array[] = [];
  private heldBytes = 0;
  private index = 0;
  private started = false;
  private done = false;

  constructor(o: { recipientPublic: Uint8Array; ephemeralPrivate: Uint8Array; sender: string; filename: string }) {
    if (o.recipientPublic.length !== 32 || o.ephemeralPrivate.length !== 32) throw badSeal('keys must be 32 bytes');
    const ephemeralPublic = x25519.getPublicKey(o.ephemeralPrivate);
    let shared: Uint8Array;
    try {
      shared = x25519.getSharedSecret(o.ephemeralPrivate, o.recipientPublic);
    } catch (err) {
      throw badSeal('bad recipient key', err);
    }
    ({ key: this.key, prefix: this.prefix } = schedule(shared, ephemeralPublic, o.recipientPublic));
    this.ad = sealAd(o.sender, o.filename);
    this.header = concat([SEAL_MAGIC, ephemeralPublic]);
  }

  push(chunk: Uint8Array): Uint8Array[] {
    if (this.done) throw badSeal('push after finish');
    const out: Uint8Array[] = this.start();
    let rest = chunk;
    while (rest.length > 0) {
      // A full segment is sealed as "not final" only once more bytes are known to follow.
      if (this.heldBytes === SEAL_SEGMENT) out.push(this.seal(false));
      const take = Math.min(rest.length, SEAL_SEGMENT - this.heldBytes);
      this.held.push(rest.subarray(0, take));
      this.heldBytes += take;
      rest = rest.subarray(take);
    }
    return out;
  }

  /** The last segment (final flag set). */
  finish(): Uint8Array[] {
    if (this.done) throw badSeal('finish twice');
    const out = this.start();
    out.push(this.seal(true));
    this.done = true;
    return out;
  }

  private start(): Uint8Array[] {
    if (this.started) return [];
    this.started = true;
    return [this.header];
  }

  private seal(final: boolean): Uint8Array {
    const plain = concat(this.held);
    this.held = [];
    this.heldBytes = 0;
    const box = xchacha20poly1305(this.key, nonce(this.prefix, this.index++, final), this.ad).encrypt(plain);
    return box;
  }
}

/**
 * Opens a stream of `sealedBytes` envelope bytes: `push` chunks, get plaintext back; `finish` checks that the
 * final segment came. A tampered, truncated or extended envelope, or one for another sender or file name,
 * throws DW_BAD_SEAL; nothing of a segment is returned before its tag checked.
 */
export class Opener {
  private readonly recipientPrivate: Uint8Array;
  private readonly recipientPublic: Uint8Array;
  private readonly ad: Uint8Array;
  private readonly total: number;
  private key: Uint8Array | undefined;
  private prefix: Uint8Array | undefined;
  private held: Uint8Array[] = [];
  private heldBytes = 0;
  private consumed = 0;
  private index = 0;
  private done = false;

  constructor(o: { recipientPrivate: Uint8Array; sender: string; filename: string; sealedBytes: number }) {
    if (plainSize(o.sealedBytes) === undefined) throw badSeal(`no envelope is ${o.sealedBytes} bytes long`);
    this.recipientPrivate = o.recipientPrivate;
    this.recipientPublic = x25519.getPublicKey(o.recipientPrivate);
    this.ad = sealAd(o.sender, o.filename);
    this.total = o.sealedBytes;
  }

  push(chunk: Uint8Array): Uint8Array[] {
    if (this.consumed + this.heldBytes + chunk.length > this.total) throw badSeal('longer than announced');
    this.held.push(chunk);
    this.heldBytes += chunk.length;
    const out: Uint8Array[] = [];
    if (!this.key) {
      if (this.heldBytes < SEAL_HEADER) return out;
      const head = this.take(SEAL_HEADER);
      if (!head.subarray(0, 4).every((b, i) => b === SEAL_MAGIC[i])) throw badSeal('not a dropwire envelope (magic)');
      const eph = head.slice(4, 36);
      let shared: Uint8Array;
      try {
        shared = x25519.getSharedSecret(this.recipientPrivate, eph);
      } catch (err) {
        throw badSeal('bad ephemeral key', err);
      }
      ({ key: this.key, prefix: this.prefix } = schedule(shared, eph, this.recipientPublic));
    }
    for (;;) {
      const left = this.total - this.consumed;
      const final = left <= SEALED_SEGMENT;
      const want = final ? left : SEALED_SEGMENT;
      if (this.heldBytes < want || want === 0 || this.done) return out;
      const box = this.take(want);
      try {
        out.push(xchacha20poly1305(this.key, nonce(this.prefix!, this.index++, final), this.ad).decrypt(box));
      } catch (err) {
        throw badSeal(`segment ${this.index - 1} failed authentication`, err);
      }
      if (final) this.done = true;
    }
  }

  /** Throws DW_BAD_SEAL unless the final segment was opened. */
  finish(): void {
    if (!this.done) throw badSeal('truncated: the final segment is missing');
  }

  private take(n: number): Uint8Array {
    const all = concat(this.held);
    const head = all.subarray(0, n);
    const rest = all.subarray(n);
    this.held = rest.length > 0 ? [rest] : [];
    this.heldBytes = rest.length;
    this.consumed += n;
    return head;
  }
}
