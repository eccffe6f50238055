/**
 * Where message bodies too large to keep inline in the store live: on this relay's disk (blobs.ts) or in
 * Redis, where every node of a cluster can read them (store/redis/bodies.ts). Bodies stream in and out in
 * pieces; none is ever whole in memory.
 */
import { createHash } from 'node:crypto';
import fsp from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { DropwireError } from '../shared/errors.js';
import { transferred } from '../transport/memory.js';
import type { NewMessage } from './store/types.js';

/** Bodies up to this size are kept inline in the store (one group commit covers them). */
export const INLINE_MAX = 64 * 1024;
/** A large body goes to its storage in pieces of about this size. */
export const WRITE_BATCH = 1024 * 1024;

export interface ReceivedBody {
  size: number;
  sha256: string;
  /** Inline body (size <= INLINE_MAX)... */
  body?: Uint8Array;
  /** ...or where the storage keeps it (a file path, or a `redis-blob:` reference): `NewMessage.bodyPath`. */
  bodyPath?: string;
}

/** What a sender asked for one uploaded file (POST /v1/messages, each file of a batch). */
export interface UploadRequest {
  id: string;
  to: string;
  from: string;
  filename: string;
  idempotencyKey?: string;
  now: number;
  /** Seconds until overdue, and until expired (none: never). */
  deadlineS: number;
  ttlS?: number;
  sealed: boolean;
}

/** The message an upload becomes once its body is received. */
export function uploadedMessage(r: UploadRequest, received: ReceivedBody): NewMessage {
  return {
    id: r.id,
    to: r.to,
    from: r.from,
    filename: r.filename,
    size: received.size,
    sha256: received.sha256,
    ...(received.body ? { body: received.body } : { bodyPath: received.bodyPath! }),
    ...(r.idempotencyKey !== undefined ? { idempotencyKey: r.idempotencyKey } : {}),
    createdAt: r.now,
    deadlineAt: r.now + r.deadlineS * 1000,
    ...(r.ttlS !== undefined ? { expiresAt: r.now + r.ttlS * 1000 } : {}),
    ...(r.sealed ? { sealed: true } : {}),
  };
}

/** Reads a stored large body. */
export interface BodyReader {
  /** The bytes of `ref` from `offset` to `size`, in pieces of at most `chunk` bytes. Stop early with `break`. */
  read(ref: string, offset: number, size: number, chunk: number): AsyncIterable<Uint8Array>;
}

export interface BodyStorage extends BodyReader {
  /** Reads a body stream to its end, hashing it; refuses (DW_TOO_LARGE) past `limit` bytes, leaving nothing behind. */
  receive(stream: Readable | AsyncIterable<Uint8Array>, id: string, limit: number): Promise<ReceivedBody>;
  /** Drops a stored body that no message refers to (a refused or repeated upload). */
  remove(ref: string): Promise<void>;
}

/** Where the large part of one upload goes: pieces in order, then finished (durable) or aborted. */
export interface BodySink {
  write(parts: Buffer[]): Promise<void>;
  /** Makes the body durable; returns its reference. */
  finish(): Promise<string>;
  abort(): Promise<void>;
}

/**
 * Receives one body: kept in memory while it fits INLINE_MAX, else handed to `open()`'s sink in
 * WRITE_BATCH pieces, one write in flight while the next piece arrives.
 */
export async function receiveBody(
  stream: Readable | AsyncIterable<Uint8Array>,
  limit: number,
  open: () => Promise<BodySink>,
): Promise<ReceivedBody> {
  const hash = createHash('sha256');
  let size = 0;
  let sink: BodySink | undefined;
  let held: Buffer[] = [];
  let heldBytes = 0;
  let writing: Promise<unknown> = Promise.resolve();
  const flush = async (): Promise<void> => {
    await writing;
    if (heldBytes === 0) return;
    const parts = held;
    held = [];
    heldBytes = 0;
    writing = sink!.write(parts);
    writing.catch(() => {}); // handled where it is awaited; never an unhandled rejection meanwhile
  };
  try {
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      size += chunk.length;
      if (size > limit) throw new DropwireError('DW_TOO_LARGE', `body larger than the limit of ${limit} bytes`);
      hash.update(chunk);
      transferred(chunk.length); // an upload alone (a cluster node with no agent traffic) also frees its buffers
      held.push(chunk);
      heldBytes += chunk.length;
      if (!sink) {
        if (size <= INLINE_MAX) continue;
        sink = await open();
      }
      if (heldBytes >= WRITE_BATCH) await flush();
    }
    const sha256 = hash.digest('hex');
    if (!sink) return { size, sha256, body: new Uint8Array(Buffer.concat(held, size)) };
    await flush();
    await writing;
    const bodyPath = await sink.finish();
    return { size, sha256, bodyPath };
  } catch (err) {
    await writing.catch(() => {});
    await sink?.abort().catch(() => {});
    throw err;
  }
}

/** Reads body files by path: what the hub uses when no other storage is given. */
export const diskBodyReader: BodyReader = {
  async *read(ref, offset, size, chunk) {
    const fh = await fsp.open(ref, 'r');
    try {
      for (let pos = offset; pos < size; ) {
        const buf = new Uint8Array(Math.min(chunk, size - pos));
        const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
        if (bytesRead <= 0) throw new Error(`body file ${ref} is shorter than its size`);
        pos += bytesRead;
        yield buf.subarray(0, bytesRead);
      }
    } finally {
      await fh.close();
    }
  },
};
