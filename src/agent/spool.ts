import { createHash, type Hash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { DropwireError } from '../shared/errors.js';
import { fsyncDir } from '../shared/files.js';
import { safeName } from './names.js';

const ID = /^[0-9a-z]{1,64}$/;

/**
 * Incoming files on the host's disk. A transfer writes `<id>.part`; once all bytes are there and the
 * SHA-256 matches it is fsync'd and renamed to `<id>/<safe name>`, so that a handler given the path (`cp "$1"
 * orders/`) sees the file's own name. The relay's message id is checked before it becomes a path, and the
 * name from the network only ever becomes one component, through `safeName`.
 */
export class Spool {
  readonly dir: string;

  constructor(dir: string) {
    this.dir = dir;
    fs.mkdirSync(dir, { recursive: true });
  }

  static checkId(id: string): void {
    if (!ID.test(id)) throw new DropwireError('DW_BAD_MESSAGE', `message id '${id.slice(0, 80)}' is not acceptable`);
  }

  partPath(id: string): string {
    Spool.checkId(id);
    return path.join(this.dir, `${id}.part`);
  }

  /** Where a complete file lives: `<id>/<safe name>` (the folder is the message's, the name the sender's). */
  filePath(id: string, name: string): string {
    Spool.checkId(id);
    return path.join(this.dir, id, safeName(name));
  }

  /**
   * The complete file's path, moving a file a version before this layout spooled as a plain `<id>` into
   * `<id>/<safe name>` first (by a rename to `<id>.legacy`, so a stop in between loses nothing).
   */
  locate(id: string, name: string): string {
    const file = this.filePath(id, name);
    const plain = path.join(this.dir, id);
    const legacy = `${plain}.legacy`;
    if (isFile(plain)) {
      fs.renameSync(plain, legacy);
      fsyncDir(this.dir);
    }
    if (isFile(legacy)) {
      fs.mkdirSync(plain, { recursive: true });
      fs.renameSync(legacy, file);
      fsyncDir(plain);
      fsyncDir(this.dir);
    }
    return file;
  }

  /** Unfinished transfers and how many bytes of each are on disk (for HELLO). */
  partials(): { id: string; have: number }[] {
    const out: { id: string; have: number }[] = [];
    for (const f of fs.readdirSync(this.dir)) {
      const m = /^([0-9a-z]+)\.part$/.exec(f);
      if (!m) continue;
      out.push({ id: m[1]!, have: fs.statSync(path.join(this.dir, f)).size });
    }
    return out;
  }

  /** Starts (or continues, from `offset`) a transfer. */
  begin(h: TransferHeader): Transfer {
    return new Transfer(this, h);
  }

  /** The message's folder (whatever a handler or the sender's name left in it), its part and a legacy file. */
  remove(id: string): void {
    Spool.checkId(id);
    const plain = path.join(this.dir, id);
    fs.rmSync(plain, { recursive: true, force: true });
    fs.rmSync(`${plain}.legacy`, { force: true });
    fs.rmSync(this.partPath(id), { force: true });
  }
}

/** What a FILE message says about the file (PROTOCOL 7.4); no `sha256` yet for cut-through (7.18). */
export interface TransferHeader {
  id: string;
  filename: string;
  size: number;
  sha256?: string | undefined;
  offset: number;
}

const isFile = (p: string): boolean => fs.statSync(p, { throwIfNoEntry: false })?.isFile() === true;

export class Transfer {
  readonly id: string;
  readonly filename: string;
  readonly size: number;
  /** The whole file's SHA-256: from FILE, or, for cut-through (PROTOCOL 7.18), from FILE_END. */
  sha256: string | undefined;
  /** Where this transfer started (bytes already on disk that were kept). */
  readonly resumedFrom: number;
  written: number;
  private readonly fd: number;
  private readonly hash: Hash;
  private readonly spool: Spool;

  constructor(spool: Spool, h: TransferHeader) {
    this.spool = spool;
    this.id = h.id;
    this.filename = h.filename;
    this.size = h.size;
    this.sha256 = h.sha256;
    const part = spool.partPath(h.id);
    this.fd = fs.openSync(part, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
    const have = fs.fstatSync(this.fd).size;
    // Keep what is on disk up to the offset the relay resumes from; anything past it is dropped.
    const keep = Math.min(have, h.offset);
    if (keep !== h.offset) {
      fs.closeSync(this.fd);
      throw new DropwireError('DW_SPOOL_MISMATCH', `relay resumes ${h.id} at ${h.offset} but ${have} bytes are on disk`);
    }
    fs.ftruncateSync(this.fd, keep);
    this.hash = createHash('sha256');
    const buf = Buffer.allocUnsafe(1024 * 1024);
    for (let pos = 0; pos < keep; ) {
      const n = fs.readSync(this.fd, buf, 0, Math.min(buf.length, keep - pos), pos);
      if (n <= 0) break;
      this.hash.update(buf.subarray(0, n));
      pos += n;
    }
    this.written = keep;
    this.resumedFrom = keep;
  }

  get complete(): boolean {
    return this.written >= this.size;
  }

  /** Every byte is here and the hash to check them against is known: `finish` may run. */
  get ready(): boolean {
    return this.complete && this.sha256 !== undefined;
  }

  write(bytes: Uint8Array): void {
    if (this.written + bytes.length > this.size) throw new DropwireError('DW_BAD_MESSAGE', `more bytes than the ${this.size} announced for ${this.id}`);
    let off = 0;
    while (off < bytes.length) off += fs.writeSync(this.fd, bytes, off, bytes.length - off, this.written + off);
    this.hash.update(bytes);
    this.written += bytes.length;
  }

  /**
   * fsync, verify, rename into `<id>/<safe name>`, fsync both folders. Returns false (and removes the part)
   * when the SHA-256 does not match. A stop before the rename leaves the part (resumed, then finished again);
   * one after it, before the journal has the message, gets the file again from the relay, which replaces it.
   */
  finish(): boolean {
    try {
      fs.fsyncSync(this.fd);
    } finally {
      fs.closeSync(this.fd);
    }
    if (this.sha256 === undefined) throw new DropwireError('DW_BAD_MESSAGE', `no SHA-256 to check ${this.id} against`);
    const digest = this.hash.digest('hex');
    if (digest !== this.sha256) {
      fs.rmSync(this.spool.partPath(this.id), { force: true });
      return false;
    }
    const file = this.spool.filePath(this.id, this.filename);
    const folder = path.dirname(file);
    fs.mkdirSync(folder, { recursive: true, mode: 0o700 });
    fs.renameSync(this.spool.partPath(this.id), file);
    fsyncDir(folder);
    fsyncDir(this.spool.dir);
    return true;
  }

  /** Stops without finishing; the part stays for a later resume. */
  abandon(): void {
    try {
      fs.closeSync(this.fd);
    } catch {
      // already closed
    }
  }
}
