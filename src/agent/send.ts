import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { fromHex } from '../protocol/bytes.js';
import { SEND_WINDOW } from '../protocol/limits.js';
import { MessageType, type Headers, type Message } from '../protocol/messages.js';
import { Sealer } from '../protocol/seal.js';
import { DropwireError } from '../shared/errors.js';

/** Bytes of a file per SEND_CHUNK. */
export const SEND_CHUNK_SIZE = 256 * 1024;
/** Final statuses of a message (the relay's FINAL_STATUSES; the agent does not import the relay). */
export const FINAL = new Set(['handled', 'failed', 'rejected', 'expired', 'cancelled', 'unknown']);

/** Where the sender writes: the session of the agent (or of `dropwire send` dialing itself). */
export interface SendChannel {
  /** False: wait for `drained()` before writing more (PROTOCOL 5.7). */
  write<T extends MessageType>(type: T, header: Headers[T], body?: Uint8Array): boolean;
  drained(): Promise<void>;
  /** A stream is established and the relay may be written to. */
  readonly ready: boolean;
}

export interface SendProgress {
  sid: string;
  file: string;
  size: number;
  /** Bytes the relay has on disk (its last SEND_ACK). */
  acked: number;
  /** Bytes written into the session. */
  sent: number;
}

/** A file to send; `sealFor` is the recipient's public key (hex) when it is to be sealed (PROTOCOL 12). */
export interface Outgoing {
  file: string;
  to: string;
  /** Default: the file's base name. */
  filename?: string;
  /** Reuse an upload id (the outbox keeps it in its journal, so a restart resumes instead of sending twice). */
  sid?: string;
  seal?: { recipientPublic: string; sender: string; workDir: string };
  onProgress?: (p: SendProgress) => void;
}

export class SendRefused extends DropwireError {}

interface Active {
  sid: string;
  offer: Headers[typeof MessageType.SEND];
  path: string;
  /** A sealed copy to delete when done. */
  temp: string | undefined;
  acked: number;
  sent: number;
  /** Increments on every SEND: a pump of an earlier offer stops. */
  gen: number;
  pumping: boolean;
  onProgress: ((p: SendProgress) => void) | undefined;
  resolve: (id: string) => void;
  reject: (err: Error) => void;
  /** A DW_CHECKSUM answer: offered again from 0, once. */
  retried: boolean;
}

/** A new upload id: base-36 milliseconds, then 16 random hex digits (PROTOCOL 7.14: `^[0-9a-z]{1,64}$`). */
export function newSid(now = Date.now()): string {
  return `${now.toString(36)}${randomBytes(8).toString('hex')}`;
}

/**
 * The sending side of PROTOCOL 7.14-7.15 over one channel: offers files (SEND), streams them within the
 * window the relay grants (SEND_ACK), resolves with the message id (SEND_END), and watches statuses.
 * After a lost session, `newStream()` offers every unfinished upload again; the relay says what it has.
 */
export class Sender {
  private readonly ch: SendChannel;
  private readonly active = new Map<string, Active>();
  private readonly watchers = new Map<string, ((h: Headers[typeof MessageType.STATUS]) => void)[]>();

  constructor(ch: SendChannel) {
    this.ch = ch;
  }

  /** A stream to the relay is up: an offer goes out now. */
  get ready(): boolean {
    return this.ch.ready;
  }

  get busy(): boolean {
    return this.active.size > 0 || this.watchers.size > 0;
  }

  /** Sends one file; resolves with the relay's message id once it is stored durably there. */
  async send(o: Outgoing): Promise<string> {
    const stat = await fsp.stat(o.file).catch((err: unknown) => {
      throw new DropwireError('DW_FILE_NOT_FOUND', `cannot read ${o.file}: ${(err as Error).message}`, { cause: err });
    });
    if (!stat.isFile()) throw new DropwireError('DW_NOT_A_FILE', `${o.file} is not a regular file`);
    const filename = o.filename ?? path.basename(o.file);
    const sid = o.sid ?? newSid();
    let file = o.file;
    let temp: string | undefined;
    let size: number;
    let sha256: string;
    if (o.seal) {
      // Sealed into a file first: the envelope (and its SHA-256) must be the same bytes if the upload resumes.
      // A copy sealed before a stop is offered again as it is (same bytes: the relay resumes it).
      temp = path.join(o.seal.workDir, `${sid}.sealed`);
      const sum = `${temp}.json`;
      const kept = await fsp.readFile(sum, 'utf8').then((t) => JSON.parse(t) as { size: number; sha256: string }, () => undefined);
      if (kept && (await fsp.stat(temp).catch(() => undefined))?.size === kept.size) ({ size, sha256 } = kept);
      else {
        ({ size, sha256 } = await sealFile(o.file, temp, { recipientPublic: fromHex(o.seal.recipientPublic), sender: o.seal.sender, filename }));
        await fsp.writeFile(sum, JSON.stringify({ size, sha256 }));
      }
      file = temp;
    } else {
      ({ size, sha256 } = await hashFile(o.file));
    }
    const offer: Headers[typeof MessageType.SEND] = { sid, to: o.to, filename, size, sha256, ...(o.seal ? { sealed: true } : {}) };
    try {
      return await new Promise<string>((resolve, reject) => {
        const a: Active = { sid, offer, path: file, temp, acked: 0, sent: 0, gen: 0, pumping: false, onProgress: o.onProgress, resolve, reject, retried: false };
        this.active.set(sid, a);
        if (this.ch.ready) this.offer(a);
      });
    } finally {
      if (temp) await Promise.all([fsp.rm(temp, { force: true }), fsp.rm(`${temp}.json`, { force: true })]);
    }
  }

  /** The message's status now (`unknown` for one this device did not send), then each call to `onStatus`. */
  watch(id: string, onStatus: (h: Headers[typeof MessageType.STATUS]) => void): () => void {
    const list = this.watchers.get(id) ?? [];
    list.push(onStatus);
    this.watchers.set(id, list);
    if (this.ch.ready && list.length === 1) this.ch.write(MessageType.WATCH, { id });
    return () => {
      const l = this.watchers.get(id)?.filter((f) => f !== onStatus) ?? [];
      if (l.length === 0) this.watchers.delete(id);
      else this.watchers.set(id, l);
    };
  }

  /** Resolves with the final status of `id`, or the last one seen when `timeoutMs` passes. */
  waitFinal(id: string, timeoutMs: number): Promise<Headers[typeof MessageType.STATUS] & { final: boolean }> {
    return new Promise((resolve) => {
      let last: Headers[typeof MessageType.STATUS] = { id, status: 'unknown' };
      let seen = false;
      const stop = this.watch(id, (h) => {
        last = h;
        seen = true;
        if (FINAL.has(h.status)) done(true);
      });
      const timer = setTimeout(() => done(false), timeoutMs);
      const done = (final: boolean) => {
        clearTimeout(timer);
        stop();
        resolve({ ...last, final: final && seen });
      };
    });
  }

  /** A new stream (PROTOCOL 7.14): offer every unfinished upload again and renew the watches. */
  newStream(): void {
    for (const a of this.active.values()) this.offer(a);
    for (const id of this.watchers.keys()) this.ch.write(MessageType.WATCH, { id });
  }

  /** The messages of PROTOCOL 7.14-7.15 for the sender; false for any other. */
  onMessage(m: Message): boolean {
    switch (m.type) {
      case MessageType.SEND_ACK: {
        const a = this.active.get(m.header.sid);
        if (!a) return true;
        // The answer to SEND says where to start; later ones widen the window.
        if (m.header.have > a.sent) a.sent = m.header.have;
        a.acked = Math.max(a.acked, m.header.have);
        this.progress(a);
        void this.pump(a);
        return true;
      }
      case MessageType.SEND_END: {
        const a = this.active.get(m.header.sid);
        if (!a) return true;
        if (m.header.id) {
          this.active.delete(a.sid);
          a.acked = a.offer.size;
          this.progress(a);
          a.resolve(m.header.id);
        } else if (m.header.code === 'DW_CHECKSUM' && !a.retried) {
          a.retried = true;
          this.offer(a);
        } else {
          this.active.delete(a.sid);
          a.reject(new SendRefused(m.header.code ?? 'DW_REFUSED', m.header.message ?? 'the relay refused the file'));
        }
        return true;
      }
      case MessageType.STATUS: {
        for (const f of [...(this.watchers.get(m.header.id) ?? [])]) f(m.header);
        return true;
      }
      default:
        return false;
    }
  }

  /**
   * The relay ended the session over a message it does not know (DW_BAD_MESSAGE) while uploads were offered:
   * it predates PROTOCOL 7.14. Every upload fails (DW_RELAY_TOO_OLD) instead of being offered again forever.
   */
  relayRefusedMessages(): void {
    if (this.active.size === 0) return;
    const err = new SendRefused('DW_RELAY_TOO_OLD', 'the relay does not take files from hosts (it predates sending, PROTOCOL 7.14): update the relay');
    for (const a of this.active.values()) a.reject(err);
    this.active.clear();
  }

  /** Ends every upload and watch (the agent stops). */
  close(err: Error = new DropwireError('DW_CLOSED', 'stopped')): void {
    for (const a of this.active.values()) a.reject(err);
    this.active.clear();
    this.watchers.clear();
  }

  private offer(a: Active): void {
    a.gen++;
    a.acked = 0;
    a.sent = 0;
    a.pumping = false;
    this.ch.write(MessageType.SEND, a.offer);
  }

  private progress(a: Active): void {
    a.onProgress?.({ sid: a.sid, file: a.offer.filename, size: a.offer.size, acked: a.acked, sent: a.sent });
  }

  /** Writes SEND_CHUNKs from `sent` up to the window; waits for drain when the session is full. */
  private async pump(a: Active): Promise<void> {
    if (a.pumping) return;
    a.pumping = true;
    const gen = a.gen;
    const fh = await fsp.open(a.path, 'r');
    try {
      while (a.gen === gen && this.active.get(a.sid) === a && this.ch.ready) {
        const limit = Math.min(a.offer.size, a.acked + SEND_WINDOW);
        if (a.sent >= limit) break;
        const buf = new Uint8Array(Math.min(SEND_CHUNK_SIZE, limit - a.sent));
        const { bytesRead } = await fh.read(buf, 0, buf.length, a.sent);
        if (bytesRead <= 0) throw new DropwireError('DW_FILE_CHANGED', `${a.path} became shorter while it was being sent`);
        if (a.gen !== gen || !this.ch.ready) break;
        const ok = this.ch.write(MessageType.SEND_CHUNK, { sid: a.sid }, buf.subarray(0, bytesRead));
        a.sent += bytesRead;
        this.progress(a);
        if (!ok) await this.ch.drained();
      }
    } catch (err) {
      this.active.delete(a.sid);
      a.reject(err as Error);
    } finally {
      await fh.close();
      if (a.gen === gen) a.pumping = false;
    }
  }
}

async function hashFile(file: string): Promise<{ size: number; sha256: string }> {
  const hash = createHash('sha256');
  let size = 0;
  for await (const c of fs.createReadStream(file)) {
    hash.update(c as Buffer);
    size += (c as Buffer).length;
  }
  return { size, sha256: hash.digest('hex') };
}

/** Seals `src` into `dest` (PROTOCOL 12) a segment at a time, fsync'd; the envelope's size and SHA-256. */
async function sealFile(src: string, dest: string, o: { recipientPublic: Uint8Array; sender: string; filename: string }): Promise<{ size: number; sha256: string }> {
  await fsp.mkdir(path.dirname(dest), { recursive: true, mode: 0o700 });
  const sealer = new Sealer({ ...o, ephemeralPrivate: new Uint8Array(randomBytes(32)) });
  const hash = createHash('sha256');
  let size = 0;
  const out = await fsp.open(dest, 'w', 0o600);
  const put = async (parts: Uint8Array[]) => {
    for (const p of parts) {
      hash.update(p);
      size += p.length;
    }
    if (parts.length > 0) await out.writev(parts);
  };
  try {
    for await (const c of fs.createReadStream(src, { highWaterMark: 1024 * 1024 })) await put(sealer.push(c as Buffer));
    await put(sealer.finish());
    await out.sync();
  } finally {
    await out.close();
  }
  return { size, sha256: hash.digest('hex') };
}
