import fs from 'node:fs';
import path from 'node:path';
import { DatabaseSync, type StatementSync } from 'node:sqlite';
import { isDiskFull } from './disk.js';

/** Where a message is on this host (PROTOCOL 7: exactly once at the handler). */
export type JournalState = 'received' | 'running' | 'done';

export interface JournalEntry {
  id: string;
  from: string;
  filename: string;
  size: number;
  sha256: string;
  state: JournalState;
  status?: 'handled' | 'failed' | 'rejected';
  code?: string;
  result?: Record<string, unknown>;
  /** The relay stored the outcome (CONFIRM): no need to report it again. */
  confirmed: boolean;
  receivedAt: number;
}

interface Row {
  id: string;
  sender: string;
  filename: string;
  size: number;
  sha256: string;
  state: JournalState;
  status: string | null;
  code: string | null;
  result: string | null;
  confirmed: number;
  received_at: number;
}

/**
 * The agent's journal (node:sqlite, WAL, synchronous FULL): a message id is recorded as received before
 * RECEIVED is sent, and as running before its handler starts, so a redelivery never runs it twice and a
 * crash mid-handler is reported as interrupted rather than run again.
 */
export class Journal {
  private readonly db: DatabaseSync;
  private readonly q: Record<string, StatementSync>;

  constructor(file: string) {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    this.db = new DatabaseSync(file);
    this.db.exec(`
      PRAGMA journal_mode = WAL;
      PRAGMA synchronous = FULL;
      PRAGMA busy_timeout = 5000;
      CREATE TABLE IF NOT EXISTS messages (
        id TEXT PRIMARY KEY, sender TEXT NOT NULL, filename TEXT NOT NULL, size INTEGER NOT NULL,
        sha256 TEXT NOT NULL, state TEXT NOT NULL, status TEXT, code TEXT, result TEXT,
        confirmed INTEGER NOT NULL DEFAULT 0, received_at INTEGER NOT NULL, done_at INTEGER
      ) STRICT;
      CREATE INDEX IF NOT EXISTS messages_unconfirmed ON messages (received_at) WHERE confirmed = 0;
      CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v TEXT NOT NULL) STRICT;
    `);
    this.q = {
      get: this.db.prepare('SELECT * FROM messages WHERE id = ?'),
      insert: this.db.prepare(
        `INSERT INTO messages (id, sender, filename, size, sha256, state, received_at) VALUES (?, ?, ?, ?, ?, 'received', ?)
         ON CONFLICT (id) DO NOTHING`,
      ),
      running: this.db.prepare(`UPDATE messages SET state = 'running' WHERE id = ? AND state = 'received'`),
      finish: this.db.prepare(`UPDATE messages SET state = 'done', status = ?, code = ?, result = ?, done_at = ? WHERE id = ? AND state != 'done'`),
      confirm: this.db.prepare('UPDATE messages SET confirmed = 1 WHERE id = ?'),
      unconfirmed: this.db.prepare('SELECT * FROM messages WHERE confirmed = 0 ORDER BY received_at, id LIMIT ?'),
      interrupted: this.db.prepare(`SELECT id FROM messages WHERE state = 'running'`),
      pendingHandlers: this.db.prepare(`SELECT * FROM messages WHERE state = 'received' ORDER BY received_at, id`),
      kvGet: this.db.prepare('SELECT v FROM kv WHERE k = ?'),
      kvSet: this.db.prepare('INSERT INTO kv (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v'),
      last: this.db.prepare(`SELECT * FROM messages WHERE state = 'done' ORDER BY done_at DESC LIMIT 1`),
    };
  }

  get(id: string): JournalEntry | undefined {
    const r = this.q.get!.get(id) as Row | undefined;
    return r ? toEntry(r) : undefined;
  }

  /** Records a complete, verified file. Returns false if the id was already known. */
  received(e: { id: string; from: string; filename: string; size: number; sha256: string }, at: number): boolean {
    return this.q.insert!.run(e.id, e.from, e.filename, e.size, e.sha256, at).changes > 0;
  }

  /** Marks the handler as started; false if it already was (never start it twice). */
  running(id: string): boolean {
    return this.q.running!.run(id).changes > 0;
  }

  finish(id: string, status: 'handled' | 'failed' | 'rejected', code: string | undefined, result: Record<string, unknown>, at: number): void {
    this.q.finish!.run(status, code ?? null, JSON.stringify(result), at, id);
  }

  confirm(ids: string[]): void {
    this.db.exec('BEGIN');
    try {
      for (const id of ids) this.q.confirm!.run(id);
      this.db.exec('COMMIT');
    } catch (err) {
      // SQLite has already rolled back after some errors (SQLITE_FULL among them): keep the real error.
      if (this.db.isTransaction) this.db.exec('ROLLBACK');
      throw err;
    }
  }

  /** Outcomes the relay has not confirmed yet, oldest first. */
  unconfirmed(limit = 10_000): JournalEntry[] {
    return (this.q.unconfirmed!.all(limit) as unknown as Row[]).map(toEntry);
  }

  /** Files received whose handler never started (the agent stopped in between): to be run now. */
  waiting(): JournalEntry[] {
    return (this.q.pendingHandlers!.all() as unknown as Row[]).map(toEntry);
  }

  /** After a crash: handlers that were running are failed as interrupted, not run again. */
  recoverInterrupted(at: number): string[] {
    const ids = (this.q.interrupted!.all() as { id: string }[]).map((r) => r.id);
    for (const id of ids) this.finish(id, 'failed', 'DW_INTERRUPTED', { code: 'DW_INTERRUPTED', reason: 'the agent stopped while the handler ran' }, at);
    return ids;
  }

  lastDone(): JournalEntry | undefined {
    const r = this.q.last!.get() as Row | undefined;
    return r ? toEntry(r) : undefined;
  }

  /**
   * PROTOCOL 3.7: handshake timestamps strictly increase, even if the wall clock steps back. On a full disk
   * the value cannot be stored; it is still kept here, so the agent can dial (and learn the disk is full).
   */
  nextTimestamp(now: number): number {
    const last = Number((this.q.kvGet!.get('handshake_ts') as { v: string } | undefined)?.v ?? 0);
    const ts = Math.max(now, last + 1, this.lastTimestamp + 1);
    this.lastTimestamp = ts;
    try {
      this.q.kvSet!.run('handshake_ts', String(ts));
    } catch (err) {
      if (!isDiskFull(err)) throw err;
    }
    return ts;
  }

  private lastTimestamp = 0;

  /** Outbox (PROTOCOL 7.14): the relay stored upload `sid` as message `id`; a restart watches it, never re-sends. */
  outboxStored(sid: string, id: string): void {
    this.q.kvSet!.run(`outbox:${sid}`, id);
  }

  outboxId(sid: string): string | undefined {
    return (this.q.kvGet!.get(`outbox:${sid}`) as { v: string } | undefined)?.v;
  }

  /** The upload's file is in `sent/` or `failed/` with its result: nothing more to remember. */
  outboxForget(sid: string): void {
    this.db.prepare('DELETE FROM kv WHERE k = ?').run(`outbox:${sid}`);
  }

  close(): void {
    if (this.db.isOpen) this.db.close();
  }
}

function toEntry(r: Row): JournalEntry {
  return {
    id: r.id,
    from: r.sender,
    filename: r.filename,
    size: r.size,
    sha256: r.sha256,
    state: r.state,
    ...(r.status ? { status: r.status as JournalEntry['status'] } : {}),
    ...(r.code ? { code: r.code } : {}),
    ...(r.result ? { result: JSON.parse(r.result) as Record<string, unknown> } : {}),
    confirmed: r.confirmed === 1,
    receivedAt: r.received_at,
  };
}
