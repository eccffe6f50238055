import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { fsyncDir } from '../shared/files.js';
import { diskBodyReader, receiveBody, type BodySink, type BodyStorage, type ReceivedBody } from './body-storage.js';

export { INLINE_MAX, type BodyStorage, type ReceivedBody } from './body-storage.js';

/** A large body is flushed to the disk in the background after every this many bytes written. */
export const SYNC_EVERY = 8 * 1024 * 1024;

/**
 * Message bodies on the relay's disk: large ones stream into `blobs/tmp`, are fsync'd and renamed into
 * `blobs/` before the message is stored; never whole in memory.
 */
export class Blobs implements BodyStorage {
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

  receive(stream: Readable | AsyncIterable<Uint8Array>, id: string, limit: number): Promise<ReceivedBody> {
    const tmpPath = path.join(this.tmp, id); // message ids are unique
    return receiveBody(stream, limit, async (): Promise<BodySink> => {
      let fh: fsp.FileHandle | undefined = await fsp.open(tmpPath, 'w', 0o600);
      // Written pages go to the disk while the rest arrives, so that the fsync before the 202 (and, with
      // cut-through, before the device may have the file: PROTOCOL 7.18) has only the last few MiB left.
      let unsynced = 0;
      let syncing: Promise<void> | undefined;
      return {
        write: async (parts) => {
          await fh!.writev(parts);
          for (const p of parts) unsynced += p.length;
          if (unsynced >= SYNC_EVERY && !syncing) {
            unsynced = 0;
            const f = fh!;
            syncing = f.datasync().then(
              () => void (syncing = undefined),
              () => void (syncing = undefined), // the fsync in finish() decides
            );
          }
        },
        finish: async () => {
          await syncing;
          await fh!.sync();
          await fh!.close();
          fh = undefined;
          const final = path.join(this.dir, id);
          await fsp.rename(tmpPath, final);
          fsyncDir(this.dir);
          return final;
        },
        abort: async () => {
          await syncing;
          await fh?.close().catch(() => {});
          await fsp.rm(tmpPath, { force: true });
        },
      };
    });
  }

  read(ref: string, offset: number, size: number, chunk: number): AsyncIterable<Uint8Array> {
    return diskBodyReader.read(ref, offset, size, chunk);
  }

  async remove(bodyPath: string): Promise<void> {
    if (path.dirname(bodyPath) === this.dir) await fsp.rm(bodyPath, { force: true });
  }
}
