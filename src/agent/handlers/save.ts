import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { access, link, mkdir, open, rename, unlink } from 'node:fs/promises';
import path from 'node:path';
import { DropwireError, toDropwireError } from '../../shared/errors.js';
import { safeName } from '../names.js';
import type { Action } from '../rules.js';
import type { HandlerContext, Outcome } from './index.js';

/** `name (1).ext` ... `name (999).ext`, then DW_FILE_EXISTS. */
export const MAX_RENAME_ATTEMPTS = 999;
const COPY_CHUNK_BYTES = 1 << 20;

/** The hidden temporary name a file has while it is being written; folder watchers should ignore `.*`. */
export const tempName = (): string => `.dropwire-${randomBytes(8).toString('hex')}.tmp`;

/** `report.pdf` -> `report (2).pdf`; `README` -> `README (2)`. */
export function numberedName(name: string, n: number): string {
  const ext = path.extname(name);
  const stem = ext === '' ? name : name.slice(0, -ext.length);
  return `${stem} (${n})${ext}`;
}

/** fsync a directory so that a rename in it survives a power cut. Not possible on Windows; best effort. */
async function syncDir(dir: string): Promise<void> {
  let fh;
  try {
    fh = await open(dir, 'r');
    await fh.sync();
  } catch {
    // EISDIR/EPERM on Windows, EINVAL on some network file systems: nothing more can be done.
  } finally {
    await fh?.close().catch(() => {});
  }
}

const LINK_UNSUPPORTED = new Set(['EPERM', 'ENOTSUP', 'EOPNOTSUPP', 'ENOSYS', 'EXDEV', 'EMLINK', 'EACCES']);

/**
 * Moves `tmp` to `target` unless `target` exists, atomically where the file system has hard links (`link`
 * fails with EEXIST instead of replacing; rename(2) would replace). Returns false when `target` exists.
 */
async function placeNoReplace(tmp: string, target: string): Promise<boolean> {
  try {
    await link(tmp, target);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? '';
    if (code === 'EEXIST') return false;
    if (!LINK_UNSUPPORTED.has(code)) throw err;
    // No hard links here (FAT, some network shares): check, then rename. A racing writer can still lose.
    if (await exists(target)) return false;
    await rename(tmp, target);
    return true;
  }
  // The file is in place; a leftover hidden temporary is untidy but harmless.
  await unlink(tmp).catch(() => {});
  return true;
}

async function exists(p: string): Promise<boolean> {
  try {
    await access(p);
    return true;
  } catch {
    return false;
  }
}

/** Streams the spool file into `tmp`, which must not exist yet, and fsyncs it. */
async function copyInto(src: string, tmp: string, signal: AbortSignal | undefined): Promise<number> {
  const out = await open(tmp, 'wx');
  let bytes = 0;
  try {
    const input = createReadStream(src, { highWaterMark: COPY_CHUNK_BYTES, ...(signal ? { signal } : {}) });
    for await (const chunk of input as AsyncIterable<Buffer>) {
      await out.write(chunk);
      bytes += chunk.length;
    }
    await out.sync();
  } finally {
    await out.close();
  }
  return bytes;
}

/**
 * Atomic save: the file is written under a hidden temporary name in the target folder, fsynced, then
 * renamed (or hard-linked) to its final name and the folder fsynced. A watcher of the folder that ignores
 * dot files sees the file appear once, complete.
 */
export async function runSave(action: Extract<Action, { type: 'save' }>, ctx: HandlerContext): Promise<Outcome> {
  const started = Date.now();
  const name = safeName(ctx.facts.name);
  const dir = path.resolve(action.dir);
  const detail: Record<string, unknown> = { dir, ifExists: action.ifExists };
  const tmp = path.join(dir, tempName());
  let placed = false;
  try {
    ctx.signal?.throwIfAborted();
    await mkdir(dir, { recursive: true });
    detail['bytes'] = await copyInto(ctx.facts.file, tmp, ctx.signal);
    ctx.signal?.throwIfAborted();

    let target = path.join(dir, name);
    if (action.ifExists === 'replace') {
      detail['replaced'] = await exists(target);
      await rename(tmp, target);
      placed = true;
    } else if (action.ifExists === 'fail') {
      placed = await placeNoReplace(tmp, target);
      if (!placed) throw new DropwireError('DW_FILE_EXISTS', `${target} already exists`);
    } else {
      for (let n = 1; !(placed = await placeNoReplace(tmp, target)); n++) {
        if (n > MAX_RENAME_ATTEMPTS) {
          throw new DropwireError('DW_FILE_EXISTS', `${name} and ${MAX_RENAME_ATTEMPTS} numbered variants exist in ${dir}`);
        }
        target = path.join(dir, numberedName(name, n));
      }
    }
    await syncDir(dir);
    return { status: 'handled', detail: { ...detail, savedAs: target, durationMs: Date.now() - started } };
  } catch (err) {
    if (!placed) await unlink(tmp).catch(() => {});
    const aborted = ctx.signal?.aborted === true;
    const e = aborted
      ? new DropwireError('DW_CANCELLED', 'save cancelled', { cause: err })
      : toDropwireError(err, 'DW_SAVE_FAILED');
    return {
      status: 'failed',
      code: e.code,
      detail: { ...detail, error: e.message, durationMs: Date.now() - started },
    };
  }
}
