/** The upload tap of PROTOCOL 7.18 (src/relay/cut-through.ts): bytes in order, bounded, never stalling the upload for long. */
import { describe, expect, it } from 'vitest';
import { CUT_THROUGH_BUFFER, CUT_THROUGH_STALL_MS, CutThrough } from '../../src/relay/cut-through.js';
import type { MessageRecord } from '../../src/relay/store/types.js';

async function* pieces(n: number, size: number): AsyncIterable<Buffer> {
  for (let i = 0; i < n; i++) yield Buffer.alloc(size, i & 0xff);
}

async function drain(it: AsyncIterable<Buffer>): Promise<number> {
  let n = 0;
  for await (const p of it) n += p.length;
  return n;
}

describe('CutThrough (PROTOCOL 7.18)', () => {
  it('passes the upload through unchanged and hands the delivery every byte, in order, at most `max` per take', async () => {
    const ct = new CutThrough('m1', 40 * 1000);
    const upload = drain(ct.tap(pieces(40, 1000)));
    const got: number[] = [];
    for (let parts = await ct.take(4096); parts; parts = await ct.take(4096)) {
      const n = parts.reduce((a, p) => a + p.length, 0);
      expect(n).toBeLessThanOrEqual(4096);
      for (const p of parts) got.push(...p);
    }
    expect(await upload).toBe(40_000);
    expect(got.length).toBe(40_000);
    for (let i = 0; i < 40; i++) expect(got[i * 1000]).toBe(i);
    ct.stored({ id: 'm1', sha256: 'ab'.repeat(32) } as MessageRecord);
    expect(await ct.ended()).toMatchObject({ stored: { id: 'm1' } });
  });

  it('an upload far ahead of a delivery that takes nothing waits only CUT_THROUGH_STALL_MS, then goes on alone', async () => {
    const piece = 256 * 1024;
    const count = (2 * CUT_THROUGH_BUFFER) / piece;
    const ct = new CutThrough('m2', count * piece);
    const t0 = Date.now();
    expect(await drain(ct.tap(pieces(count, piece)))).toBe(count * piece);
    const waited = Date.now() - t0;
    expect(waited).toBeGreaterThanOrEqual(CUT_THROUGH_STALL_MS - 50);
    // Let go: what was queued is dropped and the delivery is told no more comes.
    expect(await ct.take(1 << 20)).toBeUndefined();
  });

  it('abort ends a waiting delivery with nothing more and tells it the upload failed', async () => {
    const ct = new CutThrough('m3', 10_000);
    const waiting = ct.take(1000);
    ct.abort();
    expect(await waiting).toBeUndefined();
    expect(await ct.ended()).toEqual({ aborted: true });
  });

  it('drop ends a delivery waiting for the end of an upload (its stream is gone)', async () => {
    const ct = new CutThrough('m4', 10_000);
    const ended = ct.ended();
    ct.drop();
    expect(await ended).toBeUndefined();
  });
});
