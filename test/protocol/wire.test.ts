/**
 * PROTOCOL Appendix A, byte for byte, through `Connection` and `Session` (not only the Noise layer): the
 * opening, message 2, a DATA record, an ACK, a PING and a PONG, on both crypto backends and whatever way
 * the connection chooses to cut its writes. Any change to framing, record encoding or sealing shows here.
 */
import { describe, expect, it } from 'vitest';
import { Connection, type Output } from '../../src/protocol/connection.js';
import type { CryptoBackend } from '../../src/protocol/crypto.js';
import { nobleCrypto } from '../../src/protocol/crypto-noble.js';
import { nodeCrypto } from '../../src/protocol/crypto-node.js';
import { HelloKind } from '../../src/protocol/hello.js';
import { Session } from '../../src/protocol/session.js';
import { hex } from '../helpers/protocol.js';

const unhex = (s: string): string => s.replace(/\s+/g, '');
const noRandom = (): Uint8Array => {
  throw new Error('the vector fixes every key');
};

const WIRE = {
  msg1: unhex(`
    44 57 00 01 00 82 7b 0d 47 d9 34 27 f8 31 11 60 78 1c 7c 73 3f d8 9f 88 97 0a ef 49 0d 8a a0 ee
    19 a4 cb 8a 1b 14 7d 89 d6 41 11 e5 bb 57 4e a5 d5 0d 1d 50 1b 73 90 df 9e e4 04 ba ce fa ca e2
    76 88 e2 2a 1e dc dc 78 4d 3c 0e d3 c2 1d 1e 84 8a 6d 63 50 a4 a5 0c 9a 49 f7 cf d6 3f 10 cb 1d
    7e d8 2d 91 b5 dd 83 ad cb 4c b8 57 0b cf a2 6e d2 c2 41 dd 88 a3 0a 1e db 47 8b b4 a8 05 ef 79
    dc 3a 93 36 7a eb 86 19`),
  msg2: unhex(`
    00 4a ff 2e e4 56 01 ec 1b 67 31 0c 77 90 40 45 85 ae 69 73 31 ee e1 c1 f8 cf 24 19 73 1c 1f ff
    3e 6b b9 9d e8 b3 93 93 76 63 5a 4c d9 28 29 8f 66 7d 17 62 b5 e7 93 aa e2 c0 5e 75 4b c8 61 4f
    30 30 24 e1 a4 47 eb 7d 47 7e 7d 0f`),
  data: unhex('00 16 0c 00 1e fc ff 15 8b 33 4f 94 5f c5 fc e9 6e be 38 58 30 df 98 de'),
  ack: unhex('00 19 99 4c 43 98 95 85 2e 86 9f 7c c6 99 77 f9 ad 3f 87 aa 03 d2 24 db 7f 62 af'),
  ping: unhex('00 19 dc 43 e6 7b 74 13 0f f3 9c 41 5c 88 21 93 75 a3 d7 89 36 6c 22 c8 73 72 d9'),
  pong: unhex('00 19 53 40 e5 9d b3 d5 3d 16 34 85 56 66 f3 f6 b5 d9 77 f2 6b 63 2e 38 6d 12 4e'),
};

/** Polls until idle; returns the bytes written (joined) and the other outputs. */
function drain(c: Connection, now: number): { wire: string; outs: Output[] } {
  let wire = '';
  const outs: Output[] = [];
  for (let o = c.poll(now), i = 0; o && i < 1000; o = c.poll(now), i++) {
    if (o.type === 'write') wire += hex(o.bytes);
    else outs.push(o);
  }
  return { wire, outs };
}

const backends: readonly CryptoBackend[] = [nodeCrypto, nobleCrypto];

describe('PROTOCOL Appendix A through Connection', () => {
  for (const crypto of backends) {
    it(`${crypto.name} backend: every byte on the wire`, () => {
      const key = (b: number) => crypto.keyPairFromPrivate(new Uint8Array(32).fill(b));
      const relay = key(0x11);
      const agentSession = new Session();
      const relaySession = new Session({ id: new Uint8Array(16).fill(0xaa) });
      const agent = Connection.initiator({
        crypto,
        random: noRandom,
        staticKey: key(0x22),
        remoteStatic: relay.publicKey,
        ephemeral: key(0x33),
        session: agentSession,
        timestamp: 1_700_000_000_000,
        now: 0,
      });
      const responder = Connection.responder({ crypto, random: noRandom, staticKey: relay, ephemeral: key(0x44), now: 0 });

      const m1 = drain(agent, 0);
      expect(m1.wire).toBe(WIRE.msg1);
      responder.receive(Buffer.from(m1.wire, 'hex'), 0);
      const hello = drain(responder, 0).outs.find((o) => o.type === 'hello');
      expect(hello?.type === 'hello' && hello.hello.kind).toBe(HelloKind.NEW);
      responder.accept(relaySession, 0);
      const m2 = drain(responder, 0);
      expect(m2.wire).toBe(WIRE.msg2);
      agent.receive(Buffer.from(m2.wire, 'hex'), 0);
      expect(drain(agent, 0).outs.map((o) => o.type)).toEqual(['established']);

      agentSession.write(new TextEncoder().encode('hello'));
      const data = drain(agent, 1);
      expect(data.wire).toBe(WIRE.data);
      responder.receive(Buffer.from(data.wire, 'hex'), 1);
      const got = drain(responder, 1);
      expect(got.wire).toBe('');
      expect(got.outs.filter((o) => o.type === 'data').map((o) => (o.type === 'data' ? Buffer.from(o.bytes).toString() : ''))).toEqual(['hello']);

      const ack = drain(responder, 100);
      expect(ack.wire).toBe(WIRE.ack);
      agent.receive(Buffer.from(ack.wire, 'hex'), 100);
      expect(drain(agent, 100).wire).toBe('');
      expect(agentSession.buffered).toBe(0);

      const ping = drain(agent, 10_001);
      expect(ping.wire).toBe(WIRE.ping);
      responder.receive(Buffer.from(ping.wire, 'hex'), 10_001);
      const pong = drain(responder, 10_001);
      expect(pong.wire).toBe(WIRE.pong);
      agent.receive(Buffer.from(pong.wire, 'hex'), 10_001);
      expect(drain(agent, 10_001)).toEqual({ wire: '', outs: [] });
    });
  }
});
