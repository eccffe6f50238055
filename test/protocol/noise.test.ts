import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MAX_NONCE, type CryptoBackend, type KeyPair } from '../../src/protocol/crypto.js';
import { nobleCrypto } from '../../src/protocol/crypto-noble.js';
import { nodeCrypto } from '../../src/protocol/crypto-node.js';
import {
  CipherState,
  HandshakeState,
  IK_MSG1_OVERHEAD,
  IK_MSG2_OVERHEAD,
  MAX_MSG1_PAYLOAD,
  MAX_MSG2_PAYLOAD,
  MAX_NOISE_MESSAGE,
  MAX_TRANSPORT_PLAINTEXT,
  PROTOCOL_NAME,
} from '../../src/protocol/noise.js';
import { hex } from '../helpers/protocol.js';

interface VectorMessage {
  payload: string;
  ciphertext: string;
}
interface Vector {
  name: string;
  init_prologue: string;
  init_static: string;
  init_ephemeral: string;
  init_remote_static: string;
  resp_prologue: string;
  resp_static: string;
  resp_ephemeral: string;
  messages: VectorMessage[];
  handshake_hash?: string;
}
interface Fixture {
  protocol_name: string;
  sources: { origin: { repository: string; path: string; commit: string }; vector: Vector }[];
}

const fixture = JSON.parse(
  readFileSync(new URL('../fixtures/noise/ik-25519-chachapoly-sha256.json', import.meta.url), 'utf8'),
) as Fixture;

const bytes = (h: string): Uint8Array => new Uint8Array(Buffer.from(h, 'hex'));
const text = (s: string): Uint8Array => new TextEncoder().encode(s);
const noRandom = (): Uint8Array => {
  throw new Error('randomness not expected');
};
let counter = 0;
/** Deterministic, distinct 32-byte strings: tests must not depend on the machine's randomness. */
const seq = (n: number): Uint8Array => {
  counter++;
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (counter * 31 + i * 7) & 0xff;
  out[0] = counter & 0xff;
  out[1] = (counter >> 8) & 0xff;
  return out;
};

function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  throw new Error('expected a throw');
}

const backends: readonly CryptoBackend[] = [nodeCrypto, nobleCrypto];
const pairs = backends.flatMap((i) => backends.map((r) => [i, r] as const));

describe('known-answer vectors', () => {
  it('the fixture holds only our protocol, from at least one source', () => {
    expect(fixture.protocol_name).toBe(PROTOCOL_NAME);
    expect(fixture.sources.length).toBeGreaterThan(0);
    for (const s of fixture.sources) expect(s.vector.name).toBe(PROTOCOL_NAME);
  });

  for (const { origin, vector } of fixture.sources) {
    for (const [ic, rc] of pairs) {
      it(`${origin.repository}: initiator on ${ic.name}, responder on ${rc.name}`, () => {
        const initiator = HandshakeState.initiator({
          crypto: ic,
          prologue: bytes(vector.init_prologue),
          s: ic.keyPairFromPrivate(bytes(vector.init_static)),
          rs: bytes(vector.init_remote_static),
          e: ic.keyPairFromPrivate(bytes(vector.init_ephemeral)),
          random: noRandom,
        });
        const responder = HandshakeState.responder({
          crypto: rc,
          prologue: bytes(vector.resp_prologue),
          s: rc.keyPairFromPrivate(bytes(vector.resp_static)),
          e: rc.keyPairFromPrivate(bytes(vector.resp_ephemeral)),
          random: noRandom,
        });
        const [m1, m2, ...transport] = vector.messages;
        if (m1 === undefined || m2 === undefined) throw new Error('vector without a handshake');

        // -> e, es, s, ss
        expect(responder.remoteStatic).toBeUndefined();
        const c1 = initiator.writeMessage(bytes(m1.payload));
        expect(hex(c1)).toBe(m1.ciphertext);
        expect(hex(responder.readMessage(c1))).toBe(m1.payload);
        expect(hex(responder.remoteStatic!)).toBe(hex(ic.keyPairFromPrivate(bytes(vector.init_static)).publicKey));
        expect(initiator.complete || responder.complete).toBe(false);

        // <- e, ee, se
        const c2 = responder.writeMessage(bytes(m2.payload));
        expect(hex(c2)).toBe(m2.ciphertext);
        expect(hex(initiator.readMessage(c2))).toBe(m2.payload);
        expect(initiator.complete && responder.complete).toBe(true);

        expect(hex(initiator.handshakeHash)).toBe(hex(responder.handshakeHash));
        if (vector.handshake_hash !== undefined) expect(hex(initiator.handshakeHash)).toBe(vector.handshake_hash);

        const i = initiator.split();
        const r = responder.split();
        transport.forEach((m, index) => {
          // The vectors alternate: initiator, responder, initiator, ...
          const [from, to] = index % 2 === 0 ? [i, r] : [r, i];
          const ct = from.send.encryptWithAd(new Uint8Array(0), bytes(m.payload));
          expect(hex(ct), `transport message ${index + 3}`).toBe(m.ciphertext);
          expect(hex(to.recv.decryptWithAd(new Uint8Array(0), ct))).toBe(m.payload);
        });
      });
    }
  }
});

interface Party {
  s: KeyPair;
}
function party(crypto: CryptoBackend, seed: number): Party {
  return { s: crypto.keyPairFromPrivate(new Uint8Array(32).fill(seed)) };
}

function handshakePair(
  crypto: CryptoBackend,
  opts: { initiatorE?: KeyPair; responderE?: KeyPair; prologue?: Uint8Array } = {},
) {
  const alice = party(crypto, 1);
  const bob = party(crypto, 2);
  const prologue = opts.prologue ?? text('dropwire/test');
  const initiator = HandshakeState.initiator({
    crypto,
    prologue,
    s: alice.s,
    rs: bob.s.publicKey,
    ...(opts.initiatorE ? { e: opts.initiatorE } : {}),
    random: seq,
  });
  const responder = HandshakeState.responder({
    crypto,
    prologue,
    s: bob.s,
    ...(opts.responderE ? { e: opts.responderE } : {}),
    random: seq,
  });
  return { alice, bob, initiator, responder, prologue };
}

describe.each(backends)('IK handshake on $name', (crypto) => {
  it('completes with random keys, prologues and payloads, and the transport works both ways', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 32, maxLength: 32 }),
        fc.uint8Array({ minLength: 32, maxLength: 32 }),
        fc.uint8Array({ maxLength: 40 }),
        fc.uint8Array({ maxLength: 300 }),
        fc.uint8Array({ maxLength: 300 }),
        (sa, sb, prologue, p1, p2) => {
          const a = crypto.keyPairFromPrivate(sa);
          const b = crypto.keyPairFromPrivate(sb);
          const initiator = HandshakeState.initiator({ crypto, prologue, s: a, rs: b.publicKey, random: seq });
          const responder = HandshakeState.responder({ crypto, prologue, s: b, random: seq });
          const m1 = initiator.writeMessage(p1);
          expect(m1.length).toBe(IK_MSG1_OVERHEAD + p1.length);
          expect(hex(responder.readMessage(m1))).toBe(hex(p1));
          expect(hex(responder.remoteStatic!)).toBe(hex(a.publicKey));
          const m2 = responder.writeMessage(p2);
          expect(m2.length).toBe(IK_MSG2_OVERHEAD + p2.length);
          expect(hex(initiator.readMessage(m2))).toBe(hex(p2));
          expect(hex(initiator.handshakeHash)).toBe(hex(responder.handshakeHash));
          const i = initiator.split();
          const r = responder.split();
          for (let k = 0; k < 3; k++) {
            expect(hex(r.recv.decryptWithAd(new Uint8Array(0), i.send.encryptWithAd(new Uint8Array(0), p1)))).toBe(
              hex(p1),
            );
            expect(hex(i.recv.decryptWithAd(new Uint8Array(0), r.send.encryptWithAd(new Uint8Array(0), p2)))).toBe(
              hex(p2),
            );
          }
        },
      ),
      { numRuns: crypto.name === 'noble' ? 15 : 60 },
    );
  });

  it('draws its ephemeral from random(32) when none is given', () => {
    const asked: number[] = [];
    const { alice, bob } = handshakePair(crypto);
    const initiator = HandshakeState.initiator({
      crypto,
      prologue: new Uint8Array(0),
      s: alice.s,
      rs: bob.s.publicKey,
      random: (n) => {
        asked.push(n);
        return new Uint8Array(n).fill(0x42);
      },
    });
    const m1 = initiator.writeMessage(new Uint8Array(0));
    expect(asked).toEqual([32]);
    expect(hex(m1.subarray(0, 32))).toBe(hex(crypto.keyPairFromPrivate(new Uint8Array(32).fill(0x42)).publicKey));
  });

  it('enforces the turn order with DW_HANDSHAKE_STATE', () => {
    const { initiator, responder } = handshakePair(crypto);
    expect(thrown(() => responder.writeMessage(new Uint8Array(0)))).toMatchObject({ code: 'DW_HANDSHAKE_STATE' });
    expect(thrown(() => initiator.readMessage(new Uint8Array(200)))).toMatchObject({ code: 'DW_HANDSHAKE_STATE' });
    expect(thrown(() => initiator.split())).toMatchObject({ code: 'DW_HANDSHAKE_STATE' });
    const m1 = initiator.writeMessage(new Uint8Array(0));
    expect(thrown(() => initiator.writeMessage(new Uint8Array(0)))).toMatchObject({ code: 'DW_HANDSHAKE_STATE' });
    responder.readMessage(m1);
    expect(thrown(() => responder.readMessage(m1))).toMatchObject({ code: 'DW_HANDSHAKE_STATE' });
    const m2 = responder.writeMessage(new Uint8Array(0));
    expect(thrown(() => responder.writeMessage(new Uint8Array(0)))).toMatchObject({ code: 'DW_HANDSHAKE_STATE' });
    initiator.readMessage(m2);
    expect(thrown(() => initiator.readMessage(m2))).toMatchObject({ code: 'DW_HANDSHAKE_STATE' });
    initiator.split();
    // A second split would hand out a second CipherState with the same key: nonce reuse.
    expect(thrown(() => initiator.split())).toMatchObject({ code: 'DW_HANDSHAKE_STATE' });
  });

  // IK has no replay protection for message 1 (Noise spec 7.7): a fresh responder accepts it again.
  it('replay: message 1 is accepted by a fresh responder, but the replayed session is useless', () => {
    const { bob, initiator, responder, prologue } = handshakePair(crypto);
    const m1 = initiator.writeMessage(text('hello'));
    responder.readMessage(m1);
    initiator.readMessage(responder.writeMessage(new Uint8Array(0)));
    const session = initiator.split();
    const record = session.send.encryptWithAd(new Uint8Array(0), text('transfer'));

    const replayed = HandshakeState.responder({ crypto, prologue, s: bob.s, random: seq });
    expect(hex(replayed.readMessage(m1))).toBe(hex(text('hello')));
    replayed.writeMessage(new Uint8Array(0)); // goes to the attacker, who lacks alice's e and s
    const attacker = replayed.split();
    // The genuine session's records do not open in the replayed one: fresh responder ephemeral, fresh keys.
    expect(thrown(() => attacker.recv.decryptWithAd(new Uint8Array(0), record))).toMatchObject({ code: 'DW_BAD_MAC' });
  });

  it('replay: message 2 fails in a fresh initiator, and message 1 in a responder with another key or prologue', () => {
    const { alice, bob, initiator, responder, prologue } = handshakePair(crypto);
    const m1 = initiator.writeMessage(new Uint8Array(0));
    responder.readMessage(m1);
    const m2 = responder.writeMessage(new Uint8Array(0));

    const fresh = HandshakeState.initiator({ crypto, prologue, s: alice.s, rs: bob.s.publicKey, random: seq });
    fresh.writeMessage(new Uint8Array(0));
    expect(thrown(() => fresh.readMessage(m2))).toMatchObject({
      code: 'DW_HANDSHAKE_FAILED',
      message: expect.stringMatching(/^msg 2: /),
      cause: { code: 'DW_BAD_MAC' },
    });

    const otherKey = HandshakeState.responder({ crypto, prologue, s: party(crypto, 9).s, random: seq });
    expect(thrown(() => otherKey.readMessage(m1))).toMatchObject({
      code: 'DW_HANDSHAKE_FAILED',
      message: expect.stringMatching(/^msg 1: /),
      cause: { code: 'DW_BAD_MAC' },
    });
    const otherPrologue = HandshakeState.responder({ crypto, prologue: text('dropwire/2'), s: bob.s, random: seq });
    expect(thrown(() => otherPrologue.readMessage(m1))).toMatchObject({
      code: 'DW_HANDSHAKE_FAILED',
      cause: { code: 'DW_BAD_MAC' },
    });
  });

  it('refuses truncated and oversized messages, and is dead after a failure', () => {
    const { initiator } = handshakePair(crypto);
    const m1 = initiator.writeMessage(new Uint8Array(0));
    for (let n = 0; n < IK_MSG1_OVERHEAD; n++) {
      const { responder } = handshakePair(crypto);
      expect(thrown(() => responder.readMessage(m1.subarray(0, n)))).toMatchObject({
        code: 'DW_HANDSHAKE_FAILED',
        cause: { code: 'DW_MESSAGE_TRUNCATED' },
      });
    }
    const { responder } = handshakePair(crypto);
    expect(thrown(() => responder.readMessage(new Uint8Array(MAX_NOISE_MESSAGE + 1)))).toMatchObject({
      code: 'DW_HANDSHAKE_FAILED',
      cause: { code: 'DW_MESSAGE_TOO_LARGE' },
    });
    expect(thrown(() => responder.readMessage(m1))).toMatchObject({ code: 'DW_HANDSHAKE_STATE' });
    expect(responder.complete).toBe(false);

    const pair = handshakePair(crypto);
    pair.responder.readMessage(pair.initiator.writeMessage(new Uint8Array(0)));
    for (let n = 0; n < IK_MSG2_OVERHEAD; n += 7) {
      const again = handshakePair(crypto);
      again.initiator.writeMessage(new Uint8Array(0));
      expect(thrown(() => again.initiator.readMessage(new Uint8Array(n)))).toMatchObject({
        code: 'DW_HANDSHAKE_FAILED',
        cause: { code: 'DW_MESSAGE_TRUNCATED' },
      });
    }
  });

  it('refuses payloads that would make a message larger than 65535 bytes, and accepts exactly the maximum', () => {
    const { initiator, responder } = handshakePair(crypto);
    expect(thrown(() => initiator.writeMessage(new Uint8Array(MAX_MSG1_PAYLOAD + 1)))).toMatchObject({
      code: 'DW_MESSAGE_TOO_LARGE',
    });
    const m1 = initiator.writeMessage(new Uint8Array(MAX_MSG1_PAYLOAD));
    expect(m1.length).toBe(MAX_NOISE_MESSAGE);
    responder.readMessage(m1);
    expect(thrown(() => responder.writeMessage(new Uint8Array(MAX_MSG2_PAYLOAD + 1)))).toMatchObject({
      code: 'DW_MESSAGE_TOO_LARGE',
    });
    expect(responder.writeMessage(new Uint8Array(MAX_MSG2_PAYLOAD)).length).toBe(MAX_NOISE_MESSAGE);
  });

  it('rejects a low-order ephemeral in message 1 and a low-order responder key with DW_BAD_KEY causes', () => {
    const { initiator, alice } = handshakePair(crypto);
    const m1 = initiator.writeMessage(new Uint8Array(0));
    const forged = m1.slice();
    forged.fill(0, 0, 32);
    const { responder } = handshakePair(crypto);
    expect(thrown(() => responder.readMessage(forged))).toMatchObject({
      code: 'DW_HANDSHAKE_FAILED',
      cause: { code: 'DW_BAD_KEY' },
    });
    const toZero = HandshakeState.initiator({
      crypto,
      prologue: new Uint8Array(0),
      s: alice.s,
      rs: new Uint8Array(32),
      random: seq,
    });
    expect(thrown(() => toZero.writeMessage(new Uint8Array(0)))).toMatchObject({
      code: 'DW_HANDSHAKE_FAILED',
      message: expect.stringMatching(/^msg 1: /),
      cause: { code: 'DW_BAD_KEY' },
    });
  });
});

describe('single bit flips', () => {
  const fixedI = nodeCrypto.keyPairFromPrivate(new Uint8Array(32).fill(0x11));
  const fixedR = nodeCrypto.keyPairFromPrivate(new Uint8Array(32).fill(0x22));
  const payload = text('resume 0123456789');
  const failure = {
    code: 'DW_HANDSHAKE_FAILED',
    cause: { code: expect.stringMatching(/^DW_(BAD_MAC|BAD_KEY)$/) },
  };

  function flip(message: Uint8Array, bit: number): Uint8Array {
    const out = message.slice();
    out[bit >> 3]! ^= 1 << (bit & 7);
    return out;
  }

  function messages(crypto: CryptoBackend) {
    const { initiator, responder } = handshakePair(crypto, { initiatorE: fixedI, responderE: fixedR });
    const m1 = initiator.writeMessage(payload);
    responder.readMessage(m1);
    return { m1, m2: responder.writeMessage(payload) };
  }

  it.each(backends)('every bit of message 1 and 2 on $name (exhaustive on node, sampled on noble)', (crypto) => {
    const { m1, m2 } = messages(crypto);
    const bits1 = [...Array(m1.length * 8).keys()];
    const bits2 = [...Array(m2.length * 8).keys()];
    const sample = (all: number[]) => (crypto.name === 'node' ? all : all.filter((b) => b % 13 === 0 || b % 8 === 7));
    for (const bit of sample(bits1)) {
      const { responder } = handshakePair(crypto);
      expect(thrown(() => responder.readMessage(flip(m1, bit))), `msg 1 bit ${bit}`).toMatchObject(failure);
    }
    for (const bit of sample(bits2)) {
      const { initiator } = handshakePair(crypto, { initiatorE: fixedI });
      initiator.writeMessage(payload);
      expect(thrown(() => initiator.readMessage(flip(m2, bit))), `msg 2 bit ${bit}`).toMatchObject(failure);
    }
  });
});

describe('CipherState', () => {
  const key = new Uint8Array(32).fill(0x33);
  const empty = new Uint8Array(0);

  it.each(backends)('stops at nonce 2^53-1 with DW_NONCE_EXHAUSTED on $name', (crypto) => {
    const send = new CipherState(crypto, key);
    const recv = new CipherState(crypto, key);
    send.setNonce(MAX_NONCE);
    recv.setNonce(MAX_NONCE);
    const ct = send.encryptWithAd(empty, text('last'));
    expect(hex(recv.decryptWithAd(empty, ct))).toBe(hex(text('last')));
    expect(thrown(() => send.encryptWithAd(empty, text('one more')))).toMatchObject({ code: 'DW_NONCE_EXHAUSTED' });
    expect(thrown(() => recv.decryptWithAd(empty, ct))).toMatchObject({ code: 'DW_NONCE_EXHAUSTED' });
    expect(thrown(() => send.setNonce(2 ** 53))).toMatchObject({ code: 'DW_NONCE_EXHAUSTED' });
  });

  it('does not advance the nonce on a failed decrypt', () => {
    const send = new CipherState(nodeCrypto, key);
    const recv = new CipherState(nodeCrypto, key);
    const ct = send.encryptWithAd(empty, text('x'));
    const bad = ct.slice();
    bad[0]! ^= 1;
    expect(thrown(() => recv.decryptWithAd(empty, bad))).toMatchObject({ code: 'DW_BAD_MAC' });
    expect(recv.nonce).toBe(0);
    expect(hex(recv.decryptWithAd(empty, ct))).toBe(hex(text('x')));
    expect(recv.nonce).toBe(1);
  });

  it('refuses records above the Noise maximum', () => {
    const cs = new CipherState(nodeCrypto, key);
    expect(cs.encryptWithAd(empty, new Uint8Array(MAX_TRANSPORT_PLAINTEXT)).length).toBe(MAX_NOISE_MESSAGE);
    expect(thrown(() => cs.encryptWithAd(empty, new Uint8Array(MAX_TRANSPORT_PLAINTEXT + 1)))).toMatchObject({
      code: 'DW_MESSAGE_TOO_LARGE',
    });
    expect(thrown(() => cs.decryptWithAd(empty, new Uint8Array(MAX_NOISE_MESSAGE + 1)))).toMatchObject({
      code: 'DW_MESSAGE_TOO_LARGE',
    });
  });

  it('passes bytes through before it has a key (Noise 5.1)', () => {
    const cs = new CipherState(nodeCrypto);
    expect(cs.hasKey()).toBe(false);
    expect(hex(cs.encryptWithAd(empty, text('plain')))).toBe(hex(text('plain')));
  });
});
