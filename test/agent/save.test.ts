import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream, statSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { watch } from 'chokidar';
import { describe, expect, it, onTestFinished } from 'vitest';
import { runAction } from '../../src/agent/handlers/index.js';
import { numberedName } from '../../src/agent/handlers/save.js';
import type { Action, FileFacts } from '../../src/agent/rules.js';

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'dw-save-'));
  onTestFinished(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

async function spoolFile(dir: string, content: string | Buffer, id = 'm-1'): Promise<string> {
  const spool = path.join(dir, 'spool');
  await mkdir(spool, { recursive: true });
  const file = path.join(spool, `${id}.part`);
  await writeFile(file, content);
  return file;
}

const facts = (file: string, name: string): FileFacts => ({ name, from: 'shop', id: 'm-1', file });
const save = (dir: string, ifExists: 'rename' | 'replace' | 'fail' = 'rename'): Action => ({ type: 'save', dir, ifExists });

async function sha256(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return h.digest('hex');
}

const leftovers = async (dir: string): Promise<string[]> => (await readdir(dir)).filter((n) => n.startsWith('.dropwire-'));

describe('save handler', () => {
  it('a folder watcher never sees a partial file while 100 MiB lands', async () => {
    const root = await tempDir();
    const target = path.join(root, 'inbox');
    await mkdir(target);
    const SIZE = 100 * 1024 * 1024;
    const src = path.join(root, 'big.bin');
    const block = randomBytes(1024 * 1024);
    await pipeline(
      (async function* () {
        for (let i = 0; i < SIZE / block.length; i++) yield block;
      })(),
      createWriteStream(src),
    );

    const events: { event: string; name: string; size: number; statSize: number }[] = [];
    const watcher = watch(target, {
      ignored: (p: string) => p !== target && path.basename(p).startsWith('.'),
      ignoreInitial: true,
      alwaysStat: true,
    });
    onTestFinished(() => watcher.close());
    const record = (event: string) => (p: string, stats?: { size: number }) => {
      let statSize = -1;
      try {
        statSize = statSync(p).size;
      } catch {
        // gone again
      }
      events.push({ event, name: path.basename(p), size: stats?.size ?? -1, statSize });
    };
    watcher.on('add', record('add'));
    watcher.on('change', record('change'));
    await new Promise<void>((resolve) => watcher.once('ready', () => resolve()));

    const out = await runAction(save(target), { facts: facts(src, 'big.bin') });
    expect(out).toMatchObject({ status: 'handled', detail: { bytes: SIZE, savedAs: path.join(target, 'big.bin') } });

    const deadline = Date.now() + 10_000;
    while (!events.some((e) => e.event === 'add' && e.name === 'big.bin') && Date.now() < deadline) await sleep(50);
    await sleep(300); // let any late change event arrive
    expect(events.filter((e) => e.name === 'big.bin').length).toBeGreaterThan(0);
    for (const e of events) {
      expect(e.name).toBe('big.bin');
      expect(e.size).toBe(SIZE);
      expect(e.statSize).toBe(SIZE);
    }
    expect(await sha256(path.join(target, 'big.bin'))).toBe(await sha256(src));
    expect(await leftovers(target)).toEqual([]);
  });

  it('ifExists rename: name (1).ext, name (2).ext, ...', async () => {
    const root = await tempDir();
    const dir = path.join(root, 'out');
    const saved: unknown[] = [];
    for (const n of [0, 1, 2]) {
      const src = await spoolFile(root, `version ${n}`);
      const out = await runAction(save(dir, 'rename'), { facts: facts(src, 'order.xml') });
      expect(out.status).toBe('handled');
      saved.push(out.detail['savedAs']);
    }
    expect(saved).toEqual([path.join(dir, 'order.xml'), path.join(dir, 'order (1).xml'), path.join(dir, 'order (2).xml')]);
    expect(await readFile(path.join(dir, 'order (2).xml'), 'utf8')).toBe('version 2');
    expect(await readFile(path.join(dir, 'order.xml'), 'utf8')).toBe('version 0');
    expect(numberedName('README', 3)).toBe('README (3)');
    expect(numberedName('a.tar.gz', 1)).toBe('a.tar (1).gz');
    expect(await leftovers(dir)).toEqual([]);
  });

  it('ifExists replace: atomically replaces the existing file', async () => {
    const root = await tempDir();
    const dir = path.join(root, 'out');
    await mkdir(dir);
    await writeFile(path.join(dir, 'order.xml'), 'old');
    const src = await spoolFile(root, 'new');
    const out = await runAction(save(dir, 'replace'), { facts: facts(src, 'order.xml') });
    expect(out).toMatchObject({ status: 'handled', detail: { savedAs: path.join(dir, 'order.xml'), replaced: true } });
    expect(await readFile(path.join(dir, 'order.xml'), 'utf8')).toBe('new');
    expect(await readdir(dir)).toEqual(['order.xml']);
  });

  it('ifExists fail: DW_FILE_EXISTS, the existing file untouched, nothing left behind', async () => {
    const root = await tempDir();
    const dir = path.join(root, 'out');
    await mkdir(dir);
    await writeFile(path.join(dir, 'order.xml'), 'old');
    const src = await spoolFile(root, 'new');
    const out = await runAction(save(dir, 'fail'), { facts: facts(src, 'order.xml') });
    expect(out).toMatchObject({ status: 'failed', code: 'DW_FILE_EXISTS' });
    expect(await readFile(path.join(dir, 'order.xml'), 'utf8')).toBe('old');
    expect(await readdir(dir)).toEqual(['order.xml']);
    // and with no conflict it saves
    const ok = await runAction(save(dir, 'fail'), { facts: facts(src, 'other.xml') });
    expect(ok).toMatchObject({ status: 'handled', detail: { savedAs: path.join(dir, 'other.xml') } });
  });

  it('creates the folder, and keeps an untrusted name inside it', async () => {
    const root = await tempDir();
    const dir = path.join(root, 'a', 'b', 'c');
    const src = await spoolFile(root, 'x');
    const out = await runAction(save(dir), { facts: facts(src, '../../../evil.sh') });
    expect(out).toMatchObject({ status: 'handled', detail: { savedAs: path.join(dir, 'evil.sh') } });
    expect(await readdir(root)).toEqual(expect.arrayContaining(['a', 'spool']));
    expect((await readdir(root)).length).toBe(2);
  });

  it('reports a missing spool file as DW_SAVE_FAILED and leaves no temporary file', async () => {
    const root = await tempDir();
    const dir = path.join(root, 'out');
    const out = await runAction(save(dir), { facts: facts(path.join(root, 'missing'), 'a.txt') });
    expect(out).toMatchObject({ status: 'failed', code: 'DW_SAVE_FAILED' });
    expect(await readdir(dir)).toEqual([]);
  });

  it('reports an aborted save as DW_CANCELLED', async () => {
    const root = await tempDir();
    const src = await spoolFile(root, 'x');
    const ac = new AbortController();
    ac.abort();
    const out = await runAction(save(path.join(root, 'out')), { facts: facts(src, 'a.txt'), signal: ac.signal });
    expect(out).toMatchObject({ status: 'failed', code: 'DW_CANCELLED' });
  });
});
