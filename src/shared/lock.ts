import path from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { DropwireError } from './errors.js';

/**
 * An exclusive lock on a data folder (one relay per `--data`, one agent per home), held as long as the
 * process lives. It is SQLite's own file lock (a RESERVED lock on `<dir>/dropwire.lock`: fcntl on Unix,
 * LockFileEx on Windows), so the OS releases it when the process ends, even by SIGKILL: a stale lock
 * cannot exist, and no pid check or time-out decides anything. The pid in the file only names the holder
 * in the refusal. Works across processes and between two opens in one process.
 */

export const LOCK_FILE = 'dropwire.lock';
const SQLITE_BUSY = 5;
const SQLITE_FULL = 13;

export class FolderLocked extends DropwireError {
  readonly pid: number | undefined;
  constructor(code: string, message: string, pid: number | undefined) {
    super(code, message);
    this.name = 'FolderLocked';
    this.pid = pid;
  }
}

export class FolderLock {
  readonly file: string;
  private db: DatabaseSync | undefined;

  private constructor(file: string, db: DatabaseSync | undefined) {
    this.file = file;
    this.db = db;
  }

  /**
   * Takes the lock or throws `code` (DW_DATA_LOCKED by default) naming the pid that holds it. `what`
   * completes the message: "another relay (pid 123) is using /srv/d".
   */
  static acquire(dir: string, o: { what: string; code?: string }): FolderLock {
    const file = path.join(dir, LOCK_FILE);
    const db = new DatabaseSync(file, { timeout: 0 });
    try {
      db.exec('CREATE TABLE IF NOT EXISTS holder (pid INTEGER NOT NULL, since INTEGER NOT NULL)');
      // Record who holds it (committed, so a refused process can read it), then hold the lock: a
      // RESERVED lock with nothing written keeps readers working and every other writer out.
      db.exec('BEGIN IMMEDIATE');
      db.prepare('DELETE FROM holder').run();
      db.prepare('INSERT INTO holder (pid, since) VALUES (?, ?)').run(process.pid, Date.now());
      db.exec('COMMIT');
      db.exec('BEGIN IMMEDIATE');
      return new FolderLock(file, db);
    } catch (err) {
      if ((err as { errcode?: number }).errcode === SQLITE_FULL) {
        // A full disk, and nobody holds the lock (a holder would have made this BUSY first): no lock can be
        // written now. Go on unlocked, so that what the process writes next says why it cannot run
        // (e.g. the agent's DW_DISK_FULL); the control socket check still refuses a second agent.
        if (db.isTransaction) db.exec('ROLLBACK');
        db.close();
        return new FolderLock(file, undefined);
      }
      if ((err as { errcode?: number }).errcode !== SQLITE_BUSY) {
        db.close();
        throw new DropwireError('DW_LOCK', `cannot lock ${dir}: ${(err as Error).message}`, { cause: err });
      }
      let pid: number | undefined;
      try {
        if (db.isTransaction) db.exec('ROLLBACK');
        pid = (db.prepare('SELECT pid FROM holder').get() as { pid?: number } | undefined)?.pid;
      } catch {
        // the holder is between its two steps: the pid stays unknown
      }
      db.close();
      const who = pid === undefined ? `another ${o.what}` : `another ${o.what} (pid ${pid})`;
      throw new FolderLocked(o.code ?? 'DW_DATA_LOCKED', `${who} is using ${path.resolve(dir)}: one ${o.what} per folder; stop it first`, pid);
    }
  }

  /** Idempotent. The OS also releases it when the process ends, however it ends. */
  release(): void {
    const db = this.db;
    if (!db) return;
    this.db = undefined;
    try {
      db.exec('ROLLBACK');
    } finally {
      db.close();
    }
  }
}

