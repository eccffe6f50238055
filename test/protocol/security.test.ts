import { describe, expect, it } from 'vitest';
import { Connection, type Output } from '../../src/protocol/connection.js';
import { ProtocolCode } from '../../src/protocol/errors.js';
import { isFresh } from '../../src/protocol/hello.js';
import { TCP_INITIATOR_TIMERS } from '../../src/protocol/limits.js';
import { Session } from '../../src/protocol/session.js';
import { nodeCrypto } from '../../src/protocol/crypto-node.js';
import { makeKeys, Pair, random } from '../helpers/protocol.js';

function closeOf(events: Output[]): string | undefined {
  const c = events.find((e) => e.type === 'close');
  return c?.type === 'close' ? c.error.code : undefined;
}

function pollAll(c: Connection, now: number): Output[] {
  const out: Output[] = [];
  for (let o = c.poll(now); o; o = c.poll(now)) out.push(o);
  return out;
}

/** An established pair plus the encrypted record frames the client sends for `data`. */
function capture(data: Uint8Array[]): { p: Pair; frames: Uint8Array[] } {
  const p = new Pair();
  p.connect();
  p.settle();
  for (const d of data) p.client.session.write(d);
  p.drainOutputs();
  const frames = p.c2s.splice(0);
  return { p, frames };
}

describe('tampering (PROTOCOL 4.3)', () => {
  it('any flipped bit in any record closes the connection with a code and delivers nothing from it', () => {
    const { frames } = capture([new Uint8Array(40).fill(7), new Uint8Array(3).fill(9)]);
    expect(frames.length).toBeGreaterThanOrEqual(1);
    const wire = Buffer.concat(frames);
    const codes = new Set<string>();
    for (let bit = 0; bit < wire.length * 8; bit++) {
      const { p } = capture([]);
      const bad = Buffer.from(wire);
      bad[bit >> 3]! ^= 1 << (bit & 7);
      p.s!.receive(bad, p.now);
      const before = p.server!.delivered.length;
      let outs = pollAll(p.s!, p.now);
      if (!closeOf(outs)) {
        // A longer length prefix waits for bytes that never come: the idle deadline ends it.
        p.now += 30_000;
        outs = outs.concat(pollAll(p.s!, p.now));
      }
      const code = closeOf(outs);
      expect(code, `bit ${bit}`).toBeDefined();
      codes.add(code!);
      expect(outs.some((o) => o.type === 'data'), `bit ${bit} delivered data`).toBe(false);
      expect(p.server!.delivered.length).toBe(before);
    }
    expect([...codes].every((c) => [ProtocolCode.BAD_MAC, ProtocolCode.IDLE_TIMEOUT, ProtocolCode.FRAME_TOO_LARGE].includes(c as never))).toBe(true);
    expect(codes.has(ProtocolCode.BAD_MAC)).toBe(true);
  });

  it('any flipped bit in handshake message 1 or 2 fails the handshake with a code', () => {
    const p = new Pair();
    p.connect();
    p.drainOutputs();
    const msg1 = Buffer.concat(p.c2s);
    const codes1 = new Set<string>();
    for (let bit = 0; bit < msg1.length * 8; bit++) {
      const s = Connection.responder({ crypto: nodeCrypto, random, staticKey: p.keys.relay, now: p.now });
      const bad = Buffer.from(msg1);
      bad[bit >> 3]! ^= 1 << (bit & 7);
      s.receive(bad, p.now);
      let outs = pollAll(s, p.now);
      if (!closeOf(outs)) outs = pollAll(s, p.now + 60_000);
      expect(outs.some((o) => o.type === 'hello'), `msg1 bit ${bit}`).toBe(false);
      codes1.add(closeOf(outs)!);
    }
    expect([...codes1].sort()).toEqual(
      [ProtocolCode.BAD_MAGIC, ProtocolCode.HANDSHAKE_FAILED, ProtocolCode.HANDSHAKE_TIMEOUT, ProtocolCode.FRAME_TOO_LARGE].filter((c) => codes1.has(c)).sort(),
    );
    expect(codes1.has(ProtocolCode.HANDSHAKE_FAILED)).toBe(true);

    p.transfer();
    p.drainOutputs();
    const msg2 = Buffer.concat(p.s2c);
    for (let bit = 0; bit < msg2.length * 8; bit++) {
      const q = new Pair({ keys: p.keys });
      q.connect();
      q.drainOutputs();
      q.transfer();
      q.drainOutputs();
      const real = Buffer.concat(q.s2c.splice(0));
      const bad = Buffer.from(real);
      bad[bit >> 3]! ^= 1 << (bit & 7);
      q.c!.receive(bad, q.now);
      let outs = pollAll(q.c!, q.now);
      if (!closeOf(outs)) outs = pollAll(q.c!, q.now + 60_000);
      expect(outs.some((o) => o.type === 'established'), `msg2 bit ${bit}`).toBe(false);
      expect(closeOf(outs), `msg2 bit ${bit}`).toMatch(/^DW_(HANDSHAKE_FAILED|HANDSHAKE_TIMEOUT|FRAME_TOO_LARGE)$/);
    }
  });
});

describe('replay (PROTOCOL 3.7)', () => {
  it('a replayed message 1 is refused by the timestamp guard; a replayed message 2 fails', () => {
    let last: number | undefined;
    const guard = (hello: { timestamp: number }) => {
      if (!isFresh(hello as never, last)) return 'DW_HANDSHAKE_REPLAYED';
      last = hello.timestamp;
      return undefined;
    };
    const keys = makeKeys();
    const p = new Pair({ keys });
    p.connect();
    p.drainOutputs();
    const msg1 = Buffer.concat(p.c2s);
    // First delivery: accepted.
    const s1 = Connection.responder({ crypto: nodeCrypto, random, staticKey: keys.relay, now: p.now });
    s1.receive(msg1, p.now);
    const hello1 = pollAll(s1, p.now).find((o) => o.type === 'hello');
    expect(hello1?.type === 'hello' && guard(hello1.hello)).toBeUndefined();
    s1.accept(new Session({ id: random(16) }), p.now);
    const msg2 = Buffer.concat(pollAll(s1, p.now).flatMap((o) => (o.type === 'write' ? [o.bytes] : [])));
    // The same bytes again, on a new connection: the guard refuses, no session is attached.
    const s2 = Connection.responder({ crypto: nodeCrypto, random, staticKey: keys.relay, now: p.now });
    s2.receive(msg1, p.now);
    const hello2 = pollAll(s2, p.now).find((o) => o.type === 'hello');
    const code = hello2?.type === 'hello' ? guard(hello2.hello) : 'none';
    expect(code).toBe('DW_HANDSHAKE_REPLAYED');
    s2.refuse(code!, p.now);
    expect(closeOf(pollAll(s2, p.now))).toBe(ProtocolCode.HANDSHAKE_REFUSED);
    // A captured message 2 given to a new initiator (new ephemeral key) cannot be read.
    const q = new Pair({ keys });
    q.connect();
    q.drainOutputs();
    q.c!.receive(msg2, q.now);
    expect(closeOf(pollAll(q.c!, q.now))).toBe(ProtocolCode.HANDSHAKE_FAILED);
  });

  it('a replayed record (same bytes again) fails authentication', () => {
    const { p, frames } = capture([new Uint8Array([1, 2, 3])]);
    p.s!.receive(Buffer.concat(frames), p.now);
    const first = pollAll(p.s!, p.now);
    expect(Buffer.concat(first.flatMap((o) => (o.type === 'data' ? [o.bytes] : [])))).toEqual(Buffer.from([1, 2, 3]));
    p.s!.receive(Buffer.concat(frames), p.now);
    const again = pollAll(p.s!, p.now);
    expect(closeOf(again)).toBe(ProtocolCode.BAD_MAC);
    expect(again.some((o) => o.type === 'data')).toBe(false);
  });
});

describe('authentication (PROTOCOL 3.5)', () => {
  it('an unknown device key is refused before any application data moves', () => {
    const p = new Pair({ refuse: () => 'DW_UNKNOWN_DEVICE', serverScript: [new Uint8Array([5])] });
    p.client.session.write(new Uint8Array([1, 2, 3]));
    p.connect();
    p.settle();
    const close = p.client.events.find((e) => e.type === 'close');
    expect(close?.type === 'close' && close.error).toMatchObject({ code: ProtocolCode.HANDSHAKE_REFUSED, cause: 'DW_UNKNOWN_DEVICE' });
    expect(p.server).toBeUndefined();
    expect(p.client.delivered).toEqual([]);
    expect(p.client.session.established).toBe(false);
  });

  it('an initiator pinned to another relay key cannot complete the handshake', () => {
    const p = new Pair();
    const wrong = makeKeys();
    p.connect();
    // The relay answers with a different static key than the one the agent pinned.
    p.s = Connection.responder({ crypto: nodeCrypto, random, staticKey: wrong.relay, now: p.now });
    p.settle();
    expect(closeOf(p.serverEvents)).toBe(ProtocolCode.HANDSHAKE_FAILED);
    expect(p.client.session.established).toBe(false);
  });
});

describe('deadlines (PROTOCOL 3.6, 4.5)', () => {
  it('a handshake not finished by its deadline is closed on both sides', () => {
    const p = new Pair({ timers: { handshakeTimeout: 5_000 } });
    p.connect();
    p.drainOutputs(); // msg1 written but never delivered
    expect(p.c!.nextDeadline()).toBe(p.now + 5_000);
    p.advance(4_999);
    expect(p.drainOutputs()).toBe(0);
    p.advance(1);
    p.drainOutputs();
    expect(p.c!.closeError?.code).toBe(ProtocolCode.HANDSHAKE_TIMEOUT);
    expect(p.s!.closeError?.code).toBe(ProtocolCode.HANDSHAKE_TIMEOUT);
  });

  it('a responder that got only part of message 1 closes at the deadline', () => {
    const p = new Pair();
    p.connect();
    p.drainOutputs();
    p.transfer(20);
    p.drainOutputs();
    p.advance(10_000);
    p.drainOutputs();
    expect(p.s!.closeError?.code).toBe(ProtocolCode.HANDSHAKE_TIMEOUT);
  });

  it('pings when quiet, and closes after the idle timeout when the peer is silent', () => {
    const p = new Pair({ timers: { pingInterval: 10_000, idleTimeout: 25_000 } });
    p.connect();
    p.settle();
    p.advance(10_000);
    p.drainOutputs();
    expect(p.c2s.length).toBe(1); // one PING
    p.settle(); // PONG comes back: alive
    p.advance(15_000);
    p.drainOutputs();
    expect(p.c!.isClosed).toBe(false);
    // Now the relay goes silent (a pulled cable: no FIN).
    for (let t = 0; t < 25; t++) {
      p.advance(1_000);
      p.drainOutputs();
      p.s2c = [];
      p.c2s = [];
    }
    expect(p.c!.closeError?.code).toBe(ProtocolCode.IDLE_TIMEOUT);
    expect(p.s!.closeError?.code).toBe(ProtocolCode.IDLE_TIMEOUT);
  });

  it('on raw TCP (4.5): idle heartbeats every 20 s are ACK, ACK, PING; only the PING is answered; the relay closes 25 s after a silent agent, the agent 100 s after a silent relay', () => {
    const p = new Pair({ clientTimers: TCP_INITIATOR_TIMERS });
    p.connect();
    p.settle();
    const seen = { up: 0, down: 0, pings: 0 };
    for (let s = 1; s <= 120; s++) {
      p.advance(1_000);
      p.drainOutputs();
      const up = p.c2s.length;
      const down = p.s2c.length;
      p.transfer();
      p.drainOutputs(); // the relay's answer, if any, is written now
      const answered = p.s2c.length;
      p.transfer();
      p.drainOutputs();
      if (up > 0) {
        expect(s % 20).toBe(0); // a heartbeat only when nothing was sent for 20 s
        seen.up += up;
        if (answered > down) seen.pings++;
      }
      seen.down += answered;
      expect(p.c!.isClosed || p.s!.isClosed).toBe(false);
    }
    // 20, 40: ACK (something received within 60 s); 60: PING; 80, 100: ACK; 120: PING.
    expect(seen).toEqual({ up: 6, down: 2, pings: 2 });

    // The relay process hangs: its kernel would still answer TCP keep-alive, so only the agent's own
    // deadline tells: nothing received for 100 s (the last PONG came at 120 s).
    for (let s = 1; s <= 99; s++) {
      p.advance(1_000);
      p.drainOutputs();
      p.c2s = [];
    }
    expect(p.c!.isClosed).toBe(false);
    p.advance(1_000);
    p.drainOutputs();
    expect(p.c!.closeError?.code).toBe(ProtocolCode.IDLE_TIMEOUT);

    // The other way round: an agent that hangs is told by the relay 25 s after its last heartbeat.
    const q = new Pair({ clientTimers: TCP_INITIATOR_TIMERS });
    q.connect();
    q.settle();
    q.advance(20_000);
    q.settle(); // one heartbeat (an ACK) arrives at 20 s
    q.advance(24_999);
    q.s!.poll(q.now);
    expect(q.s!.isClosed).toBe(false);
    q.advance(1);
    q.s!.poll(q.now);
    expect(q.s!.closeError?.code).toBe(ProtocolCode.IDLE_TIMEOUT);
  });

  it('while DATA it sent is unacknowledged, an agent with the long TCP idle timeout closes 25 s after sending it (ackTimeout, 4.5)', () => {
    const p = new Pair({ clientTimers: TCP_INITIATOR_TIMERS });
    p.connect();
    p.settle();
    p.advance(10_000);
    p.client.session.write(Uint8Array.of(1, 2, 3));
    p.drainOutputs();
    expect(p.c2s.length).toBe(1); // the DATA record
    // The relay hangs (or its host is gone while data is in flight: Linux sends no keep-alive probe then).
    for (let s = 1; s < 25; s++) {
      p.advance(1_000);
      p.drainOutputs();
      p.c2s = [];
    }
    expect(p.c!.isClosed).toBe(false);
    p.advance(1_000);
    p.drainOutputs();
    expect(p.c!.closeError?.code).toBe(ProtocolCode.IDLE_TIMEOUT);

    // Acknowledged in time: the long idle timeout applies again.
    const q = new Pair({ clientTimers: TCP_INITIATOR_TIMERS });
    q.connect();
    q.settle();
    q.advance(10_000);
    q.client.session.write(Uint8Array.of(1, 2, 3));
    q.settle();
    q.advance(50); // the relay's ACK is due after ackDelay
    q.settle();
    expect(q.client.session.buffered).toBe(0);
    for (let s = 1; s <= 90; s++) {
      q.advance(1_000);
      q.settle();
    }
    expect(q.c!.isClosed || q.s!.isClosed).toBe(false);
  });

  it('with the default timers (WebSocket, 4.5) every idle heartbeat is a PING and is answered', () => {
    const p = new Pair();
    p.connect();
    p.settle();
    let answered = 0;
    for (let s = 1; s <= 60; s++) {
      p.advance(1_000);
      p.drainOutputs();
      const up = p.c2s.length;
      p.transfer();
      p.drainOutputs();
      if (up > 0) {
        expect(s % 10).toBe(0);
        expect(p.s2c.length).toBe(1); // the PONG
        answered++;
      }
      p.transfer();
      p.drainOutputs();
    }
    expect(answered).toBe(6);
  });
});
