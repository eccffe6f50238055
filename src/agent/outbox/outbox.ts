import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { watch, type FSWatcher } from 'chokidar';
import { fsyncDir, writeFileAtomic } from '../../shared/files.js';
import type { Logger } from '../../shared/log.js';
import type { Journal } from '../journal.js';
import { globMatches } from '../rules.js';
import { FINAL, newSid, type Sender } from '../send.js';
import type { OutboxSpec } from './config.js';

/** Files of one outbox sent at once. */
const CONCURRENCY = 8;
/** A file counts as written once its size has not changed for this long (chokidar awaitWriteFinish). */
export const STABLE_MS = 2_000;
/** Refusals after which the same upload is offered again (the relay stored nothing and may manage later). */
const TRANSIENT = new Set(['DW_INTERNAL', 'DW_STORE_DOWN', 'DW_NOT_CONNECTED', 'DW_TIMEOUT']);
const RETRY_MS = 5_000;
/** Claimed files wait here (a dot-folder: never picked up again): `<sid>.<name>`. */
export const WORK_DIR = '.dropwire';

export interface OutboxDeps {
  sender: Sender;
  journal: Journal;
  log: Logger;
  /** Asks the relay about a device (its public key, for a sealed outbox). */
  presence: (device: string) => Promise<{ known: boolean; publicKey?: string }>;
  identity: { name: string; home: string };
}

/** Dot-files, `*.tmp` and `*.part` are someone still writing (or not for us). */
export function ignoredName(name: string): boolean {
  return name.startsWith('.') || name.endsWith('.tmp') || name.endsWith('.part');
}

/**
 * One outbox folder: every file dropped in it is sent exactly once to `to`, then moved to `sent/` (or
 * `failed/`) with `NAME.result.json` beside it once final at the destination.
 *
 * Exactly once across crashes: a file is first claimed by a rename into `.dropwire/<sid>.<name>` (the upload
 * id in its name), so it is never seen as new again; every offer of it carries that `sid`, and the relay
 * stores one message per upload id (its idempotency key), resuming from the bytes it has. The journal keeps
 * `sid → message id` once stored, so a restart watches the message instead of uploading again. Moving it
 * to `sent/` happens only after the result file is written; a stop in between redoes both.
 */
export class Outbox {
  readonly spec: OutboxSpec;
  private readonly d: OutboxDeps;
  private readonly work: string;
  private watcher: FSWatcher | undefined;
  private readonly queue: string[] = [];
  private readonly queued = new Set<string>();
  private running = 0;
  /** Claimed files to offer again once their current turn has ended. */
  private later: string[] = [];
  private closed = false;

  constructor(spec: OutboxSpec, d: OutboxDeps) {
    this.spec = spec;
    this.d = d;
    this.work = path.join(spec.dir, WORK_DIR);
  }

  start(): void {
    for (const sub of [this.spec.dir, this.work, path.join(this.spec.dir, 'sent'), path.join(this.spec.dir, 'failed')]) fs.mkdirSync(sub, { recursive: true });
    // Claimed before a stop: continue them first, in the order they were claimed.
    for (const f of fs.readdirSync(this.work)) if (f.startsWith('.result-')) fs.rmSync(path.join(this.work, f), { force: true }); // a stop mid-write
    for (const f of fs.readdirSync(this.work, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      if (f.isFile() && /^[0-9a-z]+\./.test(f.name)) this.schedule(f.name);
    }
    this.watcher = watch(this.spec.dir, {
      depth: 0,
      ignoreInitial: false,
      awaitWriteFinish: { stabilityThreshold: STABLE_MS, pollInterval: 100 },
      ignored: (p, stats) => p !== this.spec.dir && (ignoredName(path.basename(p)) || (stats !== undefined && !stats.isFile())),
    });
    // chokidar applies awaitWriteFinish to files that appear while it watches, not to those its first scan
    // finds (dropped while the agent was stopped, or still being written when it started): those wait here.
    let scanned = false;
    this.watcher.on('ready', () => (scanned = true));
    this.watcher.on('add', (p) => (scanned ? this.claim(p) : this.whenStable(p)));
    this.watcher.on('error', (err) => this.d.log.warn({ err, dir: this.spec.dir }, 'outbox watch error'));
    this.d.log.info({ dir: this.spec.dir, to: this.spec.to }, 'outbox watched');
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.watcher?.close();
  }

  /** Claims `p` once its size and mtime have not changed for STABLE_MS. */
  private whenStable(p: string, last?: { size: number; mtimeMs: number; since: number }): void {
    if (this.closed) return;
    const st = fs.statSync(p, { throwIfNoEntry: false });
    if (!st?.isFile()) return;
    const now = Date.now();
    const same = last !== undefined && last.size === st.size && last.mtimeMs === st.mtimeMs;
    const since = same ? last.since : now;
    if (same && now - since >= STABLE_MS) return this.claim(p);
    setTimeout(() => this.whenStable(p, { size: st.size, mtimeMs: st.mtimeMs, since }), 100).unref();
  }

  /** A complete file appeared: claim it by renaming it into the work folder under a new upload id. */
  private claim(p: string): void {
    if (this.closed || path.dirname(p) !== this.spec.dir) return;
    const name = path.basename(p);
    if (ignoredName(name) || (this.spec.match && !globMatches(this.spec.match, name))) return;
    const claimed = `${newSid()}.${name}`;
    try {
      fs.renameSync(p, path.join(this.work, claimed));
      fsyncDir(this.work);
      fsyncDir(this.spec.dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return; // taken away meanwhile
      this.d.log.error({ err, file: p }, 'outbox could not claim a file');
      return;
    }
    this.schedule(claimed);
  }

  private schedule(claimed: string): void {
    if (this.queued.has(claimed)) return;
    this.queued.add(claimed);
    this.queue.push(claimed);
    this.next();
  }

  private next(): void {
    while (!this.closed && this.running < CONCURRENCY && this.queue.length > 0) {
      const claimed = this.queue.shift()!;
      this.running++;
      void this.process(claimed)
        .catch((err: unknown) => this.d.log.error({ err, file: claimed }, 'outbox send failed'))
        .finally(() => {
          this.running--;
          this.queued.delete(claimed);
          for (const again of this.later.splice(0)) this.schedule(again);
          this.next();
        });
    }
  }

  private async process(claimed: string): Promise<void> {
    const { sender, journal, log } = this.d;
    const dot = claimed.indexOf('.');
    const sid = claimed.slice(0, dot);
    const name = claimed.slice(dot + 1);
    const file = path.join(this.work, claimed);
    let id = journal.outboxId(sid);
    if (!id) {
      try {
        const seal = this.spec.seal ? { recipientPublic: await this.keyOf(this.spec.to), sender: this.d.identity.name, workDir: path.join(this.work, '.seal') } : undefined;
        id = await sender.send({ file, filename: name, to: this.spec.to, sid, ...(seal ? { seal } : {}) });
      } catch (err) {
        const code = (err as { code?: string }).code ?? 'DW_INTERNAL';
        if (this.closed || code === 'DW_CLOSED') return; // the agent stops: continued at the next start
        if (TRANSIENT.has(code)) {
          // Nothing was stored: the same upload id is offered again a little later.
          log.warn({ file: name, code, dir: this.spec.dir }, 'outbox file not sent yet; trying again');
          await new Promise((r) => setTimeout(r, RETRY_MS).unref());
          if (!this.closed) this.later.push(claimed);
          return;
        }
        log.warn({ file: name, code, dir: this.spec.dir }, 'outbox file refused');
        return this.finalize(sid, name, file, { status: 'failed', code, message: (err as Error).message });
      }
      journal.outboxStored(sid, id);
      log.info({ file: name, id, to: this.spec.to }, 'outbox file sent');
    }
    const st = await new Promise<{ status: string; result?: Record<string, unknown> } | undefined>((resolve) => {
      const stop = sender.watch(id, (h) => {
        if (!FINAL.has(h.status)) return;
        stop();
        resolve(h);
      });
      const onClose = setInterval(() => {
        if (!this.closed) return;
        clearInterval(onClose);
        stop();
        resolve(undefined);
      }, 500);
    });
    if (!st) return;
    await this.finalize(sid, name, file, { id, status: st.status, ...(st.result ? { result: st.result } : {}) });
  }

  /** The recipient's key, asking until the agent is connected; DW_UNKNOWN_DEVICE / DW_NO_KEY are final. */
  private async keyOf(device: string): Promise<string> {
    for (;;) {
      if (this.closed) throw Object.assign(new Error('stopped'), { code: 'DW_CLOSED' });
      const p = await this.d.presence(device).catch(() => undefined);
      if (p?.publicKey) return p.publicKey;
      if (p && !p.known) throw Object.assign(new Error(`no device named '${device}'`), { code: 'DW_UNKNOWN_DEVICE' });
      if (p) throw Object.assign(new Error(`'${device}' has no key to seal to`), { code: 'DW_NO_KEY' });
      await new Promise((r) => setTimeout(r, 2_000)); // not connected yet
    }
  }

  /** `NAME.result.json` first, then the file beside it (or deleted); then the journal forgets the upload. */
  private async finalize(sid: string, name: string, file: string, outcome: Record<string, unknown>): Promise<void> {
    if (this.closed) return;
    const handled = outcome.status === 'handled';
    const folder = path.join(this.spec.dir, handled ? 'sent' : 'failed');
    let target = path.join(folder, name);
    // Another file of the same name went before: this one keeps its upload id in its name.
    if (fs.existsSync(target)) {
      const ext = path.extname(name);
      target = path.join(folder, `${path.basename(name, ext)}-${sid}${ext}`);
    }
    // Written in the work folder and renamed beside the file: sent/ never holds a half-written result.
    const tmp = path.join(this.work, `.result-${sid}.tmp`);
    writeFileAtomic(tmp, JSON.stringify({ file: name, to: this.spec.to, ...outcome, at: new Date().toISOString() }, null, 2) + '\n');
    await fsp.rename(tmp, `${target}.result.json`);
    if (handled && this.spec.after === 'delete') await fsp.rm(file, { force: true });
    else await fsp.rename(file, target);
    fsyncDir(folder);
    fsyncDir(this.work);
    this.d.journal.outboxForget(sid);
    this.d.log.info({ file: name, ...outcome }, handled ? 'outbox file handled at the destination' : 'outbox file not handled at the destination');
  }
}
