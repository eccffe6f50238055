/**
 * The Noise framework objects (Noise spec revision 34, section 5) for exactly one protocol:
 * Noise_IK_25519_ChaChaPoly_SHA256. Synchronous and pure: bytes in, bytes out; the crypto backend, the
 * ephemeral key or the randomness are injected.
 *
 *   IK:
 *     <- s
 *     ...
 *     -> e, es, s, ss
 *     <- e, ee, se
 *
 * IK's first message is replayable by design (spec 7.7: its payload has destination property 2 at best
 * and no replay protection): a recorded message 1 is accepted again by the responder. A replayed
 * handshake cannot complete for the attacker (it lacks the initiator's e and s), but the session layer
 * must not act on message 1's payload as if it proved freshness.
 */
import { concat, splitTail } from './bytes.js';
import { DropwireError } from '../shared/errors.js';
import {
  badMac,
  checkKeyLength,
  CryptoCode,
  DHLEN,
  generateKeyPair,
  HASHLEN,
  KEYLEN,
  MAX_NONCE,
  partsLength,
  TAGLEN,
  type AeadKey,
  type CryptoBackend,
  type KeyPair,
} from './crypto.js';

export const PROTOCOL_NAME = 'Noise_IK_25519_ChaChaPoly_SHA256';

/** Noise spec 3: every Noise message, handshake or transport, is at most 65535 bytes. */
export const MAX_NOISE_MESSAGE = 65535;
/** The largest plaintext one transport message can carry. */
export const MAX_TRANSPORT_PLAINTEXT = MAX_NOISE_MESSAGE - TAGLEN;
/** Message 1 is e (32) + encrypted s (32 + 16) + payload tag (16); message 2 is e (32) + payload tag (16). */
export const IK_MSG1_OVERHEAD = DHLEN + (DHLEN + TAGLEN) + TAGLEN;
export const IK_MSG2_OVERHEAD = DHLEN + TAGLEN;
export const MAX_MSG1_PAYLOAD = MAX_NOISE_MESSAGE - IK_MSG1_OVERHEAD;
export const MAX_MSG2_PAYLOAD = MAX_NOISE_MESSAGE - IK_MSG2_OVERHEAD;

/** Every code this module raises (besides the crypto codes it wraps as causes). */
export const NoiseCode = {
  ...CryptoCode,
  HANDSHAKE_STATE: 'DW_HANDSHAKE_STATE',
  HANDSHAKE_FAILED: 'DW_HANDSHAKE_FAILED',
  MESSAGE_TOO_LARGE: 'DW_MESSAGE_TOO_LARGE',
  MESSAGE_TRUNCATED: 'DW_MESSAGE_TRUNCATED',
} as const;

const EMPTY = new Uint8Array(0);
const BYTE_1 = Uint8Array.of(1);
const BYTE_2 = Uint8Array.of(2);

function stateError(message: string): DropwireError {
  return new DropwireError(NoiseCode.HANDSHAKE_STATE, message);
}

function tooLarge(what: string, length: number, max: number): DropwireError {
  return new DropwireError(NoiseCode.MESSAGE_TOO_LARGE, `${what} is ${length} bytes, more than ${max}`);
}

/**
 * HKDF of Noise spec 4.3 with two outputs (IK without PSK never needs a third):
 * temp = HMAC(ck, ikm); out1 = HMAC(temp, 0x01); out2 = HMAC(temp, out1 || 0x02).
 */
export function hkdf(crypto: CryptoBackend, chainingKey: Uint8Array, ikm: Uint8Array): [Uint8Array, Uint8Array] {
  const temp = crypto.hmac(chainingKey, ikm);
  const out1 = crypto.hmac(temp, BYTE_1);
  const out2 = crypto.hmac(temp, out1, BYTE_2);
  temp.fill(0);
  return [out1, out2];
}

/**
 * Noise spec 5.1: a cipher key and its nonce counter. The key is bound by the backend (`AeadKey`) at its
 * first use, and the raw copy wiped then: a key the handshake never uses is never imported, and a
 * transport state keeps its key only where the backend keeps it.
 */
export class CipherState {
  readonly #crypto: CryptoBackend;
  #raw: Uint8Array | undefined;
  #key: AeadKey | undefined;
  #n = 0;

  constructor(crypto: CryptoBackend, key?: Uint8Array) {
    this.#crypto = crypto;
    if (key !== undefined) this.initializeKey(key);
  }

  /** Takes a copy of `key` (the state owns and eventually wipes its key) and resets the nonce. */
  initializeKey(key: Uint8Array | undefined): void {
    if (key !== undefined) checkKeyLength('cipher key', key, KEYLEN);
    this.#drop();
    this.#raw = key?.slice();
    this.#n = 0;
  }

  hasKey(): boolean {
    return this.#raw !== undefined || this.#key !== undefined;
  }

  /** The nonce the next encrypt or decrypt will use. */
  get nonce(): number {
    return this.#n;
  }

  /** Noise spec 5.1 SetNonce; for tests and for receivers that track nonces themselves. */
  setNonce(nonce: number): void {
    if (!Number.isSafeInteger(nonce) || nonce < 0) {
      throw new DropwireError(NoiseCode.NONCE_EXHAUSTED, `nonce ${nonce} is outside 0..2^53-1`);
    }
    this.#n = nonce;
  }

  encryptWithAd(ad: Uint8Array, plaintext: Uint8Array): Uint8Array {
    const key = this.#bound();
    if (key === undefined) return plaintext; // spec 5.1: no key yet, no encryption
    if (plaintext.length > MAX_TRANSPORT_PLAINTEXT) {
      throw tooLarge('plaintext', plaintext.length, MAX_TRANSPORT_PLAINTEXT);
    }
    this.#checkNonce();
    const parts = key.seal(this.#n, ad, [plaintext]);
    this.#n++;
    return parts.length === 1 ? parts[0]! : concat(parts);
  }

  /**
   * `encryptWithAd` over the concatenation of `plaintext`, returning ciphertext || tag as parts
   * (`AeadKey.seal`): a transport record is sealed from the stream's own bytes and framed without a copy.
   */
  encryptParts(ad: Uint8Array, plaintext: readonly Uint8Array[]): Uint8Array[] {
    const key = this.#bound();
    if (key === undefined) return plaintext.slice();
    const n = partsLength(plaintext);
    if (n > MAX_TRANSPORT_PLAINTEXT) throw tooLarge('plaintext', n, MAX_TRANSPORT_PLAINTEXT);
    this.#checkNonce();
    const out = key.seal(this.#n, ad, plaintext);
    this.#n++;
    return out;
  }

  /** A bad tag throws DW_BAD_MAC and leaves the nonce where it was (spec 5.1). */
  decryptWithAd(ad: Uint8Array, ciphertext: Uint8Array): Uint8Array {
    const key = this.#bound();
    if (key === undefined) return ciphertext;
    if (ciphertext.length > MAX_NOISE_MESSAGE) throw tooLarge('ciphertext', ciphertext.length, MAX_NOISE_MESSAGE);
    this.#checkNonce();
    if (ciphertext.length < TAGLEN) throw badMac();
    const n = ciphertext.length - TAGLEN;
    const parts = key.open(this.#n, ad, [ciphertext.subarray(0, n)], ciphertext.subarray(n));
    this.#n++;
    return parts.length === 1 ? parts[0]! : concat(parts);
  }

  /**
   * `decryptWithAd` over a message (ciphertext || tag) given as parts, e.g. a frame as it arrived in
   * several socket reads; returns the plaintext as parts. Same failures as `decryptWithAd`.
   */
  decryptParts(ad: Uint8Array, message: readonly Uint8Array[]): Uint8Array[] {
    const key = this.#bound();
    if (key === undefined) return message.slice();
    const length = partsLength(message);
    if (length > MAX_NOISE_MESSAGE) throw tooLarge('ciphertext', length, MAX_NOISE_MESSAGE);
    this.#checkNonce();
    if (length < TAGLEN) throw badMac();
    let out: Uint8Array[];
    const only = message.length === 1 ? message[0]! : undefined;
    if (only !== undefined) out = key.open(this.#n, ad, [only.subarray(0, length - TAGLEN)], only.subarray(length - TAGLEN));
    else {
      const [ciphertext, tag] = splitTail(message, TAGLEN);
      out = key.open(this.#n, ad, ciphertext, tag);
    }
    this.#n++;
    return out;
  }

  /** Overwrites the key; the state is unusable afterwards. */
  clear(): void {
    this.#drop();
    this.#n = MAX_NONCE + 1;
  }

  #bound(): AeadKey | undefined {
    if (this.#key === undefined && this.#raw !== undefined) {
      this.#key = this.#crypto.aeadKey(this.#raw);
      this.#raw.fill(0);
      this.#raw = undefined;
    }
    return this.#key;
  }

  #drop(): void {
    this.#raw?.fill(0);
    this.#raw = undefined;
    this.#key?.destroy();
    this.#key = undefined;
  }

  #checkNonce(): void {
    // A nonce must never repeat under one key; a number counts exactly to 2^53-1, so stop there.
    if (this.#n > MAX_NONCE) throw new DropwireError(NoiseCode.NONCE_EXHAUSTED, 'nonce space exhausted');
  }
}

/** Noise spec 5.2: the chaining key, the handshake hash and the handshake's CipherState. */
export class SymmetricState {
  readonly #crypto: CryptoBackend;
  readonly #cs: CipherState;
  #ck: Uint8Array;
  #h: Uint8Array;

  constructor(crypto: CryptoBackend, protocolName: string) {
    this.#crypto = crypto;
    const name = new TextEncoder().encode(protocolName);
    if (name.length <= HASHLEN) {
      this.#h = new Uint8Array(HASHLEN);
      this.#h.set(name);
    } else {
      this.#h = crypto.hash(name);
    }
    this.#ck = this.#h.slice();
    this.#cs = new CipherState(crypto);
  }

  get handshakeHash(): Uint8Array {
    return this.#h.slice();
  }

  mixKey(inputKeyMaterial: Uint8Array): void {
    const [ck, tempK] = hkdf(this.#crypto, this.#ck, inputKeyMaterial);
    this.#ck.fill(0);
    this.#ck = ck;
    this.#cs.initializeKey(tempK); // HASHLEN = 32 = key length: no truncation
    tempK.fill(0);
  }

  mixHash(data: Uint8Array): void {
    this.#h = this.#crypto.hash(this.#h, data);
  }

  encryptAndHash(plaintext: Uint8Array): Uint8Array {
    const ciphertext = this.#cs.encryptWithAd(this.#h, plaintext);
    this.mixHash(ciphertext);
    return ciphertext;
  }

  decryptAndHash(ciphertext: Uint8Array): Uint8Array {
    const plaintext = this.#cs.decryptWithAd(this.#h, ciphertext);
    this.mixHash(ciphertext);
    return plaintext;
  }

  /** The two transport CipherStates (initiator->responder, responder->initiator); wipes the chaining key. */
  split(): [CipherState, CipherState] {
    const [k1, k2] = hkdf(this.#crypto, this.#ck, EMPTY);
    this.#ck.fill(0);
    this.#cs.clear();
    const states: [CipherState, CipherState] = [new CipherState(this.#crypto, k1), new CipherState(this.#crypto, k2)];
    k1.fill(0);
    k2.fill(0);
    return states;
  }

  /** Wipes the secrets; used when the handshake fails. */
  clear(): void {
    this.#ck.fill(0);
    this.#cs.clear();
  }
}

export type Role = 'initiator' | 'responder';

export interface ResponderOptions {
  crypto: CryptoBackend;
  prologue: Uint8Array;
  /** Our static key pair. Not copied: do not change it while a handshake runs. */
  s: KeyPair;
  /** A fixed ephemeral, for test vectors only; otherwise one is made from `random(32)`. */
  e?: KeyPair;
  random: (n: number) => Uint8Array;
}

export interface InitiatorOptions extends ResponderOptions {
  /** The responder's static public key, known in advance (the pre-message `<- s`). */
  rs: Uint8Array;
}

/** Noise spec 5.3, specialised to IK: one private method per message, each step named by its token. */
export class HandshakeState {
  readonly role: Role;
  readonly #crypto: CryptoBackend;
  readonly #symmetric: SymmetricState;
  readonly #s: KeyPair;
  readonly #fixedE: KeyPair | undefined;
  readonly #random: (n: number) => Uint8Array;
  #e: KeyPair | undefined;
  #rs: Uint8Array | undefined;
  #re: Uint8Array | undefined;
  /** Handshake messages processed so far: 0, 1, or 2 (complete). */
  #messages = 0;
  #failed = false;
  #split = false;

  private constructor(role: Role, o: ResponderOptions, rs: Uint8Array | undefined) {
    checkKeyLength('static private key', o.s.privateKey, DHLEN);
    checkKeyLength('static public key', o.s.publicKey, DHLEN);
    if (o.e !== undefined) {
      checkKeyLength('ephemeral private key', o.e.privateKey, DHLEN);
      checkKeyLength('ephemeral public key', o.e.publicKey, DHLEN);
    }
    this.role = role;
    this.#crypto = o.crypto;
    this.#s = o.s;
    this.#fixedE = o.e;
    this.#random = o.random;
    this.#symmetric = new SymmetricState(o.crypto, PROTOCOL_NAME);
    this.#symmetric.mixHash(o.prologue);
    // Pre-message `<- s`: both sides hash the responder's static public key.
    if (role === 'initiator') {
      if (rs === undefined) throw stateError('the initiator needs the responder static key');
      checkKeyLength('remote static public key', rs, DHLEN);
      this.#rs = rs.slice();
      this.#symmetric.mixHash(this.#rs);
    } else {
      this.#symmetric.mixHash(o.s.publicKey);
    }
  }

  static initiator(o: InitiatorOptions): HandshakeState {
    return new HandshakeState('initiator', o, o.rs);
  }

  static responder(o: ResponderOptions): HandshakeState {
    return new HandshakeState('responder', o, undefined);
  }

  /** True once both messages went through and the handshake did not fail. */
  get complete(): boolean {
    return this.#messages === 2 && !this.#failed;
  }

  /** The peer's static public key: the initiator knows it from the start, the responder after message 1. */
  get remoteStatic(): Uint8Array | undefined {
    return this.#rs?.slice();
  }

  /** Noise spec 11.2: once complete, a value both sides share, for channel binding (before: the running h). */
  get handshakeHash(): Uint8Array {
    return this.#symmetric.handshakeHash;
  }

  /** Writes the next message of the pattern; throws DW_HANDSHAKE_STATE when it is not our turn. */
  writeMessage(payload: Uint8Array): Uint8Array {
    this.#checkUsable();
    if (this.role === 'initiator' && this.#messages === 0) {
      if (payload.length > MAX_MSG1_PAYLOAD) throw tooLarge('msg 1 payload', payload.length, MAX_MSG1_PAYLOAD);
      return this.#guard(1, () => this.#writeMessage1(payload));
    }
    if (this.role === 'responder' && this.#messages === 1) {
      if (payload.length > MAX_MSG2_PAYLOAD) throw tooLarge('msg 2 payload', payload.length, MAX_MSG2_PAYLOAD);
      return this.#guard(2, () => this.#writeMessage2(payload));
    }
    throw stateError(`${this.role} cannot write after ${this.#messages} handshake message(s)`);
  }

  /**
   * Reads the next message of the pattern and returns its payload. A short, oversized or garbled message
   * throws DW_HANDSHAKE_FAILED whose cause has the precise code (DW_BAD_MAC, DW_BAD_KEY, ...); the
   * handshake is then dead.
   */
  readMessage(message: Uint8Array): Uint8Array {
    this.#checkUsable();
    if (this.role === 'responder' && this.#messages === 0) return this.#guard(1, () => this.#readMessage1(message));
    if (this.role === 'initiator' && this.#messages === 1) return this.#guard(2, () => this.#readMessage2(message));
    throw stateError(`${this.role} cannot read after ${this.#messages} handshake message(s)`);
  }

  /** The transport CipherStates from this side's perspective. Once only: two copies would reuse nonces. */
  split(): { send: CipherState; recv: CipherState } {
    if (!this.complete) throw stateError('split() before the handshake is complete');
    if (this.#split) throw stateError('split() was already called');
    this.#split = true;
    const [initiatorToResponder, responderToInitiator] = this.#symmetric.split();
    return this.role === 'initiator'
      ? { send: initiatorToResponder, recv: responderToInitiator }
      : { send: responderToInitiator, recv: initiatorToResponder };
  }

  // -> e, es, s, ss   (initiator)
  #writeMessage1(payload: Uint8Array): Uint8Array {
    const ss = this.#symmetric;
    const rs = this.#rs!;
    // e
    const e = this.#ephemeral();
    ss.mixHash(e.publicKey);
    // es
    ss.mixKey(this.#crypto.dh(e.privateKey, rs));
    // s
    const encryptedS = ss.encryptAndHash(this.#s.publicKey);
    // ss
    ss.mixKey(this.#crypto.dh(this.#s.privateKey, rs));
    const encryptedPayload = ss.encryptAndHash(payload);
    return concat([e.publicKey, encryptedS, encryptedPayload]);
  }

  // -> e, es, s, ss   (responder)
  #readMessage1(message: Uint8Array): Uint8Array {
    checkLength(message, IK_MSG1_OVERHEAD);
    const ss = this.#symmetric;
    // e
    const re = message.slice(0, DHLEN);
    this.#re = re;
    ss.mixHash(re);
    // es
    ss.mixKey(this.#crypto.dh(this.#s.privateKey, re));
    // s
    const rs = ss.decryptAndHash(message.subarray(DHLEN, DHLEN + DHLEN + TAGLEN));
    // ss
    ss.mixKey(this.#crypto.dh(this.#s.privateKey, rs));
    const payload = ss.decryptAndHash(message.subarray(DHLEN + DHLEN + TAGLEN));
    this.#rs = rs;
    return payload;
  }

  // <- e, ee, se   (responder)
  #writeMessage2(payload: Uint8Array): Uint8Array {
    const ss = this.#symmetric;
    // e
    const e = this.#ephemeral();
    ss.mixHash(e.publicKey);
    // ee
    ss.mixKey(this.#crypto.dh(e.privateKey, this.#re!));
    // se
    ss.mixKey(this.#crypto.dh(e.privateKey, this.#rs!));
    const encryptedPayload = ss.encryptAndHash(payload);
    return concat([e.publicKey, encryptedPayload]);
  }

  // <- e, ee, se   (initiator)
  #readMessage2(message: Uint8Array): Uint8Array {
    checkLength(message, IK_MSG2_OVERHEAD);
    const ss = this.#symmetric;
    const e = this.#e!;
    // e
    const re = message.slice(0, DHLEN);
    this.#re = re;
    ss.mixHash(re);
    // ee
    ss.mixKey(this.#crypto.dh(e.privateKey, re));
    // se
    ss.mixKey(this.#crypto.dh(this.#s.privateKey, re));
    return ss.decryptAndHash(message.subarray(DHLEN));
  }

  #ephemeral(): KeyPair {
    this.#e = this.#fixedE ?? generateKeyPair(this.#crypto, this.#random);
    return this.#e;
  }

  /** Runs one message step; counts it on success, kills the handshake and names the message on failure. */
  #guard(message: 1 | 2, step: () => Uint8Array): Uint8Array {
    let out: Uint8Array;
    try {
      out = step();
    } catch (err) {
      this.#failed = true;
      this.#symmetric.clear();
      this.#wipeEphemeral();
      const detail = err instanceof Error ? err.message : String(err);
      throw new DropwireError(NoiseCode.HANDSHAKE_FAILED, `msg ${message}: ${detail}`, { cause: err });
    }
    this.#messages = message;
    if (message === 2) this.#wipeEphemeral(); // no further DH: the ephemeral private key has done its job
    return out;
  }

  /** Best effort (a garbage-collected runtime may hold copies): overwrite, then drop the reference. */
  #wipeEphemeral(): void {
    // Only keys we generated: a fixed ephemeral belongs to the caller.
    if (this.#e !== undefined && this.#e !== this.#fixedE) this.#e.privateKey.fill(0);
    this.#e = undefined;
  }

  #checkUsable(): void {
    if (this.#failed) throw stateError('the handshake failed earlier');
  }
}

function checkLength(message: Uint8Array, min: number): void {
  if (message.length < min) {
    throw new DropwireError(NoiseCode.MESSAGE_TRUNCATED, `message is ${message.length} bytes, needs at least ${min}`);
  }
  if (message.length > MAX_NOISE_MESSAGE) throw tooLarge('message', message.length, MAX_NOISE_MESSAGE);
}

