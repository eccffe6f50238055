/**
 * POST /v1/messages/batch: several files in one multipart/form-data POST, each to its own device, one answer
 * listing every message (README "HTTP API", "Batches").
 *
 * The parts stream in order. A file's fields (`to.L`, `filename.L`, ...) come before its part `file.L`, the
 * way S3's browser POST wants its policy before the file: every check that does not need the bytes (token
 * scope, device, name, numbers, caps) is done before the body is read, and each body goes straight to the
 * body storage like a single POST's. Nothing is stored as a message until every part has arrived and passed;
 * then all messages are enqueued in the same turn of the event loop (one group commit on SQLite) and the
 * answer goes out once all of them are durable. Delivery is then that of single POSTs.
 */
import type http from 'node:http';
import type { Readable } from 'node:stream';
import busboy from 'busboy';
import { plainSize } from '../protocol/seal.js';
import { DropwireError } from '../shared/errors.js';
import type { Logger } from '../shared/log.js';
import { uploadedMessage, type BodyStorage, type ReceivedBody } from './body-storage.js';
import { scopeAllows, type EventFeed } from './events.js';
import type { Hub } from './hub.js';
import { DEFAULT_DEADLINE_S, HttpError, MAX_FILENAME_BYTES, MAX_SECONDS } from './http-error.js';
import { RESERVED_KEY_PREFIX } from './message-actions.js';
import type { MessageRecord, NewMessage, Store, TokenRecord } from './store/types.js';

/** Files in one batch; beyond, 413 DW_TOO_MANY_FILES. Small bodies are held in memory until the commit. */
export const MAX_BATCH_FILES = 100;
/** Per-file fields, after the file part's own name (`to.L`, ...). */
const FILE_FIELDS = ['to', 'filename', 'ttl', 'deadline', 'allowEmpty', 'sealed', 'idempotencyKey'] as const;
type FileField = (typeof FILE_FIELDS)[number];
/** A label: what follows `file.` (and `to.`, ...) in a part's name. */
const LABEL = /^[A-Za-z0-9_-]{1,64}$/;
const MAX_FIELD_BYTES = 2048;
const MAX_KEY_CHARS = 200;

export interface BatchDeps {
  store: Store;
  hub: Hub;
  blobs: BodyStorage;
  feed: EventFeed;
  log: Logger;
  maxBody: number;
  bodyTimeoutMs: number;
  now: () => number;
  newId: (now: number) => string;
  /** The device is known (http.ts caches it). */
  deviceExists(name: string): Promise<boolean>;
  /** Takes one place among the uploads in progress, or throws 429 DW_BUSY; the function returned frees it. */
  startUpload(token: TokenRecord): () => void;
  maxUploads: number;
  maxUploadsPerToken: number;
}

/** One file of the batch, once its body is in. */
interface FilePart {
  part: string;
  label: string;
  message: NewMessage;
  received: ReceivedBody;
}

type Event =
  | { kind: 'field'; name: string; value: string; truncated: boolean }
  | { kind: 'file'; name: string; filename: string; stream: Readable };

/** Busboy's events in order, taken one at a time by an async reader (a file is read before the next part). */
class PartQueue {
  private readonly items: Event[] = [];
  private waiter: { resolve: (e: Event | undefined) => void; reject: (err: unknown) => void } | undefined;
  private ended = false;
  private error: unknown;

  push(e: Event): void {
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      w.resolve(e);
    } else this.items.push(e);
  }

  end(err?: unknown): void {
    if (this.ended) return;
    this.ended = true;
    this.error = err;
    const w = this.waiter;
    this.waiter = undefined;
    if (w && err !== undefined) w.reject(err);
    else w?.resolve(undefined);
  }

  next(): Promise<Event | undefined> {
    const e = this.items.shift();
    if (e) return Promise.resolve(e);
    if (this.ended) return this.error !== undefined ? Promise.reject(this.error) : Promise.resolve(undefined);
    return new Promise((resolve, reject) => (this.waiter = { resolve, reject }));
  }

  /** Streams of files nobody will read: drained, so that the parser is not held. */
  discard(): void {
    for (const e of this.items.splice(0)) if (e.kind === 'file') e.stream.resume();
  }
}

const bad = (message: string) => new HttpError(400, 'DW_BAD_REQUEST', message);

/** `?name=` or a field's value as seconds, the rule of single POSTs. */
function secondsOf(value: string | null | undefined, what: string): number | undefined {
  if (value === null || value === undefined || value === '') return undefined;
  const n = Number(value);
  if (!Number.isFinite(n) || n < 0 || n > MAX_SECONDS) throw bad(`${what} must be a number of seconds`);
  return n;
}

function checkKey(key: string, what: string): string {
  if (key.length > MAX_KEY_CHARS) throw bad(`${what} is longer than ${MAX_KEY_CHARS} characters`);
  if (key.startsWith(RESERVED_KEY_PREFIX)) throw bad(`${what} may not start with '${RESERVED_KEY_PREFIX}' (kept for the relay's retries)`);
  return key;
}

/** POST /v1/messages/batch for `token`: answers 202 (or 200 when every file was a repeat) with every message. */
export async function postBatch(d: BatchDeps, req: http.IncomingMessage, res: http.ServerResponse, url: URL, token: TokenRecord): Promise<void> {
  if (!/^multipart\/form-data/i.test(req.headers['content-type'] ?? '')) {
    throw bad('a batch is multipart/form-data: a part file.LABEL per file, its fields (to.LABEL, ...) before it');
  }
  if (url.searchParams.has('filename')) throw bad('filename is per file in a batch: a filename.LABEL field, or the file part\'s own file name');
  const declared = Number(req.headers['content-length'] ?? NaN);
  if (Number.isFinite(declared) && declared > MAX_BATCH_FILES * (d.maxBody + 64 * 1024)) {
    throw new HttpError(413, 'DW_TOO_LARGE', `a batch of at most ${MAX_BATCH_FILES} files of at most ${d.maxBody} bytes cannot be ${declared} bytes long`);
  }
  const defaults = {
    to: url.searchParams.get('to') ?? '',
    deadline: secondsOf(url.searchParams.get('deadline'), 'deadline') ?? DEFAULT_DEADLINE_S,
    ttl: secondsOf(url.searchParams.get('ttl'), 'ttl'),
    allowEmpty: url.searchParams.get('allowEmpty') === '1',
    sealed: url.searchParams.get('sealed') === '1',
  };
  const header = req.headers['idempotency-key'];
  const batchKey = typeof header === 'string' && header.length > 0 ? checkKey(header, 'Idempotency-Key') : undefined;

  // Ends the body read: the idle timer (408), or the client leaving mid-body.
  const stop = new AbortController();
  req.setTimeout(d.bodyTimeoutMs, () =>
    stop.abort(new HttpError(408, 'DW_TIMEOUT', `no bytes of the body arrived for ${d.bodyTimeoutMs / 1000} s; nothing was stored`)),
  );
  const onClose = () => {
    if (!req.complete) stop.abort(new HttpError(499, 'DW_CLIENT_GONE', 'the client closed the connection before the request was complete'));
  };
  req.once('close', onClose);
  const ends: Array<() => void> = [];
  const files: FilePart[] = [];
  let bb: busboy.Busboy | undefined;
  const queue = new PartQueue();
  try {
    try {
      bb = busboy({
        headers: req.headers,
        limits: { files: MAX_BATCH_FILES + 1, fields: MAX_BATCH_FILES * FILE_FIELDS.length, fieldSize: MAX_FIELD_BYTES, fileSize: d.maxBody + 1 },
      });
    } catch (err) {
      throw bad(`bad multipart body: ${(err as Error).message}`);
    }
    bb.on('field', (name, value, info) => queue.push({ kind: 'field', name, value, truncated: info.valueTruncated }));
    bb.on('file', (name, stream, info) => {
      // A body cut short errors the part's stream, maybe before it is read: seen by its reader, never unhandled.
      stream.on('error', () => {});
      queue.push({ kind: 'file', name, filename: info.filename ?? '', stream });
    });
    bb.on('fieldsLimit', () => queue.end(bad(`more than ${MAX_BATCH_FILES * FILE_FIELDS.length} fields`)));
    bb.on('close', () => queue.end());
    bb.on('error', (err) => queue.end(bad(`bad multipart body: ${(err as Error).message}`)));
    stop.signal.addEventListener('abort', () => queue.end(stop.signal.reason), { once: true });
    req.pipe(bb);
    await readParts(d, token, queue, stop.signal, defaults, batchKey, files, ends);
  } catch (err) {
    queue.discard();
    if (bb) {
      req.unpipe(bb);
      bb.removeAllListeners('file');
      bb.on('error', () => {});
    }
    await dropBodies(d, files);
    for (const end of ends) end();
    if ((err as DropwireError).code === 'DW_TOO_LARGE' && !(err instanceof HttpError)) throw new HttpError(413, 'DW_TOO_LARGE', (err as Error).message);
    throw err;
  } finally {
    req.setTimeout(0);
    req.off('close', onClose);
  }
  try {
    await store(d, res, token, files);
  } finally {
    // The files' places among the uploads are held until the answer (small bodies stay in memory until then).
    for (const end of ends) end();
  }
}

/** Reads every part: fields first, then each file checked and received into the body storage. */
async function readParts(
  d: BatchDeps,
  token: TokenRecord,
  queue: PartQueue,
  signal: AbortSignal,
  defaults: { to: string; deadline: number; ttl: number | undefined; allowEmpty: boolean; sealed: boolean },
  batchKey: string | undefined,
  files: FilePart[],
  ends: Array<() => void>,
): Promise<void> {
  const fields = new Map<string, Partial<Record<FileField, string>>>();
  const labels = new Set<string>();
  let unlabeled = 0;
  for (let e = await queue.next(); e; e = await queue.next()) {
    if (e.kind === 'field') {
      const dot = e.name.indexOf('.');
      const field = e.name.slice(0, dot) as FileField;
      const label = e.name.slice(dot + 1);
      if (dot < 0 || !FILE_FIELDS.includes(field) || !LABEL.test(label)) {
        throw bad(`unknown field '${e.name.slice(0, 80)}': a batch takes file.LABEL parts and, before each, ${FILE_FIELDS.map((f) => `${f}.LABEL`).join(', ')} (LABEL: 1 to 64 of A-Z a-z 0-9 _ -)`);
      }
      if (labels.has(label)) throw bad(`field ${e.name} comes after its file part file.${label}; send a file's fields before it`);
      if (e.truncated) throw bad(`field ${e.name} is longer than ${MAX_FIELD_BYTES} bytes`);
      const f = fields.get(label) ?? {};
      if (f[field] !== undefined) throw bad(`field ${e.name} is given twice`);
      f[field] = e.value;
      fields.set(label, f);
      continue;
    }
    // A file part: `file.LABEL`, or plain `file` (then only the query's values apply).
    const m = /^file(?:\.(.*))?$/.exec(e.name);
    const label = m?.[1] ?? (m ? `#${++unlabeled}` : undefined);
    const part = m?.[1] !== undefined ? e.name : `file #${unlabeled}`;
    if (!m || (m[1] !== undefined && !LABEL.test(m[1]))) {
      e.stream.resume();
      throw bad(`unknown file part '${e.name.slice(0, 80)}': name each file part file.LABEL (LABEL: 1 to 64 of A-Z a-z 0-9 _ -) or file`);
    }
    if (labels.has(label!)) throw bad(`file part ${part} is given twice`);
    labels.add(label!);
    if (files.length >= MAX_BATCH_FILES) throw new HttpError(413, 'DW_TOO_MANY_FILES', `a batch has at most ${MAX_BATCH_FILES} files; send the others in another batch`);
    files.push(await receiveFile(d, token, e, part, label!, fields.get(label!) ?? {}, defaults, batchKey, signal, ends));
  }
  for (const label of fields.keys()) {
    if (!labels.has(label)) throw bad(`fields for '${label}' (${Object.keys(fields.get(label)!).map((f) => `${f}.${label}`).join(', ')}) but no file part file.${label}`);
  }
  if (files.length === 0) throw bad('the batch has no file part (file.LABEL)');
}

/** Checks one file part before its body is read, then receives the body into the body storage. */
async function receiveFile(
  d: BatchDeps,
  token: TokenRecord,
  e: { filename: string; stream: Readable },
  part: string,
  label: string,
  f: Partial<Record<FileField, string>>,
  defaults: { to: string; deadline: number; ttl: number | undefined; allowEmpty: boolean; sealed: boolean },
  batchKey: string | undefined,
  signal: AbortSignal,
  ends: Array<() => void>,
): Promise<FilePart> {
  const to = f.to ?? defaults.to;
  if (!to) throw bad(`${part}: no device: add a field to.${label} before it (or ?to= for every file)`);
  // One answer for "no such device" and "not yours", as for a single POST: a scoped token cannot probe names.
  if (!scopeAllows(token.to, to) || !(await d.deviceExists(to))) {
    throw new HttpError(404, 'DW_UNKNOWN_DEVICE', `${part}: no device named '${to}' that this token may send to`);
  }
  const filename = f.filename ?? e.filename;
  if (!filename) throw new HttpError(400, 'DW_BAD_NAME', `${part}: a file name is required: a filename.${label} field, or a file name on the part`);
  if (Buffer.byteLength(filename) > MAX_FILENAME_BYTES || filename.includes('\0')) {
    throw new HttpError(400, 'DW_BAD_NAME', `${part}: filename must be 1 to ${MAX_FILENAME_BYTES} bytes without NUL`);
  }
  const deadline = secondsOf(f.deadline, `${part}: deadline.${label}`) ?? defaults.deadline;
  const ttl = secondsOf(f.ttl, `${part}: ttl.${label}`) ?? defaults.ttl;
  const allowEmpty = f.allowEmpty !== undefined ? f.allowEmpty === '1' : defaults.allowEmpty;
  const sealed = f.sealed !== undefined ? f.sealed === '1' : defaults.sealed;
  const key = f.idempotencyKey
    ? checkKey(f.idempotencyKey, `${part}: idempotencyKey.${label}`)
    : batchKey !== undefined
      ? `${batchKey}:${label}`
      : undefined;
  ends.push(takePlace(d, token, ends.length));
  const now = d.now();
  const id = d.newId(now);
  const abort = () => e.stream.destroy(signal.reason as Error);
  signal.addEventListener('abort', abort, { once: true });
  let received: ReceivedBody;
  try {
    if (signal.aborted) throw signal.reason;
    if (e.stream.errored) throw e.stream.errored;
    received = await d.blobs.receive(e.stream, id, d.maxBody);
  } catch (err) {
    if (err instanceof DropwireError) {
      if (err.code === 'DW_TOO_LARGE') throw new HttpError(413, 'DW_TOO_LARGE', `${part}: ${err.message}`);
      throw err;
    }
    // busboy's own complaints (plain errors, no code: a truncated or malformed body) are the client's.
    if ((err as { code?: unknown }).code === undefined) throw bad(`${part}: bad multipart body: ${(err as Error).message}`);
    throw err;
  } finally {
    signal.removeEventListener('abort', abort);
  }
  const file: FilePart = {
    part,
    label,
    received,
    message: uploadedMessage({ id, to, from: token.name, filename, ...(key !== undefined ? { idempotencyKey: key } : {}), now, deadlineS: deadline, ...(ttl !== undefined ? { ttlS: ttl } : {}), sealed }, received),
  };
  const refuse = async (err: HttpError): Promise<never> => {
    if (received.bodyPath) await d.blobs.remove(received.bodyPath);
    throw err;
  };
  if (sealed && plainSize(received.size) === undefined) {
    await refuse(new HttpError(400, 'DW_BAD_SEAL', `${part}: sealed, but no sealed envelope is ${received.size} bytes long (PROTOCOL 12)`));
  }
  if (received.size === 0 && !allowEmpty && !sealed) {
    await refuse(new HttpError(400, 'DW_EMPTY_BODY', `${part}: the file is empty; add a field allowEmpty.${label}=1 (or ?allowEmpty=1) to send an empty file`));
  }
  return file;
}

/**
 * Each file of a batch holds one place among the uploads in progress until the batch is answered (its body
 * is held until the commit). A batch that alone fills the cap can never pass: 413, not 429.
 */
function takePlace(d: BatchDeps, token: TokenRecord, held: number): () => void {
  try {
    return d.startUpload(token);
  } catch (err) {
    const cap = Math.min(d.maxUploads, d.maxUploadsPerToken);
    if (held >= cap) {
      throw new HttpError(413, 'DW_TOO_MANY_FILES', `this relay takes at most ${cap} files in one batch (each file counts as an upload: --max-uploads, --max-uploads-per-token)`);
    }
    throw err;
  }
}

/**
 * Stores every message of the batch, durably, then answers. Files that carry an Idempotency-Key go first:
 * if one of them was used before for another file (422), no file without a key has been stored, and the
 * keyed ones that were new answer as repeats when the corrected batch is sent again.
 */
async function store(d: BatchDeps, res: http.ServerResponse, token: TokenRecord, files: FilePart[]): Promise<void> {
  const keyed = files.filter((f) => f.message.idempotencyKey !== undefined);
  const plain = files.filter((f) => f.message.idempotencyKey === undefined);
  const stored = new Map<FilePart, { message: MessageRecord; created: boolean }>();
  const mismatched: string[] = [];
  for (const group of [keyed, plain]) {
    if (group.length === 0 || mismatched.length > 0) continue;
    // All in the same turn: they share the store's group commit. Each new message goes to the hub in the
    // very reaction to its own write, as a single POST's does right after its await: the hub hands messages
    // over in the order of their seq, and a write of another request committed with these must not overtake.
    const results = await Promise.allSettled(
      group.map((f) =>
        d.store.enqueue(f.message).then((r) => {
          if (r.created) announce(d, token, f, r.message);
          return r;
        }),
      ),
    );
    if (group.some((f, i) => results[i]!.status === 'fulfilled' && (results[i] as PromiseFulfilledResult<{ created: boolean }>).value.created)) d.feed.notify();
    let failure: unknown;
    group.forEach((f, i) => {
      const r = results[i]!;
      if (r.status === 'rejected') {
        failure ??= r.reason;
        return;
      }
      stored.set(f, r.value);
      const { message, created } = r.value;
      if (!created) {
        const what = [message.to !== f.message.to && 'to', message.filename !== f.message.filename && 'filename', message.sha256 !== f.message.sha256 && 'body'].filter(Boolean);
        if (what.length > 0) mismatched.push(`${f.part}: Idempotency-Key '${f.message.idempotencyKey}' was used for message ${message.id} with another ${what.join(', ')}`);
      }
    });
    if (failure !== undefined) {
      await dropBodies(d, files.filter((f) => !stored.get(f)?.created));
      throw failure;
    }
  }
  if (mismatched.length > 0) {
    await dropBodies(d, files.filter((f) => !stored.get(f)?.created));
    const kept = keyed.filter((f) => stored.get(f)?.created).map((f) => `${f.part} as ${f.message.id}`);
    throw new HttpError(
      422,
      'DW_IDEMPOTENCY_MISMATCH',
      `${mismatched.join('; ')}; use a new key for a new file.${kept.length > 0 ? ` Stored under their keys (a corrected batch sent again finds them): ${kept.join(', ')}.` : ''} No file without a key was stored.`,
    );
  }
  await dropBodies(d, files.filter((f) => !stored.get(f)!.created));
  const created = files.some((f) => stored.get(f)!.created);
  const messages = files.map((f) => {
    const { message: m, created: fresh } = stored.get(f)!;
    return { part: f.part, id: m.id, status: m.status, to: m.to, filename: m.filename, size: m.size, sha256: m.sha256, online: d.hub.isOnline(m.to), created: fresh };
  });
  const text = JSON.stringify({ messages }) + '\n';
  res.writeHead(created ? 202 : 200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

/** A new message of the batch: logged and handed to the hub (with its inline body), like a single POST's. */
function announce(d: BatchDeps, token: TokenRecord, f: FilePart, message: MessageRecord): void {
  d.log.info({ id: message.id, to: message.to, from: token.name, filename: message.filename, size: message.size, part: f.part }, 'message queued');
  try {
    d.hub.notify(message.to, message, f.received.body);
  } catch (err) {
    // Stored all the same (the delivery loop finds it in the store): never taken for a failed write.
    d.log.error({ err, id: message.id }, 'hub notify failed');
  }
}

async function dropBodies(d: BatchDeps, files: FilePart[]): Promise<void> {
  await Promise.all(files.map((f) => (f.received.bodyPath ? d.blobs.remove(f.received.bodyPath).catch(() => {}) : undefined)));
}
