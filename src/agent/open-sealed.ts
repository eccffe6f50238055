import fs from 'node:fs';
import path from 'node:path';
import { Opener } from '../protocol/seal.js';
import { fsyncDir } from '../shared/files.js';

const STEP = 1024 * 1024;

/**
 * PROTOCOL 12.4: replaces the sealed envelope at `file` by its plaintext (written beside it, fsync'd, renamed
 * over it), a segment at a time, never whole in memory. Returns undefined when it opened, or why it did not
 * (the file is then left as it was). A stop midway leaves the envelope: the message is not yet in the
 * journal, so the relay sends it again and it is opened again.
 */
export function openSealed(file: string, o: { recipientPrivate: Uint8Array; sender: string; filename: string }): string | undefined {
  const opening = path.join(path.dirname(file), `.${path.basename(file)}.opening`);
  const size = fs.statSync(file).size;
  let opener: Opener;
  try {
    opener = new Opener({ ...o, sealedBytes: size });
  } catch (err) {
    return (err as Error).message;
  }
  const src = fs.openSync(file, 'r');
  const dst = fs.openSync(opening, 'w', 0o600);
  const buf = Buffer.allocUnsafe(STEP);
  try {
    for (let pos = 0; pos < size; ) {
      const n = fs.readSync(src, buf, 0, Math.min(STEP, size - pos), pos);
      if (n <= 0) throw new Error('the sealed file became shorter while it was opened');
      pos += n;
      for (const plain of opener.push(buf.subarray(0, n))) writeAll(dst, plain);
    }
    opener.finish();
    fs.fsyncSync(dst);
  } catch (err) {
    fs.closeSync(dst);
    fs.rmSync(opening, { force: true });
    return (err as Error).message;
  } finally {
    fs.closeSync(src);
  }
  fs.closeSync(dst);
  fs.renameSync(opening, file);
  fsyncDir(path.dirname(file));
  return undefined;
}

function writeAll(fd: number, bytes: Uint8Array): void {
  for (let off = 0; off < bytes.length; ) off += fs.writeSync(fd, bytes, off, bytes.length - off);
}
