import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { listPrinters, runAction } from '../../src/agent/handlers/index.js';
import { lpArgs, parseJobId, parseLpstat } from '../../src/agent/handlers/print.js';
import type { Action, FileFacts } from '../../src/agent/rules.js';
import { cupsUnavailableReason, startCups, type PrivateCups } from '../helpers/cups.js';

async function tempFile(content: string, name = 'ticket.txt'): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'dw-print-'));
  onTestFinished(() => rm(dir, { recursive: true, force: true }));
  const file = path.join(dir, name);
  await writeFile(file, content);
  return file;
}

const facts = (file: string, name = 'ticket.txt'): FileFacts => ({ name, from: 'shop', id: 'm-1', file });

describe('print helpers', () => {
  it('parses the job id from lp', () => {
    expect(parseJobId('request id is kitchen-123 (1 file(s))\n')).toBe('kitchen-123');
    expect(parseJobId('lp: Error - The printer or class does not exist.')).toBeUndefined();
  });

  it('builds the lp command line with the file after --', () => {
    expect(lpArgs({ type: 'print', printer: 'kitchen', copies: 2, options: { media: 'A4', 'fit-to-page': 'true' } }, '/spool/-x', 'a.pdf')).toEqual([
      '-d', 'kitchen', '-n', '2', '-o', 'media=A4', '-o', 'fit-to-page=true', '-t', 'a.pdf', '--', '/spool/-x',
    ]);
    expect(lpArgs({ type: 'print' }, '/spool/f', 'f')).toEqual(['-t', 'f', '--', '/spool/f']);
  });

  it('parses lpstat output', () => {
    const printers = parseLpstat(
      'kitchen\noffice\nbroken\nremote\n',
      [
        'system default destination: office',
        'printer kitchen is idle.  enabled since Sun Nov 22 00:18:24 2026',
        'printer office now printing office-7.  enabled since Sun Nov 22 00:18:24 2026',
        'printer broken disabled since Sun Nov 22 00:18:24 2026 -',
        '\treason unknown',
      ].join('\n'),
    );
    expect(printers).toEqual([
      { name: 'kitchen', isDefault: false, state: 'idle' },
      { name: 'office', isDefault: true, state: 'printing' },
      { name: 'broken', isDefault: false, state: 'disabled' },
      { name: 'remote', isDefault: false, state: 'unknown' },
    ]);
  });

  it('reports a missing lp or lpstat as DW_NO_PRINT_SYSTEM, saying to install CUPS', async () => {
    const out = await runAction({ type: 'print' }, { facts: facts('/tmp/x'), env: { PATH: '/nonexistent' }, platform: 'linux' });
    expect(out).toMatchObject({ status: 'failed', code: 'DW_NO_PRINT_SYSTEM', detail: { error: 'lp not found (install CUPS)' } });
    await expect(listPrinters({ env: { PATH: '/nonexistent' }, platform: 'linux' })).rejects.toMatchObject({
      code: 'DW_NO_PRINT_SYSTEM',
      message: 'lpstat not found (install CUPS)',
    });
  });

  it('on Windows runs printCommand with {file} {printer} substituted, once per copy', async () => {
    const file = await tempFile('hello');
    const record = `${file}.record`;
    const script = 'require("fs").appendFileSync(process.env.RECORD, JSON.stringify(process.argv.slice(1)) + "\\n")';
    const out = await runAction(
      { type: 'print', printer: 'Kitchen Printer', copies: 3 },
      {
        facts: facts(file),
        env: { PATH: process.env['PATH'], RECORD: record },
        platform: 'win32',
        printCommand: [process.execPath, '-e', script, '--', '/print:{printer}', '{file}'],
      },
    );
    expect(out.status).toBe('handled');
    const lines = (await readFile(record, 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as string[]);
    expect(lines).toEqual(Array(3).fill(['/print:Kitchen Printer', file]));
  });

  it('on Windows runs a printCommand that takes {copies} once', async () => {
    const file = await tempFile('hello');
    const record = `${file}.record`;
    const script = 'require("fs").appendFileSync(process.env.RECORD, JSON.stringify(process.argv.slice(1)) + "\\n")';
    const out = await runAction(
      { type: 'print', copies: 2 },
      { facts: facts(file), env: { PATH: process.env['PATH'], RECORD: record }, platform: 'win32', printCommand: [process.execPath, '-e', script, '--', '{copies}', '{file}'] },
    );
    expect(out.status).toBe('handled');
    expect((await readFile(record, 'utf8')).trim().split('\n')).toEqual([JSON.stringify(['2', file])]);
  });
});

const unavailable = cupsUnavailableReason();
if (unavailable !== undefined) console.warn(`print tests with a real CUPS skipped: ${unavailable}`);

describe.skipIf(unavailable !== undefined)('print with a private CUPS', () => {
  let cups: PrivateCups;

  beforeAll(async () => {
    cups = await startCups();
    await cups.addQueue('dwtest');
  });
  afterAll(async () => {
    await cups?.stop();
  });

  const ctx = (file: string, name?: string) => ({ facts: facts(file, name), env: cups.env, platform: 'linux' as const });

  async function waitCompleted(jobId: string): Promise<string> {
    const deadline = Date.now() + 20_000;
    let listing = '';
    while (Date.now() < deadline) {
      listing = await cups.run('lpstat', ['-W', 'completed', '-o']);
      if (listing.split('\n').some((l) => l.split(/\s+/u)[0] === jobId)) return listing;
      await sleep(200);
    }
    throw new Error(`job ${jobId} not completed in time:\n${listing}\n${await cups.log()}`);
  }

  it('prints and reports a job id that CUPS completes', async () => {
    const file = await tempFile('order 17: 2x soup\n');
    const out = await runAction({ type: 'print', printer: 'dwtest' }, ctx(file));
    expect(out).toMatchObject({ status: 'handled', detail: { printer: 'dwtest', exitCode: 0 } });
    const jobId = out.detail['jobId'] as string;
    expect(jobId).toMatch(/^dwtest-\d+$/u);
    await waitCompleted(jobId);
  });

  it('passes copies and options, and a hostile name only as the title', async () => {
    const file = await tempFile('x', '-n 99');
    const action: Action = { type: 'print', printer: 'dwtest', copies: 2, options: { 'job-priority': '90' } };
    const out = await runAction(action, ctx(file, '-o evil; $(reboot)'));
    expect(out.status).toBe('handled');
    await waitCompleted(out.detail['jobId'] as string);
  });

  it('reports an unknown printer as DW_PRINT_FAILED with the output', async () => {
    const file = await tempFile('x');
    const out = await runAction({ type: 'print', printer: 'no-such-queue' }, ctx(file));
    expect(out).toMatchObject({ status: 'failed', code: 'DW_PRINT_FAILED' });
    expect(out.detail['output']).toMatch(/does not exist|not found|unknown/iu);
  });

  it('lists printers and prints to the default destination', async () => {
    expect(await listPrinters({ env: cups.env })).toEqual([{ name: 'dwtest', isDefault: false, state: 'idle' }]);
    await cups.run('lpadmin', ['-d', 'dwtest']);
    expect(await listPrinters({ env: cups.env })).toEqual([{ name: 'dwtest', isDefault: true, state: 'idle' }]);
    const file = await tempFile('default');
    const out = await runAction({ type: 'print' }, ctx(file));
    expect(out).toMatchObject({ status: 'handled', detail: { printer: '(default)' } });
    await waitCompleted(out.detail['jobId'] as string);
  });
});
