/**
 * PROTOCOL 3.4 (HANDOVER), 7.3 (`caps`), 7.16 and 7.17: the test vectors byte for byte, and a session handed
 * from one responder to another through `exportSession` / `restoreSession` while the initiator keeps it:
 * every byte of both streams delivered once, none sent again, the first count after HANDOVER deciding where
 * the new connection sends from.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { Connection, type Output } from '../../src/protocol/connection.js';
import { nodeCrypto } from '../../src/protocol/crypto-node.js';
import { decodeHandoverState, encodeHandoverState, exportSession, restoreSession } from '../../src/protocol/handover.js';
import { decodeClientHello, encodeClientHello, HelloKind } from '../../src/protocol/hello.js';
import { encodeMessage, MessageDecoder, MessageType } from '../../src/protocol/messages.js';
import { Session } from '../../src/protocol/session.js';
import { hex } from '../helpers/protocol.js';

const unhex = (s: string): string => s.replace(/\s+/g, '');
const join = (parts: Uint8Array[]): string => parts.map(hex).join('');
const RID = '00112233445566778899aabbccddeeff';

describe('PROTOCOL 3.4, 7.3, 7.16, 7.17: test vectors', () => {
  it('the HANDOVER client hello (50 bytes)', () => {
    const sessionId = Uint8Array.from({ length: 16 }, (_, i) => 0xa0 + i);
    const bytes = encodeClientHello({ kind: HelloKind.HANDOVER, timestamp: 0x0193512b1c01, sessionId, received: 70000, requestId: Buffer.from(RID, 'hex') });
    expect(hex(bytes)).toBe(unhex('01 03 00 00 01 93 51 2b 1c 01 a0 a1 a2 a3 a4 a5 a6 a7 a8 a9 aa ab ac ad ae af 00 00 00 00 00 01 11 70 00 11 22 33 44 55 66 77 88 99 aa bb cc dd ee ff'));
    const back = decodeClientHello(bytes);
    expect(back.kind).toBe(HelloKind.HANDOVER);
    expect(hex(back.requestId!)).toBe(RID);
    expect(back.received).toBe(70000);
  });

  it('REDIRECT, REDIRECT_REFUSED and a HELLO with caps', () => {
    const redirect = encodeMessage(MessageType.REDIRECT, { rid: RID, to: '127.0.0.1:7391', deadline: 1700000010000 });
    expect(join(redirect)).toBe(
      unhex(`11 00 59 00 00 00 00 7b 22 72 69 64 22 3a 22 30 30 31 31 32 32 33 33 34 34 35 35 36 36 37 37 38 38 39 39 61 61 62 62 63 63 64 64 65 65 66 66
             22 2c 22 74 6f 22 3a 22 31 32 37 2e 30 2e 30 2e 31 3a 37 33 39 31 22 2c 22 64 65 61 64 6c 69 6e 65 22 3a 31 37 30 30 30 30 30 30 31 30 30 30 30 7d`),
    );
    const refused = encodeMessage(MessageType.REDIRECT_REFUSED, { rid: RID, code: 'DW_REDIRECT_REFUSED' });
    expect(join(refused)).toBe(
      unhex(`12 00 47 00 00 00 00 7b 22 72 69 64 22 3a 22 30 30 31 31 32 32 33 33 34 34 35 35 36 36 37 37 38 38 39 39 61 61 62 62 63 63 64 64 65 65 66 66
             22 2c 22 63 6f 64 65 22 3a 22 44 57 5f 52 45 44 49 52 45 43 54 5f 52 45 46 55 53 45 44 22 7d`),
    );
    const hello = encodeMessage(MessageType.HELLO, { agent: 'dropwire/1.0.0', partial: [], caps: ['redirect'] });
    expect(join(hello)).toBe(
      unhex(`01 00 3b 00 00 00 00 7b 22 61 67 65 6e 74 22 3a 22 64 72 6f 70 77 69 72 65 2f 31 2e 30 2e 30 22 2c 22 70 61 72 74 69 61 6c 22 3a 5b 5d 2c
             22 63 61 70 73 22 3a 5b 22 72 65 64 69 72 65 63 74 22 5d 7d`),
    );
    const d = new MessageDecoder();
    for (const p of [...redirect, ...refused, ...hello]) d.push(p);
    expect(d.next()).toMatchObject({ type: MessageType.REDIRECT, header: { rid: RID, to: '127.0.0.1:7391', deadline: 1700000010000 } });
    expect(d.next()).toMatchObject({ type: MessageType.REDIRECT_REFUSED, header: { rid: RID, code: 'DW_REDIRECT_REFUSED' } });
    expect(d.next()).toMatchObject({ type: MessageType.HELLO, header: { caps: ['redirect'] } });
  });

  it('a decoder hands a message begun over to another that finishes it', () => {
    const bytes = Buffer.concat(encodeMessage(MessageType.RESULT, { id: 'm1', status: 'handled' }));
    for (const cut of [1, 6, 7, 12, bytes.length - 1]) {
      const a = new MessageDecoder();
      a.push(bytes.subarray(0, cut));
      expect(a.next()).toBeUndefined();
      const b = new MessageDecoder();
      b.push(a.takePending());
      b.push(bytes.subarray(cut));
      expect(b.next()).toMatchObject({ type: MessageType.RESULT, header: { id: 'm1', status: 'handled' } });
    }
  });
});

/** Moves bytes between two connections until both are idle; returns the other outputs of each. */
function exchange(a: Connection, b: Connection, now: number, cutAfterAToB?: number): { a: Output[]; b: Output[] } {
  const outs = { a: [] as Output[], b: [] as Output[] };
  let sentAB = 0;
  for (let round = 0; round < 10_000; round++) {
    let moved = false;
    for (let o = a.poll(now); o; o = a.poll(now)) {
      if (o.type === 'write') {
        if (cutAfterAToB !== undefined && sentAB >= cutAfterAToB) continue; // lost on the old wire
        sentAB += o.bytes.length;
        b.receive(o.bytes, now);
        moved = true;
      } else outs.a.push(o);
    }
    for (let o = b.poll(now); o; o = b.poll(now)) {
      if (o.type === 'write') {
        a.receive(o.bytes, now);
        moved = true;
      } else outs.b.push(o);
    }
    if (!moved) break;
  }
  return outs;
}

const dataOf = (outs: Output[]): Buffer => Buffer.concat(outs.filter((o) => o.type === 'data').map((o) => (o as { bytes: Uint8Array }).bytes));

describe('PROTOCOL 7.16: a session handed from one relay node to another', () => {
  const crypto = nodeCrypto;
  const relayKey = crypto.keyPairFromPrivate(new Uint8Array(32).fill(0x11));
  const agentKey = crypto.keyPairFromPrivate(new Uint8Array(32).fill(0x22));
  const random = (n: number): Uint8Array => randomBytes(n);

  for (const lostOnOldWire of [undefined, 20_000]) {
    it(`continues both streams at the same counts${lostOnOldWire ? ', re-sending only what the old wire lost' : ', sending nothing again'}`, () => {
      const stream = Buffer.alloc(300_000);
      for (let i = 0; i < stream.length; i++) stream[i] = (i * 7 + (i >> 8)) & 0xff;
      const agentSession = new Session();
      const sourceSession = new Session({ id: new Uint8Array(16).fill(0xaa) });
      let t = 1_000;
      const agentOld = Connection.initiator({ crypto, random, staticKey: agentKey, remoteStatic: relayKey.publicKey, session: agentSession, timestamp: t, now: t });
      const source = Connection.responder({ crypto, random, staticKey: relayKey, now: t });
      const first = exchange(agentOld, source, t);
      expect(first.b.find((o) => o.type === 'hello')).toBeTruthy();
      source.accept(sourceSession, t);
      exchange(agentOld, source, t);
      // The relay writes its first 200,000 bytes; the agent writes 5,000 of its own.
      sourceSession.write(stream.subarray(0, 200_000));
      agentSession.write(Buffer.alloc(5_000, 1));
      t += 100; // past ackDelay: counts go both ways
      const got = exchange(source, agentOld, t, lostOnOldWire);
      // The source stops writing: CLOSE(DW_REDIRECTED) after what it put on the wire (lost with it, or not).
      source.close('DW_REDIRECTED');
      const closing = exchange(source, agentOld, t, lostOnOldWire === undefined ? undefined : 0);
      got.b.push(...closing.b);
      if (lostOnOldWire !== undefined) agentOld.abort(); // the old socket died instead
      expect(agentOld.isClosed).toBe(true);
      const sourceWire = sourceSession.wire;
      // The source stops writing and hands its state over (what the agent has not acknowledged).
      const state = decodeHandoverState(encodeHandoverState(exportSession(sourceSession, new Uint8Array(0), { cursor: 3 })));
      expect(state.state).toEqual({ cursor: 3 });
      expect(state.wire).toBe(sourceWire);
      const targetSession = restoreSession(state);
      expect(targetSession.received).toBe(sourceSession.received);
      sourceSession.close();
      // The target writes on from where the stream stood.
      targetSession.write(stream.subarray(200_000));
      // The agent dials the target with HANDOVER; its old connection is superseded once the target resumes.
      t += 10;
      const agentNew = Connection.initiator({ crypto, random, staticKey: agentKey, remoteStatic: relayKey.publicKey, session: agentSession, timestamp: t, now: t, handover: Buffer.from(RID, 'hex') });
      const target = Connection.responder({ crypto, random, staticKey: relayKey, now: t });
      const h = exchange(agentNew, target, t);
      const hello = h.b.find((o) => o.type === 'hello');
      expect(hello?.type === 'hello' && hello.hello.kind).toBe(HelloKind.HANDOVER);
      expect(hello?.type === 'hello' && hex(hello.hello.requestId!)).toBe(RID);
      target.accept(targetSession, t);
      const ready = exchange(agentNew, target, t);
      expect(ready.a.map((o) => o.type)).toEqual(['handover-ready']);
      expect(agentNew.isEstablished).toBe(false);
      // The old connection is closed: swap.
      agentNew.swap(t);
      const after = exchange(agentNew, target, t);
      expect(after.a[0]).toMatchObject({ type: 'established', resumed: true });
      expect(agentNew.isEstablished).toBe(true);
      const position = after.b.find((o) => o.type === 'position');
      const agentHad = got.b.length ? dataOf(got.b).length : 0;
      expect(position).toEqual({ type: 'position', received: agentHad });
      // The agent's stream as delivered: every byte once, in order, whatever the old wire lost.
      const delivered = Buffer.concat([dataOf(got.b), dataOf(ready.a), dataOf(after.a)]);
      expect(delivered.length).toBe(stream.length);
      expect(delivered.equals(stream)).toBe(true);
      // Re-sent: only bytes the old wire carried but the agent never had.
      const resent = sourceWire - agentHad;
      if (lostOnOldWire === undefined) {
        expect(agentHad).toBe(200_000);
        expect(resent).toBe(0);
      } else {
        expect(agentHad).toBeLessThan(200_000);
        expect(resent).toBeGreaterThan(0); // on the old wire, never delivered: sent again, and only those
      }
      // The agent's own stream: the target counts exactly what the source had delivered, nothing twice.
      expect(targetSession.received).toBe(5_000);
      expect(dataOf(first.a).length + dataOf(got.a).length + dataOf(after.b).length).toBe(5_000);
    });
  }

  it('a HANDOVER answered with anything but RESUMED leaves the session on the old connection', () => {
    const agentSession = new Session();
    const s1 = new Session({ id: new Uint8Array(16).fill(0xaa) });
    const old = Connection.initiator({ crypto, random, staticKey: agentKey, remoteStatic: relayKey.publicKey, session: agentSession, timestamp: 1, now: 0 });
    const r1 = Connection.responder({ crypto, random, staticKey: relayKey, now: 0 });
    exchange(old, r1, 0);
    r1.accept(s1, 0);
    exchange(old, r1, 0);
    const c = Connection.initiator({ crypto, random, staticKey: agentKey, remoteStatic: relayKey.publicKey, session: agentSession, timestamp: 2, now: 0, handover: Buffer.from(RID, 'hex') });
    const r2 = Connection.responder({ crypto, random, staticKey: relayKey, now: 0 });
    exchange(c, r2, 0);
    r2.refuse('DW_REDIRECT_UNKNOWN', 0);
    exchange(c, r2, 0);
    expect(c.isClosed).toBe(true);
    expect(c.closeError?.cause).toBe('DW_REDIRECT_UNKNOWN');
    expect(old.isClosed).toBe(false);
    expect(hex(agentSession.id)).toBe('aa'.repeat(16));
    // A responder cannot answer a HANDOVER with a fresh session.
    const c2 = Connection.initiator({ crypto, random, staticKey: agentKey, remoteStatic: relayKey.publicKey, session: agentSession, timestamp: 3, now: 0, handover: Buffer.from(RID, 'hex') });
    const r3 = Connection.responder({ crypto, random, staticKey: relayKey, now: 0 });
    exchange(c2, r3, 0);
    expect(() => r3.accept(new Session({ id: new Uint8Array(16).fill(0xbb) }), 0)).toThrow(/HANDOVER/);
  });
});
