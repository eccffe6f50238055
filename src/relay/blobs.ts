import { createHash } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { DropwireError } from '../shared/errors.js';
import { fsyncDir } from '../shared/files.js';

/** Bodies up to this size are kept inline in the store (one group commit covers them). */
export const INLINE_MAX = 64 * 1024;
/** A large body is written to disk in pieces of about this size. */
const WRITE_BATCH = 1024 * 1024;

export interface ReceivedBody {
  size: number;
  sha256: string;
  /** Inline body (size <= INLINE_MAX)... */
  body?: Uint8Array;
  /** ...or the fsync'd file holding it. */
  bodyPath?: string;
}

/**
 * Message bodies on the relay's disk: large ones stream into `blobs/tmp`, are fsync'd and renamed into
 * `blobs/` before the message is stored; never whole in memory.
 */
export class Blobs {
  readonly dir: string;
  private readonly tmp: string;

  /** `keepTmp`: leave `blobs/tmp` alone (a CLI next to a relay that may be receiving uploads). */
  constructor(dir: string, o: { keepTmp?: boolean } = {}) {
    this.dir = dir;
    this.tmp = path.join(dir, 'tmp');
    fs.mkdirSync(this.tmp, { recursive: true });
    if (o.keepTmp) return;
    // Left over from a crash before the message was stored: never acknowledged, safe to drop.
    for (const f of fs.readdirSync(this.tmp)) fs.rmSync(path.join(this.tmp, f), { force: true });
  }

  /** The body of another message under a new id (a retry): a hard link, or a copy where links fail. */
  async duplicate(bodyPath: string, id: string): Promise<string> {
    const final = path.join(this.dir, id);
    try {
      await fsp.link(bodyPath, final);
    } catch {
      const tmpPath = path.join(this.tmp, id);
      await fsp.copyFile(bodyPath, tmpPath);
      const fh = await fsp.open(tmpPath, 'r+');
      await fh.sync();
      await fh.close();
      await fsp.rename(tmpPath, final);
    }
    fsyncDir(this.dir);
    return final;
  }

  /** Reads a body stream to its end, hashing it; refuses (DW_TOO_LARGE) past `limit` bytes, leaving nothing behind. */
  async receive(stream: Readable | AsyncIterable<Uint8Array>, id: string, limit: number): Promise<ReceivedBody> {
    const hash = createHash('sha256');
    let size = 0;
    let fh: fsp.FileHandle | undefined;
    const tmpPath = path.join(this.tmp, id); // message ids are unique
    // Chunks not yet written, and the one write in flight: the body goes to disk in WRITE_BATCH pieces
    // (writev) while the next piece arrives, not one awaited write per socket read.
    let held: Buffer[] = [];
    let heldBytes = 0;
    let writing: Promise<unknown> = Promise.resolve();
    const flush = async (): Promise<void> => {
      await writing;
      if (heldBytes === 0) return;
      const parts = held;
      held = [];
      heldBytes = 0;
      writing = fh!.writev(parts);
      writing.catch(() => {}); // handled where it is awaited; never an unhandled rejection meanwhile
    };
    try {
      for await (const chunk of stream as AsyncIterable<Buffer>) {
        size += chunk.length;
        if (size > limit) throw new DropwireError('DW_TOO_LARGE', `body larger than the limit of ${limit} bytes`);
        hash.update(chunk);
        held.push(chunk);
        heldBytes += chunk.length;
        if (!fh) {
          if (size <= INLINE_MAX) continue;
          fh = await fsp.open(tmpPath, 'w', 0o600);
        }
        if (heldBytes >= WRITE_BATCH) await flush();
      }
      const sha256 = hash.digest('hex');
      if (!fh) return { size, sha256, body: new Uint8Array(Buffer.concat(held, size)) };
      await flush();
      await writing;
      await fh.sync();
      await fh.close();
      fh = undefined;
      const final = path.join(this.dir, id);
      await fsp.rename(tmpPath, final);
      fsyncDir(this.dir);
      return { size, sha256, bodyPath: final };
    } catch (err) {
      await writing.catch(() => {});
      await fh?.close().catch(() => {});
      await fsp.rm(tmpPath, { force: true });
      throw err;
    }
  }

  async remove(bodyPath: string): Promise<void> {
    if (path.dirname(bodyPath) === this.dir) await fsp.rm(bodyPath, { force: true });
  }
}
