import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { describe, expect, it, onTestFinished } from 'vitest';
import { openMemoryStore } from '../../src/relay/store/memory.js';
import { openSqliteStore, SCAN_SQL, SCHEMA_VERSION, type SqliteStore } from '../../src/relay/store/sqlite.js';
import { eventContract, newMessage, storeContract } from './store-contract.js';

storeContract('sqlite', (dir) => openSqliteStore({ path: join(dir, 'relay.db') }));
storeContract('sqlite in memory', () => openMemoryStore(), { persistent: false });
eventContract('sqlite', (dir) => openSqliteStore({ path: join(dir, 'relay.db') }));

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'dropwire-sqlite-'));
  onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function open(dir: string, maxBatch?: number): Promise<SqliteStore> {
  const store = await openSqliteStore({ path: join(dir, 'relay.db'), maxBatch });
  onTestFinished(() => store.close());
  return store;
}

describe('SQLite store', () => {
  it('runs WAL with fsync at every commit, foreign keys on, at the current schema version', async () => {
    const store = await open(tempDir());
    expect(store.settings()).toEqual({
      journalMode: 'wal',
      synchronous: 2,
      foreignKeys: true,
      busyTimeoutMs: 5_000,
      schemaVersion: SCHEMA_VERSION,
    });
  });

  it.skipIf(process.platform === 'win32')('creates the database file readable by its owner only', async () => {
    const dir = tempDir();
    await open(join(dir, 'nested'));
    expect(statSync(join(dir, 'nested', 'relay.db')).mode & 0o777).toBe(0o600);
  });

  it('a lazy change is seen by no read until a commit has written it; then it is, and its event', async () => {
    const dir = tempDir();
    const store = await openSqliteStore({ path: join(dir, 'relay.db'), lazyWindowMs: 200 });
    onTestFinished(() => store.close());
    await store.enqueue(newMessage({ id: 'lz-seen', to: 'shop' }));
    const since = await store.lastEventSeq();
    let settled = false;
    const held = store.setStatus([{ id: 'lz-seen', status: 'received', at: 1_500 }], { lazy: true }).then((r) => {
      settled = true;
      return r;
    });
    // Other writes commit meanwhile (before its window ends): the lazy change is not among them.
    await store.enqueue(newMessage({ id: 'lz-other', to: 'shop' }));
    expect(settled).toBe(false);
    expect((await store.getMessage('lz-seen'))?.status).toBe('queued');
    expect((await store.getHistory('lz-seen')).map((h) => h.status)).toEqual(['queued']);
    expect((await store.eventsAfter(since, 10)).map((e) => e.messageId)).toEqual(['lz-other']);
    expect(await held).toEqual([true]);
    expect((await store.getMessage('lz-seen'))?.status).toBe('received');
    expect((await store.eventsAfter(since, 10)).map((e) => [e.messageId, e.type])).toEqual([['lz-other', 'message.queued'], ['lz-seen', 'message.received']]);
  });

  it('a sent, received and handled message costs one UPDATE and an event row per step (no history rows)', async () => {
    const dir = tempDir();
    const store = await open(dir);
    await store.enqueue(newMessage({ id: 'fold-1' }));
    const before = store.stats().writes;
    await Promise.all([
      store.setStatus([{ id: 'fold-1', status: 'sent', at: 1_100 }], { lazy: true }),
      store.setStatus([{ id: 'fold-1', status: 'received', at: 1_200 }], { lazy: true }),
      store.setStatus([{ id: 'fold-1', status: 'handled', at: 1_300 }]),
    ]);
    expect(store.stats().writes - before).toBe(1); // the three in one write
    const raw = new DatabaseSync(join(dir, 'relay.db'), { readOnly: true });
    onTestFinished(() => raw.close());
    expect(raw.prepare("SELECT count(*) AS n FROM history WHERE message_id = 'fold-1'").get()).toEqual({ n: 0 });
    expect(raw.prepare("SELECT count(*) AS n FROM events WHERE message_id = 'fold-1'").get()).toEqual({ n: 4 });
    expect((await store.getHistory('fold-1')).map((h) => [h.status, h.at])).toEqual([['queued', 1_000], ['sent', 1_100], ['received', 1_200], ['handled', 1_300]]);
  });

  it('keeps the history of a database from before the fold: old rows, then the changes made since, once each', async () => {
    const dir = tempDir();
    const path = join(dir, 'relay.db');
    (await openSqliteStore({ path })).close();
    // Back to schema version 5, with a message as version 5 wrote it: history rows beside its events.
    const raw = new DatabaseSync(path);
    raw.exec(`DROP INDEX events_message; DROP TABLE history_fold; PRAGMA user_version = 5;
      INSERT INTO messages (id, to_device, from_sender, filename, size, sha256, body, status, created_at, updated_at)
        VALUES ('old-1', 'shop1', 'web', 'a.xml', 1, 'x', x'41', 'sent', 1000, 1100);
      INSERT INTO history (message_id, status, at, detail) VALUES ('old-1', 'queued', 1000, NULL), ('old-1', 'sent', 1100, '{"offset":0}');
      INSERT INTO events (type, device, message_id, sender, at, data) VALUES
        ('message.queued', 'shop1', 'old-1', 'web', 1000, '{"message":{"id":"old-1","status":"queued"}}'),
        ('message.sent', 'shop1', 'old-1', 'web', 1100, '{"message":{"id":"old-1","status":"sent","detail":{"offset":0}}}')`);
    raw.close();
    const store = await openSqliteStore({ path });
    onTestFinished(() => store.close());
    expect(store.settings().schemaVersion).toBe(SCHEMA_VERSION);
    expect(await store.setStatus([{ id: 'old-1', status: 'failed', at: 1_300, detail: { code: 'DW_EXEC_FAILED' } }])).toEqual([true]);
    await store.enqueue(newMessage({ id: 'old-1-retry', retryOf: 'old-1', createdAt: 1_400 }));
    expect(await store.getHistory('old-1')).toEqual([
      { status: 'queued', at: 1_000 },
      { status: 'sent', at: 1_100, detail: { offset: 0 } },
      { status: 'failed', at: 1_300, detail: { code: 'DW_EXEC_FAILED' } },
      { status: 'failed', at: 1_400, detail: { retriedAs: 'old-1-retry' } },
    ]);
    expect(await store.getHistory('old-1-retry')).toEqual([{ status: 'queued', at: 1_400, detail: { retryOf: 'old-1' } }]);
  });

  it('refuses a database from a newer schema', async () => {
    const dir = tempDir();
    const raw = new DatabaseSync(join(dir, 'relay.db'));
    raw.exec(`PRAGMA user_version = ${SCHEMA_VERSION + 1}`);
    raw.close();
    await expect(openSqliteStore({ path: join(dir, 'relay.db') })).rejects.toMatchObject({ code: 'DW_STORE_VERSION' });
  });

  it('writes 1,000 concurrent enqueues in a few transactions (group commit)', async () => {
    const store = await open(tempDir());
    const before = store.stats().commits;
    await Promise.all(Array.from({ length: 1_000 }, () => store.enqueue(newMessage())));
    const commits = store.stats().commits - before;
    expect(commits).toBeGreaterThanOrEqual(2); // capped at 500 writes per transaction
    expect(commits).toBeLessThanOrEqual(4);
    expect(store.stats()).toMatchObject({ largestBatch: 500, queued: 0, failedWrites: 0 });
    expect(await store.countPending('shop1')).toBe(1_000);
  });

  it('commits each write alone with maxBatch 1', async () => {
    const store = await open(tempDir(), 1);
    await Promise.all(Array.from({ length: 20 }, () => store.enqueue(newMessage())));
    expect(store.stats()).toMatchObject({ commits: 20, writes: 20, largestBatch: 1 });
  });

  it('commits the good writes of a batch in one transaction beside a failing one', async () => {
    const store = await open(tempDir());
    const dup = newMessage();
    await store.enqueue(dup);
    const before = store.stats();
    const settled = await Promise.allSettled([
      store.enqueue(newMessage()),
      store.enqueue(newMessage({ id: dup.id })),
      store.enqueue(newMessage()),
    ]);
    expect(settled.map((s) => s.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    const after = store.stats();
    expect(after.commits - before.commits).toBe(1);
    expect(after.writes - before.writes).toBe(2);
    expect(after.failedWrites - before.failedWrites).toBe(1);
  });

  it('when a write aborts the whole transaction, the innocent writes of the batch are retried', async () => {
    const dir = tempDir();
    const store = await open(dir);
    await store.enqueue(newMessage()); // schema in place
    // RAISE(ROLLBACK) ends the transaction, as an I/O error or a full disk can.
    const raw = new DatabaseSync(join(dir, 'relay.db'));
    raw.exec(`CREATE TRIGGER boom BEFORE INSERT ON messages WHEN NEW.filename = 'boom'
      BEGIN SELECT RAISE(ROLLBACK, 'boom'); END`);
    raw.close();
    const good = Array.from({ length: 6 }, () => newMessage());
    const settled = await Promise.allSettled([
      ...good.slice(0, 3).map((m) => store.enqueue(m)),
      store.enqueue(newMessage({ filename: 'boom' })),
      ...good.slice(3).map((m) => store.enqueue(m)),
    ]);
    expect(settled.map((s) => s.status)).toEqual([...'fffrfff'].map((c) => (c === 'f' ? 'fulfilled' : 'rejected')));
    expect((settled[3] as PromiseRejectedResult).reason).toMatchObject({ code: expect.stringMatching(/^DW_STORE_/) });
    for (const m of good) expect((await store.getMessage(m.id))?.status).toBe('queued');
    expect(await store.countPending('shop1')).toBe(7);
  });

  it('refuses values its strict tables cannot hold, as DW_STORE_INVALID', async () => {
    const store = await open(tempDir());
    await expect(store.enqueue(newMessage({ createdAt: 1.5 }))).rejects.toMatchObject({ code: 'DW_STORE_INVALID' });
    await expect(store.createDevice({ name: 'x', createdAt: 0.25 })).rejects.toMatchObject({ code: 'DW_STORE_INVALID' });
  });

  it('a lone failing write leaves nothing half-done (maxBatch 1)', async () => {
    const store = await open(tempDir(), 1);
    const dup = newMessage();
    await store.enqueue(dup);
    await expect(store.enqueue(newMessage({ id: dup.id }))).rejects.toMatchObject({ code: 'DW_MESSAGE_EXISTS' });
    expect(await store.getHistory(dup.id)).toHaveLength(1);
    await expect(store.enqueue(newMessage())).resolves.toMatchObject({ created: true });
  });

  it('answers the queue and sweep queries from their indexes', async () => {
    const dir = tempDir();
    const store = await open(dir);
    await store.enqueue(newMessage());
    const raw = new DatabaseSync(join(dir, 'relay.db'), { readOnly: true });
    onTestFinished(() => raw.close());
    const plan = (sql: string): string =>
      raw
        .prepare(`EXPLAIN QUERY PLAN ${sql}`)
        .all() // parameters left unbound: the plan does not depend on their values
        .map((r) => String(r.detail))
        .join(' | ');
    expect(plan(SCAN_SQL.pending)).toMatch(/USING INDEX messages_pending/);
    expect(plan(SCAN_SQL.countPending)).toMatch(/USING COVERING INDEX messages_pending|USING INDEX messages_pending/);
    expect(plan(SCAN_SQL.messageByIdempotency)).toMatch(/USING INDEX messages_idempotency/);
    expect(plan(SCAN_SQL.dueForDeadline)).toMatch(/USING INDEX messages_deadline/);
    expect(plan(SCAN_SQL.dueForExpiry)).toMatch(/USING INDEX messages_expiry/);
    expect(plan(SCAN_SQL.cancelForDevice)).toMatch(/USING INDEX messages_pending/);
    for (const sql of Object.values(SCAN_SQL)) expect(plan(sql)).not.toMatch(/SCAN messages|USE TEMP B-TREE/);
  });

  it('a write that resolved survives the writer being killed with SIGKILL', async () => {
    const dir = tempDir();
    const db = join(dir, 'relay.db');
    const writer = join(dir, 'writer.mjs');
    // The child runs the real store from its TypeScript source (Node strips the types); the hook maps
    // the `.js` specifiers of the source tree to their `.ts` files.
    writeFileSync(
      writer,
      `import { registerHooks } from 'node:module';
      registerHooks({
        resolve(specifier, context, next) {
          try { return next(specifier, context); } catch (err) {
            if (specifier.startsWith('.') && specifier.endsWith('.js')) return next(specifier.slice(0, -3) + '.ts', context);
            throw err;
          }
        },
      });
      const { openSqliteStore } = await import(process.env.STORE_URL);
      const store = await openSqliteStore({ path: process.env.DB });
      const body = new Uint8Array(1024).fill(7);
      for (let i = 0; ; i++) {
        await Promise.all(Array.from({ length: 16 }, async (_, j) => {
          const id = 'w-' + i + '-' + j;
          await store.enqueue({ id, to: 'shop1', from: 'web', filename: id, size: 1024, sha256: 'x', body, createdAt: i });
          process.stdout.write(id + '\\n'); // synchronous on a pipe
        }));
      }`,
    );
    const child = spawn(process.execPath, [writer], {
      env: {
        ...process.env,
        DB: db,
        STORE_URL: new URL('../../src/relay/store/sqlite.ts', import.meta.url).href,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    onTestFinished(() => {
      child.kill('SIGKILL');
    });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const resolved: string[] = [];
    let partial = '';
    const exited = new Promise<NodeJS.Signals | null>((resolve) => child.on('exit', (_code, signal) => resolve(signal)));
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (d: Buffer) => {
        const lines = (partial + d.toString()).split('\n');
        partial = lines.pop()!;
        resolved.push(...lines);
        // Kill mid-stream, with more writes in flight, right after these resolved.
        if (resolved.length >= 200) {
          child.kill('SIGKILL');
          resolve();
        }
      });
      child.on('exit', () => reject(new Error(`writer exited early: ${stderr}`)));
    });
    expect(await exited).toBe('SIGKILL');

    const store = await open(dir);
    for (const id of resolved) expect(await store.getMessage(id), id).toMatchObject({ status: 'queued', size: 1024 });
    expect(await store.countPending('shop1')).toBeGreaterThanOrEqual(resolved.length);
  });
});
