import { createHash, type Hash } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { SEND_WINDOW } from '../protocol/limits.js';
import { MessageType, type Headers, type Message } from '../protocol/messages.js';
import { plainSize } from '../protocol/seal.js';
import { DropwireError } from '../shared/errors.js';
import { fsyncDir } from '../shared/files.js';
import type { Logger } from '../shared/log.js';
import { Blobs } from './blobs.js';
import { INLINE_MAX, type BodyStorage } from './body-storage.js';
import { scopeAllows, type EventFeed } from './events.js';
import type { AgentSender, Hub, PeerReply, StatusEvent } from './hub.js';
import { RESERVED_KEY_PREFIX } from './message-actions.js';
import { FINAL_STATUSES, type MessageRecord, type Store } from './store/types.js';

/** The relay acknowledges an upload's bytes (SEND_ACK) at least every this many bytes written. */
export const SEND_ACK_EVERY = 1024 * 1024;
/** Partial uploads nobody resumed for this long are deleted when the relay starts. */
export const UPLOAD_KEEP_MS = 7 * 24 * 3600_000;
/** Messages a device may watch at once (WATCH); beyond, the oldest watch is dropped. */
const MAX_WATCHES = 10_000;
const DEFAULT_DEADLINE_MS = 120_000;

export interface UploadsOptions {
  store: Store;
  hub: Hub;
  /** Where complete large bodies go: this relay's disk (renamed in), or Redis on a cluster (copied in). */
  blobs: BodyStorage;
  /** Uploads in progress (resumable, this process's disk); default `uploads/` beside a disk `blobs/`. */
  uploadsDir?: string;
  feed: EventFeed;
  log: Logger;
  maxBody: number;
  now?: () => number;
  newId: (now: number) => string;
}

/** One upload being received from an agent, on its current stream. */
interface Upload {
  device: string;
  offer: Headers[typeof MessageType.SEND];
  file: string;
  fh: fsp.FileHandle;
  /** Bytes accepted from the stream (written, or queued for writing). */
  received: number;
  /** Bytes on the relay's disk. */
  have: number;
  /** The `have` last told the agent (SEND_ACK): it may send up to this + SEND_WINDOW. */
  acked: number;
  /** Running hash, when every byte went through this upload (else the file is read again at the end). */
  hash: Hash | undefined;
  writing: Promise<void>;
  reply: PeerReply;
  done: boolean;
}

class Refused extends DropwireError {}

/**
 * Files agents send (PROTOCOL 7.14): each upload streams into `uploads/DEVICE/` (beside `blobs/`), is acknowledged as it
 * reaches the disk (back-pressure: the agent stays within SEND_WINDOW of the last SEND_ACK), resumes from
 * the bytes on disk after a lost session, and once complete and checked becomes a message like an HTTP one.
 * Also WATCH (7.15): the status of a message the device sent, now and when it is final.
 */
export class Uploads implements AgentSender {
  private readonly o: UploadsOptions;
  private readonly now: () => number;
  private readonly dir: string;
  /** Uploads by device, then by upload id. */
  private readonly open = new Map<string, Map<string, Upload>>();
  /** Watched message ids → the streams that wait for its final status. */
  private readonly watches = new Map<string, { device: string; reply: PeerReply }[]>();
  private watchCount = 0;

  constructor(o: UploadsOptions) {
    this.o = o;
    this.now = o.now ?? Date.now;
    // Beside blobs/ (same file system: a complete upload is renamed into it), kept across restarts.
    const dir = o.uploadsDir ?? (o.blobs instanceof Blobs ? path.join(path.dirname(o.blobs.dir), 'uploads') : undefined);
    if (!dir) throw new Error('Uploads: uploadsDir is required when bodies are not on this disk');
    this.dir = dir;
    fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    this.sweep();
    o.hub.on('status', (e: StatusEvent) => {
      if (FINAL_STATUSES.has(e.status) && this.watches.has(e.id)) void this.tellWatchers(e.id);
    });
  }

  onMessage(device: string, m: Message, reply: PeerReply): boolean {
    switch (m.type) {
      case MessageType.SEND:
        void this.offer(device, m.header, reply).catch((err: unknown) => this.failed(device, m.header.sid, reply, err));
        return true;
      case MessageType.SEND_CHUNK:
        this.chunk(device, m.header.sid, m.parts);
        return true;
      case MessageType.WATCH:
        void this.watch(device, m.header.id, reply).catch((err: unknown) => this.o.log.warn({ err, device, id: m.header.id }, 'watch failed'));
        return true;
      default:
        return false;
    }
  }

  // --- uploads ---------------------------------------------------------------------------------

  /** SEND: checks the sender may send there, then answers where to start (SEND_ACK) or refuses (SEND_END). */
  private async offer(device: string, h: Headers[typeof MessageType.SEND], reply: PeerReply): Promise<void> {
    const { store, log } = this.o;
    const sender = await store.getDevice(device);
    // PROTOCOL 7.14: a device sends nowhere until an operator allows it (`relay device allow`).
    if (!sender?.sendTo || !scopeAllows(sender.sendTo, h.to)) {
      throw new Refused('DW_FORBIDDEN', `device '${device}' may not send to '${h.to}' (relay device allow ${device} --send-to GLOB)`);
    }
    const target = await store.getDevice(h.to);
    // Not a device: a site that receives (`relay token add NAME --receive`), pushed to or pulling.
    const site = target ? undefined : (await store.listTokens()).find((t) => t.name === h.to && t.receive);
    if (!target && !site) throw new Refused('DW_UNKNOWN_DEVICE', `no device or receiving site named '${h.to}'`);
    if (h.sealed && !target?.publicKey) throw new Refused('DW_NO_KEY', `'${h.to}' has no key to seal to (a site, or a device not enrolled yet)`);
    if (h.size > this.o.maxBody) throw new Refused('DW_TOO_LARGE', `${h.size} bytes is above the relay's limit of ${this.o.maxBody}`);
    if (h.sealed && plainSize(h.size) === undefined) throw new Refused('DW_BAD_SEAL', `no sealed envelope is ${h.size} bytes long`);
    const mine = this.open.get(device) ?? new Map<string, Upload>();
    this.open.set(device, mine);
    const before = mine.get(h.sid);
    if (before) {
      // The same upload offered again (a new stream): finish the writes of the old one first.
      mine.delete(h.sid);
      await before.writing.catch(() => {});
      await before.fh.close().catch(() => {});
    }
    const folder = path.join(this.dir, device);
    await fsp.mkdir(folder, { recursive: true, mode: 0o700 });
    // Named by the upload and its content: a different file under a reused id starts from 0.
    const file = path.join(folder, `${h.sid}.${h.sha256}${h.sealed ? '.sealed' : ''}`);
    const fh = await fsp.open(file, 'a+', 0o600);
    let have = (await fh.stat()).size;
    if (have > h.size) {
      await fh.truncate(0);
      have = 0;
    }
    const up: Upload = { device, offer: h, file, fh, received: have, have, acked: have, hash: have === 0 ? createHash('sha256') : undefined, writing: Promise.resolve(), reply, done: false };
    mine.set(h.sid, up);
    if (have > 0) log.info({ device, sid: h.sid, have, size: h.size }, 'upload resumed from the bytes the relay has');
    reply.send(MessageType.SEND_ACK, { sid: h.sid, have });
    if (have === h.size) up.writing = up.writing.then(() => this.complete(up));
  }

  /** SEND_CHUNK: queued for writing in order; more than the window, or beyond the size, is a protocol error. */
  private chunk(device: string, sid: string, parts: Uint8Array[]): void {
    const up = this.open.get(device)?.get(sid);
    const n = parts.reduce((a, p) => a + p.length, 0);
    if (!up || up.done) throw Object.assign(new Error(`SEND_CHUNK for upload '${sid}' without its SEND_ACK`), { code: 'DW_BAD_MESSAGE' });
    if (up.received + n > up.offer.size) throw Object.assign(new Error(`upload '${sid}' goes past its size ${up.offer.size}`), { code: 'DW_BAD_MESSAGE' });
    if (up.received + n > up.acked + SEND_WINDOW) throw Object.assign(new Error(`upload '${sid}' goes past its window`), { code: 'DW_BAD_MESSAGE' });
    if (n === 0) return;
    up.received += n;
    // The parts are views of received records: copied, since they are written after this turn.
    const copy = parts.map((p) => Buffer.from(p));
    up.writing = up.writing.then(async () => {
      if (up.done) return;
      await up.fh.writev(copy);
      for (const c of copy) up.hash?.update(c);
      up.have += n;
      if (up.have === up.offer.size) return this.complete(up);
      if (up.have - up.acked >= SEND_ACK_EVERY) {
        up.acked = up.have;
        up.reply.send(MessageType.SEND_ACK, { sid, have: up.have });
      }
    });
    up.writing.catch((err: unknown) => this.failed(device, sid, up.reply, err));
  }

  /** All bytes are here: fsync, check the SHA-256, store the message durably, then SEND_END with its id. */
  private async complete(up: Upload): Promise<void> {
    up.done = true;
    try {
      await this.store(up);
    } finally {
      // Only now: an offer of the same upload meanwhile waits for this one (`writing`) before it looks at the disk.
      if (this.open.get(up.device)?.get(up.offer.sid) === up) this.open.get(up.device)!.delete(up.offer.sid);
    }
  }

  private async store(up: Upload): Promise<void> {
    const { store, blobs, hub, feed, log } = this.o;
    const h = up.offer;
    await up.fh.sync();
    await up.fh.close();
    const sha256 = up.hash ? up.hash.digest('hex') : await hashFile(up.file);
    if (sha256 !== h.sha256) {
      await fsp.rm(up.file, { force: true });
      log.warn({ device: up.device, sid: h.sid }, 'upload SHA-256 mismatch; the sender starts again');
      up.reply.send(MessageType.SEND_END, { sid: h.sid, code: 'DW_CHECKSUM', message: 'the bytes received do not match the SHA-256 offered; send the file again from 0' });
      return;
    }
    const now = this.now();
    const id = this.o.newId(now);
    let body: Uint8Array | undefined;
    let bodyPath: string | undefined;
    if (h.size <= INLINE_MAX) {
      body = new Uint8Array(await fsp.readFile(up.file));
    } else if (blobs instanceof Blobs) {
      bodyPath = path.join(blobs.dir, id);
      await fsp.rename(up.file, bodyPath);
      fsyncDir(blobs.dir);
    } else {
      // Bodies every node reads (Redis): copied in, in pieces; the upload file stays until the message is stored.
      const copy = await blobs.receive(fs.createReadStream(up.file), id, h.size);
      if (copy.sha256 !== sha256 || copy.bodyPath === undefined) {
        if (copy.bodyPath !== undefined) await blobs.remove(copy.bodyPath);
        throw new Error(`upload ${h.sid}: the copy into the body storage does not match`);
      }
      bodyPath = copy.bodyPath;
    }
    let stored: { message: MessageRecord; created: boolean };
    try {
      stored = await store.enqueue({
        id,
        to: h.to,
        from: up.device,
        filename: h.filename,
        size: h.size,
        sha256,
        ...(body ? { body } : { bodyPath: bodyPath! }),
        // One message per upload id, however often the sender offers it again (its SEND_END was lost).
        idempotencyKey: `${RESERVED_KEY_PREFIX}send:${h.sid}`,
        createdAt: now,
        deadlineAt: now + DEFAULT_DEADLINE_MS,
        ...(h.sealed ? { sealed: true } : {}),
      });
    } catch (err) {
      // Keep the bytes for the next offer.
      if (bodyPath && blobs instanceof Blobs) await fsp.rename(bodyPath, up.file).catch(() => {});
      else if (bodyPath) await blobs.remove(bodyPath).catch(() => {});
      throw err;
    }
    const { message, created } = stored;
    if (created) {
      // At once, before any other await: the hub hands messages over in the order of their seq.
      hub.notify(h.to, message, body);
      feed.notify();
      log.info({ id: message.id, to: h.to, from: up.device, filename: h.filename, size: h.size, sealed: h.sealed === true }, 'message queued by a device');
    }
    if (body || !(blobs instanceof Blobs)) await fsp.rm(up.file, { force: true });
    if (!created && bodyPath) await blobs.remove(bodyPath);
    up.reply.send(MessageType.SEND_END, { sid: h.sid, id: message.id });
  }

  private failed(device: string, sid: string, reply: PeerReply, err: unknown): void {
    const up = this.open.get(device)?.get(sid);
    if (up && up.reply === reply) {
      up.done = true;
      this.open.get(device)?.delete(sid);
      void up.fh.close().catch(() => {});
    }
    if (err instanceof Refused) {
      this.o.log.warn({ device, sid, code: err.code }, `upload refused: ${err.message}`);
      reply.send(MessageType.SEND_END, { sid, code: err.code, message: err.message });
      return;
    }
    // The store or the disk failed: nothing was acknowledged; the agent offers it again on its next stream.
    this.o.log.error({ err, device, sid }, 'upload failed');
    reply.send(MessageType.SEND_END, { sid, code: (err as { code?: string }).code === 'DW_STORE_DOWN' ? 'DW_STORE_DOWN' : 'DW_INTERNAL', message: 'the relay could not store the file; offer it again' });
  }

  /** Deletes partial uploads nobody came back for. */
  private sweep(): void {
    const cutoff = this.now() - UPLOAD_KEEP_MS;
    for (const d of fs.readdirSync(this.dir)) {
      const folder = path.join(this.dir, d);
      for (const f of fs.readdirSync(folder)) {
        const file = path.join(folder, f);
        if (fs.statSync(file).mtimeMs < cutoff) fs.rmSync(file, { force: true });
      }
    }
  }

  // --- watches ---------------------------------------------------------------------------------

  /** WATCH: the status now; once more when it is final. Only the sender's own messages are shown. */
  private async watch(device: string, id: string, reply: PeerReply): Promise<void> {
    const m = await this.o.store.getMessage(id);
    if (!m || m.from !== device) {
      reply.send(MessageType.STATUS, { id, status: 'unknown' });
      return;
    }
    reply.send(MessageType.STATUS, statusOf(m));
    if (FINAL_STATUSES.has(m.status)) return;
    if (this.watchCount >= MAX_WATCHES) {
      const oldest = this.watches.keys().next().value!;
      this.watchCount -= this.watches.get(oldest)!.length;
      this.watches.delete(oldest);
    }
    const list = this.watches.get(id) ?? [];
    list.push({ device, reply });
    this.watches.set(id, list);
    this.watchCount++;
    // It may have become final between the read and the registration.
    const again = await this.o.store.getMessage(id);
    if (again && FINAL_STATUSES.has(again.status)) await this.tellWatchers(id);
  }

  private async tellWatchers(id: string): Promise<void> {
    const list = this.watches.get(id);
    if (!list) return;
    this.watches.delete(id);
    this.watchCount -= list.length;
    const m = await this.o.store.getMessage(id);
    if (!m) return;
    for (const w of list) if (w.reply.live) w.reply.send(MessageType.STATUS, statusOf(m));
  }
}

function statusOf(m: MessageRecord): Headers[typeof MessageType.STATUS] {
  return { id: m.id, status: m.status, ...(m.result ? { result: m.result } : {}) };
}

async function hashFile(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const c of fs.createReadStream(file)) hash.update(c as Buffer);
  return hash.digest('hex');
}
