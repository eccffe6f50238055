import { alive } from '../helpers/process.js';
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it, onTestFinished } from 'vitest';
import { runAction, type HandlerContext } from '../../src/agent/handlers/index.js';
import type { FileFacts } from '../../src/agent/rules.js';


/**
 * A folder with stand-in openers (`xdg-open`, `open`, `powershell.exe`) that record their argv (NUL
 * separated), DROPWIRE_FILE and their pid, then run `$DW_OPENER_THEN` (exit code, a sleep, ...).
 */
async function standIns(): Promise<{ bin: string; record: string; spool: string; env: (extra?: NodeJS.ProcessEnv) => NodeJS.ProcessEnv }> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'dw-open-'));
  onTestFinished(() => rm(dir, { recursive: true, force: true }));
  const bin = path.join(dir, 'bin');
  const record = path.join(dir, 'record');
  const spool = path.join(dir, 'spool file (1).pdf');
  await writeFile(spool, '%PDF-1.4\n');
  const script = `#!/bin/sh
printf '%s\\0' "$@" > "$DW_RECORD.argv"
printf '%s' "$DROPWIRE_FILE" > "$DW_RECORD.env"
echo $$ > "$DW_RECORD.pid"
eval "\${DW_OPENER_THEN:-exit 0}"
`;
  await mkdir(bin);
  for (const name of ['xdg-open', 'open', 'powershell.exe']) {
    await writeFile(path.join(bin, name), script);
    await chmod(path.join(bin, name), 0o755);
  }
  const env = (extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv => ({
    PATH: `${bin}${path.delimiter}${process.env['PATH'] ?? '/usr/bin:/bin'}`,
    DW_RECORD: record,
    ...extra,
  });
  return { bin, record, spool, env };
}

const facts = (file: string): FileFacts => ({ name: 'report.pdf', from: 'shop', id: 'm-1', file });
const open = { type: 'open' } as const;
const argv = async (record: string): Promise<string[]> => (await readFile(`${record}.argv`, 'utf8')).split('\0').slice(0, -1);

describe.skipIf(process.platform === 'win32')('open handler', () => {
  it('runs xdg-open with the file as its only argument', async () => {
    const s = await standIns();
    const out = await runAction(open, { facts: facts(s.spool), env: s.env({ DISPLAY: ':99' }), platform: 'linux' });
    expect(out).toMatchObject({ status: 'handled', detail: { command: 'xdg-open', exitCode: 0 } });
    expect(await argv(s.record)).toEqual([s.spool]);
  });

  it('accepts a Wayland session', async () => {
    const s = await standIns();
    const out = await runAction(open, { facts: facts(s.spool), env: s.env({ WAYLAND_DISPLAY: 'wayland-0' }), platform: 'linux' });
    expect(out.status).toBe('handled');
  });

  it('fails at once with DW_NO_DESKTOP without DISPLAY or WAYLAND_DISPLAY', async () => {
    const s = await standIns();
    const started = Date.now();
    const out = await runAction(open, { facts: facts(s.spool), env: s.env({ DISPLAY: '' }), platform: 'linux' });
    expect(out).toMatchObject({ status: 'failed', code: 'DW_NO_DESKTOP' });
    expect(Date.now() - started).toBeLessThan(1000);
    await expect(readFile(`${s.record}.argv`)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('reports the opener failing as DW_OPEN_FAILED with its output', async () => {
    const s = await standIns();
    const out = await runAction(open, {
      facts: facts(s.spool),
      env: s.env({ DISPLAY: ':0', DW_OPENER_THEN: 'echo "no application for pdf" >&2; exit 4' }),
      platform: 'linux',
    });
    expect(out).toMatchObject({ status: 'failed', code: 'DW_OPEN_FAILED', detail: { exitCode: 4 } });
    expect(out.detail['output']).toContain('no application for pdf');
  });

  it('reports a missing opener as DW_OPEN_FAILED', async () => {
    const out = await runAction(open, { facts: facts('/tmp/x.pdf'), env: { PATH: '/nonexistent', DISPLAY: ':0' }, platform: 'linux' });
    expect(out).toMatchObject({ status: 'failed', code: 'DW_OPEN_FAILED', detail: { error: 'ENOENT' } });
  });

  it('times out a hanging opener and kills it', async () => {
    const s = await standIns();
    const started = Date.now();
    const out = await runAction(open, {
      facts: facts(s.spool),
      env: s.env({ DISPLAY: ':0', DW_OPENER_THEN: 'exec sleep 30' }),
      platform: 'linux',
      openTimeoutMs: 500,
    });
    expect(out).toMatchObject({ status: 'failed', code: 'DW_OPEN_TIMEOUT', detail: { timedOut: true } });
    expect(Date.now() - started).toBeLessThan(5000);
    const pid = Number(await readFile(`${s.record}.pid`, 'utf8'));
    const deadline = Date.now() + 3000;
    while (alive(pid) && Date.now() < deadline) await sleep(25);
    expect(alive(pid)).toBe(false);
  });

  it('does not wait for an application that keeps the output pipes open', async () => {
    const s = await standIns();
    const started = Date.now();
    const out = await runAction(open, {
      facts: facts(s.spool),
      // the "application" inherits stdout/stderr and outlives the opener
      env: s.env({ DISPLAY: ':0', DW_OPENER_THEN: `sleep 30 & echo $! > "$DW_RECORD.app"; exit 0` }),
      platform: 'linux',
    });
    const app = Number(await readFile(`${s.record}.app`, 'utf8'));
    onTestFinished(() => {
      if (alive(app)) process.kill(app, 'SIGKILL');
    });
    expect(out.status).toBe('handled');
    expect(Date.now() - started).toBeLessThan(5000);
  });

  it('uses `open` on macOS', async () => {
    const s = await standIns();
    const out = await runAction(open, { facts: facts(s.spool), env: s.env(), platform: 'darwin' });
    expect(out).toMatchObject({ status: 'handled', detail: { command: 'open' } });
    expect(await argv(s.record)).toEqual([s.spool]);
  });

  it('on Windows, hands the path to PowerShell in DROPWIRE_FILE, never in the script', async () => {
    const s = await standIns();
    const out = await runAction(open, { facts: facts(s.spool), env: s.env(), platform: 'win32' });
    expect(out).toMatchObject({ status: 'handled', detail: { command: 'powershell.exe' } });
    const args = await argv(s.record);
    expect(args).toEqual(['-NoProfile', '-NonInteractive', '-Command', 'Start-Process -FilePath $env:DROPWIRE_FILE']);
    expect(await readFile(`${s.record}.env`, 'utf8')).toBe(s.spool);
  });

  it('stops the opener when the signal aborts', async () => {
    const s = await standIns();
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 300);
    const ctx: HandlerContext = { facts: facts(s.spool), env: s.env({ DISPLAY: ':0', DW_OPENER_THEN: 'exec sleep 30' }), platform: 'linux', signal: ac.signal };
    const out = await runAction(open, ctx);
    expect(out).toMatchObject({ status: 'failed', code: 'DW_CANCELLED' });
  });
});
