import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ProtocolCode } from '../../src/protocol/errors.js';
import { joined, Pair, seededRandom } from '../helpers/protocol.js';

const script = (seed: number, sizes: number[]): Uint8Array[] => {
  const r = seededRandom(seed);
  return sizes.map((n) => r(n));
};

function closeCodes(events: { type: string; code?: string }[]): string[] {
  return events.filter((e) => e.type === 'lost').map((e) => e.code ?? '');
}

describe('session over one connection', () => {
  it('establishes and carries both streams, whole or byte by byte', () => {
    for (const chunk of [Infinity, 1, 7]) {
      const server = script(1, [5, 70_000, 1]);
      const p = new Pair({ serverScript: server });
      const client = script(2, [3, chunk === 1 ? 10_000 : 100_000]);
      for (const b of client) p.client.session.write(b);
      p.connect();
      p.settle(chunk);
      p.advance(100); // the ack delay
      p.settle(chunk);
      expect(p.client.events.find((e) => e.type === 'established')).toMatchObject({ resumed: false });
      expect(joined(p.server!.delivered)).toEqual(joined(client));
      expect(joined(p.client.delivered)).toEqual(joined(server));
      // Everything acknowledged: the replay buffers are empty.
      expect(p.client.session.buffered).toBe(0);
      expect(p.server!.session.buffered).toBe(0);
    }
  });

  it('delivers the same bytes whatever the wire chunking (property)', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 1, max: 5000 }), { minLength: 1, maxLength: 6 }), fc.integer({ min: 1, max: 3000 }), fc.nat(), (sizes, chunk, seed) => {
        const p = new Pair({ serverScript: script(seed + 1, sizes) });
        const mine = script(seed, sizes);
        for (const b of mine) p.client.session.write(b);
        p.connect();
        p.settle(chunk);
        expect(joined(p.server!.delivered)).toEqual(joined(mine));
        expect(joined(p.client.delivered)).toEqual(joined(script(seed + 1, sizes)));
      }),
      { numRuns: 60 },
    );
  });
});

describe('resume after a cut (PROTOCOL 5.5)', () => {
  const limits = { ackEvery: 300, ackDelay: 0 };

  /** One scripted exchange; the direction `dir` is cut after `k` bytes. Returns the pair after recovery. */
  function runCut(dir: 'c2s' | 's2c', k: number, clientScript: Uint8Array[], serverScript: Uint8Array[]): Pair {
    const p = new Pair({ limits, serverScript });
    for (const b of clientScript) p.client.session.write(b);
    p.connect();
    let sent = 0;
    for (let round = 0; round < 10_000; round++) {
      const outs = p.drainOutputs();
      const queue = dir === 'c2s' ? p.c2s : p.s2c;
      const other = dir === 'c2s' ? p.s2c : p.c2s;
      const to = dir === 'c2s' ? p.s! : p.c!;
      const from = dir === 'c2s' ? p.c! : p.s!;
      let moved = 0;
      while (queue.length > 0 && sent < k) {
        const head = queue[0]!;
        const n = Math.min(head.length, k - sent);
        to.receive(head.subarray(0, n), p.now);
        if (n === head.length) queue.shift();
        else queue[0] = head.subarray(n);
        sent += n;
        moved += n;
      }
      while (other.length > 0) {
        const head = other.shift()!;
        from.receive(head, p.now);
        moved += head.length;
      }
      if (sent >= k) break;
      if (outs === 0 && moved === 0) break;
    }
    p.drainOutputs(); // the bytes that arrived are processed; what they make is lost with the connection
    p.cut();
    p.advance(10);
    p.connect();
    p.settle();
    return p;
  }

  it('recovers exactly at every byte boundary of both directions', () => {
    const clientScript = script(11, [300, 1, 400]);
    const serverScript = script(12, [200, 500]);
    // Length of an uncut run, per direction, to know every boundary.
    const total = { c2s: 0, s2c: 0 };
    {
      const p = new Pair({ limits, serverScript });
      for (const b of clientScript) p.client.session.write(b);
      p.connect();
      for (let i = 0; i < 1000; i++) {
        const outs = p.drainOutputs();
        total.c2s += p.c2s.reduce((n, b) => n + b.length, 0);
        total.s2c += p.s2c.reduce((n, b) => n + b.length, 0);
        if (outs === 0 && p.transfer() === 0) break;
      }
    }
    expect(total.c2s).toBeGreaterThan(700);
    let resumed = 0;
    for (const dir of ['c2s', 's2c'] as const) {
      for (let k = 0; k <= total[dir]; k++) {
        const p = runCut(dir, k, clientScript, serverScript);
        const got = { server: joined(p.server!.delivered), client: joined(p.client.delivered) };
        if (!Buffer.from(got.server).equals(Buffer.from(joined(clientScript))) || !Buffer.from(got.client).equals(Buffer.from(joined(serverScript)))) {
          throw new Error(`cut ${dir} at byte ${k}: delivered ${got.server.length}/${got.client.length} bytes, expected the scripts exactly`);
        }
        if (p.client.events.some((e) => e.type === 'established' && (e as { resumed: boolean }).resumed)) resumed++;
      }
    }
    // Most cut points fall after the handshake and must resume rather than start over.
    expect(resumed).toBeGreaterThan((total.c2s + total.s2c) * 0.8);
  });

  it('random cuts, random chunking, several reconnects (property)', () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 1, max: 20_000 }), { minLength: 1, maxLength: 5 }),
        fc.array(fc.integer({ min: 1, max: 20_000 }), { minLength: 0, maxLength: 5 }),
        fc.array(fc.integer({ min: 1, max: 30_000 }), { minLength: 1, maxLength: 6 }),
        fc.integer({ min: 1, max: 4096 }),
        fc.nat(),
        (cSizes, sSizes, cuts, chunk, seed) => {
          const clientScript = script(seed, cSizes);
          const serverScript = script(seed + 7, sSizes);
          const p = new Pair({ limits: { ackEvery: 2048, ackDelay: 0 }, serverScript });
          // Writes are interleaved with the cuts: half before the first connection, half later.
          const half = Math.ceil(clientScript.length / 2);
          for (const b of clientScript.slice(0, half)) p.client.session.write(b);
          let writesLeft = clientScript.slice(half);
          for (const budget of cuts) {
            p.connect();
            let moved = 0;
            for (let i = 0; i < 10_000 && moved < budget; i++) {
              p.drainOutputs();
              const m = p.transfer(Math.min(chunk, budget - moved), chunk);
              moved += m;
              if (m === 0 && p.drainOutputs() === 0) break;
            }
            if (writesLeft.length > 0) {
              p.client.session.write(writesLeft[0]!);
              writesLeft = writesLeft.slice(1);
            }
            p.cut();
            p.advance(5);
          }
          for (const b of writesLeft) p.client.session.write(b);
          p.connect();
          p.settle(chunk);
          expect(joined(p.server!.delivered)).toEqual(joined(clientScript));
          expect(joined(p.client.delivered)).toEqual(joined(serverScript));
        },
      ),
      { numRuns: 150 },
    );
  });
});

describe('replay buffer (PROTOCOL 5.6)', () => {
  it('stays within its capacity and back-pressures at high water', () => {
    const p = new Pair({ limits: { replayCapacity: 64 * 1024, highWater: 48 * 1024, lowWater: 16 * 1024 } });
    const s = p.client.session;
    let refusedAt = -1;
    for (let i = 0; i < 100; i++) {
      if (!s.write(new Uint8Array(1024)) && refusedAt < 0) refusedAt = i;
      expect(s.buffered).toBeLessThanOrEqual(64 * 1024);
    }
    expect(refusedAt).toBe(47);
  });

  it('an overrun buffer ends the session with a coded loss, not a gap', () => {
    const p = new Pair({ limits: { replayCapacity: 32 * 1024, highWater: 16 * 1024, lowWater: 8 * 1024 } });
    p.connect();
    p.settle();
    p.cut(); // disconnected: nothing is acknowledged any more
    for (let i = 0; i < 40; i++) p.client.session.write(new Uint8Array(1024).fill(i));
    expect(p.client.session.buffered).toBe(32 * 1024);
    expect(p.client.session.overrun).toBe(true);
    p.connect();
    p.settle();
    expect(closeCodes(p.client.events)).toContain(ProtocolCode.SESSION_LOST);
    // Nothing with a hole in it was delivered.
    expect(joined(p.server!.delivered).length).toBe(0);
  });

  it('an overrun while connected tells the peer (CLOSE), and the agent can start a new session after', () => {
    const p = new Pair({ limits: { replayCapacity: 32 * 1024, highWater: 16 * 1024, lowWater: 8 * 1024 } });
    p.connect();
    p.settle();
    // Written faster than acknowledged (nothing crosses the wire meanwhile): the oldest unsent bytes go.
    for (let i = 0; i < 40; i++) p.client.session.write(new Uint8Array(1024).fill(i));
    p.drainOutputs();
    p.transfer();
    p.drainOutputs();
    expect(closeCodes(p.client.events)).toContain(ProtocolCode.SESSION_LOST);
    expect(closeCodes(p.server!.events)).toContain(ProtocolCode.SESSION_LOST);
    expect(p.server!.session.closed).toBe(true);
    // The agent resets its session and dials again: a new session, not a dead end.
    p.client.session.reset();
    p.client.session.write(new Uint8Array([42]));
    p.connect();
    p.settle();
    expect(p.client.events.filter((e) => e.type === 'established').map((e) => (e as { resumed: boolean }).resumed)).toEqual([false, false]);
    expect(Buffer.from(joined(p.server!.delivered))).toEqual(Buffer.from([42]));
  });

  it('a relay that forgot the session answers LOST and both start over', () => {
    const p = new Pair({ serverScript: [new Uint8Array([1, 2, 3])] });
    p.client.session.write(new Uint8Array([9]));
    p.connect();
    p.settle();
    p.cut();
    p.sessions.clear(); // the relay restarted
    p.connect();
    p.settle();
    expect(closeCodes(p.client.events)).toEqual([ProtocolCode.SESSION_LOST]);
    expect(p.client.events.filter((e) => e.type === 'established').map((e) => (e as { resumed: boolean }).resumed)).toEqual([false, false]);
    expect(p.client.session.received).toBe(3);
  });
});
