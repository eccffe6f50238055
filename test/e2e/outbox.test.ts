import fs from 'node:fs';
import path from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { describe, expect, it } from 'vitest';
import { cli, cliOk, spawnCli, tempDir, waitFor } from '../helpers/cli.js';
import { hosts } from '../helpers/hosts.js';

const N = 500;
const content = (i: number) => `order ${i}\n${'x'.repeat(i % 97)}\n`;
const nameOf = (i: number) => `order-${String(i).padStart(3, '0')}.csv`;

describe('outbox folders (issue 16)', () => {
  it(`${N} files dropped while the agent is SIGKILLed twice: each sent exactly once, each in sent/ with its result; a growing file only once complete`, async () => {
    const saved = tempDir('dw-outbox-saved-');
    const h = await hosts(['till', 'office'], { allow: { till: 'office' }, rules: { office: [{ match: '*', action: { type: 'save', dir: saved, ifExists: 'fail' } }] } });
    await h.start('office');
    const box = path.join(h.dir, 'outbox');
    const added = await cli(['outbox', 'add', box, '--to', 'office', '--home', h.homes.till!]);
    expect(added.code).toBe(0);
    expect(added.stderr).toContain('the outbox is watched when it starts');
    expect(JSON.parse(await cliOk(['outbox', 'list', '--json', '--home', h.homes.till!]))).toEqual([{ dir: box, to: 'office', after: 'sent' }]);
    fs.mkdirSync(box, { recursive: true });
    const drop = (from: number, to: number) => {
      for (let i = from; i < to; i++) {
        // As a careful program writes: a temporary name, then a rename (the .tmp is never picked up).
        fs.writeFileSync(path.join(box, `${nameOf(i)}.tmp`), content(i));
        fs.renameSync(path.join(box, `${nameOf(i)}.tmp`), path.join(box, nameOf(i)));
      }
    };
    const sent = () => fs.readdirSync(path.join(box, 'sent')).filter((f) => /^(order-\d{3}|grow)\.csv$/.test(f)).length;
    const startTill = () => spawnCli(['agent', '--home', h.homes.till!]);

    drop(0, 100); // dropped while no agent runs
    let till = startTill();
    await waitFor(() => fs.existsSync(path.join(box, 'sent')) && sent() >= 20, 60_000, 'some files sent');
    drop(100, 250);
    await till.kill('SIGKILL');
    drop(250, 350);
    till = startTill();
    await waitFor(() => sent() >= 150, 60_000, 'more files sent');
    await till.kill('SIGKILL');
    // A file still being written: grows for 3 s; it must go once, complete.
    const grow = path.join(box, 'grow.csv');
    const chunks = Array.from({ length: 10 }, (_, i) => `line ${i} ${'y'.repeat(1000)}\n`);
    drop(350, N);
    fs.writeFileSync(grow, chunks[0]!);
    till = startTill();
    // One more line every 300 ms for 3 s: well inside the 2 s a file must stay unchanged to count as written.
    for (const c of chunks.slice(1)) {
      await new Promise((r) => setTimeout(r, 300));
      fs.appendFileSync(grow, c);
    }
    await waitFor(() => (sent() === N + 1 ? true : undefined), 240_000, `all ${N + 1} files in sent/`);

    // Each file in sent/ with its result; nothing left claimed, nothing failed, nothing left behind.
    const results = new Map<string, { id: string; status: string }>();
    for (let i = 0; i < N; i++) {
      expect(fs.readFileSync(path.join(box, 'sent', nameOf(i)), 'utf8')).toBe(content(i));
      const r = JSON.parse(fs.readFileSync(path.join(box, 'sent', `${nameOf(i)}.result.json`), 'utf8')) as { id: string; status: string };
      expect(r.status).toBe('handled');
      results.set(nameOf(i), r);
    }
    expect(fs.readFileSync(path.join(box, 'sent', 'grow.csv'), 'utf8')).toBe(chunks.join(''));
    expect(fs.readdirSync(path.join(box, 'sent')).length).toBe(2 * (N + 1)); // each file and its result, nothing else
    expect(fs.readdirSync(path.join(box, 'failed'))).toEqual([]);
    expect(fs.readdirSync(path.join(box, '.dropwire')).filter((f) => !f.startsWith('.'))).toEqual([]);
    expect(fs.readdirSync(box).filter((f) => !['sent', 'failed', '.dropwire'].includes(f))).toEqual([]);
    // Exactly once: the relay stored one message per file, and the office saved each once, complete.
    const db = new DatabaseSync(path.join(h.data, 'relay.db'), { readOnly: true });
    const rows = db.prepare("SELECT id, filename, size FROM messages WHERE from_sender = 'till'").all() as { id: string; filename: string; size: number }[];
    db.close();
    expect(rows.length).toBe(N + 1);
    expect(new Set(rows.map((r) => r.filename)).size).toBe(N + 1);
    for (const [name, r] of results) expect(rows.find((x) => x.filename === name)?.id).toBe(r.id);
    expect(rows.find((r) => r.filename === 'grow.csv')?.size).toBe(chunks.join('').length);
    const savedFiles = fs.readdirSync(saved);
    expect(savedFiles.length).toBe(N + 1);
    for (let i = 0; i < N; i++) expect(fs.readFileSync(path.join(saved, nameOf(i)), 'utf8')).toBe(content(i));
    expect(fs.readFileSync(path.join(saved, 'grow.csv'), 'utf8')).toBe(chunks.join(''));
    await cliOk(['outbox', 'remove', box, '--home', h.homes.till!]);
    expect(JSON.parse(await cliOk(['outbox', 'list', '--json', '--home', h.homes.till!]))).toEqual([]);
    await till.kill();
  }, 400_000);

  it('a refused file goes to failed/ with its result; --after delete keeps only the result of a handled one; --match picks files', async () => {
    const saved = tempDir('dw-outbox-saved-');
    const h = await hosts(['till', 'office', 'kiosk'], { allow: { till: 'office' }, rules: { office: [{ match: '*', action: { type: 'save', dir: saved, ifExists: 'fail' } }] } });
    await h.start('office');
    await h.start('till');
    const refused = path.join(h.dir, 'to-kiosk');
    const deleting = path.join(h.dir, 'to-office');
    await cliOk(['outbox', 'add', refused, '--to', 'kiosk', '--home', h.homes.till!]);
    await cliOk(['outbox', 'add', deleting, '--to', 'office', '--after', 'delete', '--match', '*.csv', '--home', h.homes.till!]);
    fs.writeFileSync(path.join(refused, 'note.txt'), 'for the kiosk');
    fs.writeFileSync(path.join(deleting, 'z.csv'), 'z;1\n');
    fs.writeFileSync(path.join(deleting, 'skip.pdf'), 'not matched');
    const failedResult = path.join(refused, 'failed', 'note.txt.result.json');
    await waitFor(() => fs.existsSync(failedResult) || undefined, 30_000, 'the refused file in failed/');
    expect(JSON.parse(fs.readFileSync(failedResult, 'utf8'))).toMatchObject({ file: 'note.txt', to: 'kiosk', status: 'failed', code: 'DW_FORBIDDEN' });
    expect(fs.readFileSync(path.join(refused, 'failed', 'note.txt'), 'utf8')).toBe('for the kiosk');
    const sentResult = path.join(deleting, 'sent', 'z.csv.result.json');
    await waitFor(() => fs.existsSync(sentResult) || undefined, 30_000, 'the handled file\'s result');
    expect(JSON.parse(fs.readFileSync(sentResult, 'utf8'))).toMatchObject({ file: 'z.csv', status: 'handled' });
    expect(fs.existsSync(path.join(deleting, 'sent', 'z.csv'))).toBe(false);
    expect(fs.readFileSync(path.join(saved, 'z.csv'), 'utf8')).toBe('z;1\n');
    // Not matched: left where it is.
    expect(fs.readFileSync(path.join(deleting, 'skip.pdf'), 'utf8')).toBe('not matched');
  });
});
