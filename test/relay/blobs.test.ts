import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { Blobs, INLINE_MAX } from '../../src/relay/blobs.js';
import { tempDir } from '../helpers/cli.js';

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** The body cut into pieces of varied sizes (1 byte to 200 KiB), as a socket might deliver it. */
function pieces(body: Buffer): Buffer[] {
  const out: Buffer[] = [];
  const sizes = [1, 7, 4096, 65_536, 200_000, 3, 131_072];
  for (let at = 0, i = 0; at < body.length; i++) {
    const n = Math.min(sizes[i % sizes.length]!, body.length - at);
    out.push(body.subarray(at, at + n));
    at += n;
  }
  return out;
}

describe('relay blobs', () => {
  it('keeps small bodies inline and writes large ones whole, hashed, into the blob folder', async () => {
    const dir = tempDir();
    const blobs = new Blobs(dir);
    const small = randomBytes(INLINE_MAX);
    const inline = await blobs.receive(Readable.from(pieces(small)), 'm-small', 1 << 30);
    expect(inline).toEqual({ size: small.length, sha256: sha(small), body: new Uint8Array(small) });

    const large = randomBytes(3 * 1024 * 1024 + 12_345);
    const file = await blobs.receive(Readable.from(pieces(large)), 'm-large', 1 << 30);
    expect(file).toEqual({ size: large.length, sha256: sha(large), bodyPath: path.join(dir, 'm-large') });
    expect(fs.readFileSync(file.bodyPath!).equals(large)).toBe(true);
    expect(fs.readdirSync(path.join(dir, 'tmp'))).toEqual([]);
  });

  it('leaves nothing behind when a body is too large or its stream fails', async () => {
    const dir = tempDir();
    const blobs = new Blobs(dir);
    const big = randomBytes(2 * 1024 * 1024);
    await expect(blobs.receive(Readable.from(pieces(big)), 'm-big', 1024 * 1024)).rejects.toMatchObject({ code: 'DW_TOO_LARGE' });
    async function* broken() {
      yield randomBytes(1024 * 1024);
      yield randomBytes(1024 * 1024);
      throw new Error('client went away');
    }
    await expect(blobs.receive(broken(), 'm-broken', 1 << 30)).rejects.toThrow('client went away');
    expect(fs.readdirSync(dir).sort()).toEqual(['tmp']);
    expect(fs.readdirSync(path.join(dir, 'tmp'))).toEqual([]);
  });
});
