import { alive } from '../helpers/process.js';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it, onTestFinished } from 'vitest';
import { BASE_ENV_KEYS, baseEnv, OUTPUT_TAIL_BYTES, OutputTail } from '../../src/agent/handlers/exec.js';
import { runAction, type HandlerContext } from '../../src/agent/handlers/index.js';
import type { Action, FileFacts } from '../../src/agent/rules.js';

const node = process.execPath;
const facts: FileFacts = { name: 'order.xml', from: 'shop-east', id: 'm-1', file: '/spool/m-1' };
const ctx = (over: Partial<HandlerContext> = {}): HandlerContext => ({
  facts,
  env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin' },
  ...over,
});
const exec = (command: string, args: string[], extra: Partial<Extract<Action, { type: 'exec' }>> = {}): Action => ({
  type: 'exec',
  command,
  args,
  ...extra,
});

/** Alive means signalable and, where /proc tells, not a zombie waiting for a reaper. */

async function waitGone(pids: number[], ms = 3000): Promise<void> {
  const deadline = Date.now() + ms;
  while (pids.some(alive) && Date.now() < deadline) await sleep(25);
}

/** Runs `node -e <print argv as JSON>` with `args` after it and returns what the script received. */
const ARGV_SCRIPT = 'process.stdout.write(JSON.stringify(process.argv.slice(1)))';

describe('OutputTail', () => {
  it('keeps only the last bytes, across wrap-around', () => {
    const t = new OutputTail(8);
    t.write('abc');
    expect(t.text()).toBe('abc');
    t.write('defgh');
    expect(t.text()).toBe('abcdefgh');
    t.write('ij');
    expect(t.text()).toBe('cdefghij');
    t.write('0123456789xyz');
    expect(t.text()).toBe('56789xyz');
    expect(t.totalBytes).toBe(3 + 5 + 2 + 13);
  });

  it('drops a UTF-8 sequence cut by the window', () => {
    const t = new OutputTail(5);
    t.write('x\u00e9\u00e9ab'); // 78 c3 a9 c3 a9 61 62: the window starts inside the first é
    expect(t.text()).toBe('\u00e9ab');
  });
});

describe('exec handler', () => {
  it('reports success with output', async () => {
    const out = await runAction(exec(node, ['-e', 'console.log("hello"); console.error("warn")']), ctx());
    expect(out.status).toBe('handled');
    expect(out.code).toBeUndefined();
    expect(out.detail).toMatchObject({ exitCode: 0, timedOut: false });
    expect(out.detail['output']).toContain('hello');
    expect(out.detail['output']).toContain('warn');
    expect(typeof out.detail['durationMs']).toBe('number');
  });

  it('reports a non-zero exit with only the last 4 KiB of combined output', async () => {
    // stdout and stderr are separate pipes, so only the order within one stream is certain; 220 KB of
    // stdout (more than a pipe buffer) makes sure EARLY is read long before the last 4 KiB.
    const script = `
      process.stderr.write('EARLY\\n');
      for (let i = 0; i < 20000; i++) process.stdout.write('line ' + String(i).padStart(5, '0') + '\\n');
      process.stdout.write('THE END\\n');
      process.exitCode = 3;`;
    const out = await runAction(exec(node, ['-e', script]), ctx());
    expect(out).toMatchObject({ status: 'failed', code: 'DW_EXEC_FAILED', detail: { exitCode: 3 } });
    const output = out.detail['output'] as string;
    expect(Buffer.byteLength(output)).toBe(OUTPUT_TAIL_BYTES);
    expect(output.endsWith('line 19999\nTHE END\n')).toBe(true);
    expect(output).not.toContain('line 00000');
    expect(output).not.toContain('EARLY');
    expect(out.detail['outputBytes']).toBe(6 + 20000 * 11 + 8);
  });

  it.skipIf(process.platform === 'win32')('kills the whole process tree on timeout', async () => {
    const started = Date.now();
    const out = await runAction(
      exec('sh', ['-c', 'sleep 30 & echo "bg=$!"; echo "sh=$$"; sleep 30'], { timeoutS: 1 }),
      ctx(),
    );
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(out).toMatchObject({ status: 'failed', code: 'DW_EXEC_TIMEOUT', detail: { timedOut: true } });
    const output = out.detail['output'] as string;
    const bg = Number(/bg=(\d+)/u.exec(output)?.[1]);
    const sh = Number(/sh=(\d+)/u.exec(output)?.[1]);
    expect(bg).toBeGreaterThan(0);
    expect(sh).toBeGreaterThan(0);
    // Belt and braces: never leave our own sleeps behind, even if the assertion below fails.
    onTestFinished(() => {
      for (const pid of [bg, sh]) if (alive(pid)) process.kill(pid, 'SIGKILL');
    });
    await waitGone([bg, sh]);
    expect(alive(sh)).toBe(false);
    expect(alive(bg)).toBe(false);
  });

  it('passes hostile names as one literal argument each, without a shell', async () => {
    const hostile = ['$(reboot)', '; rm -rf ~', `it's "quoted"`, 'two\nlines', '-rf', '`id`', '*', '$HOME', '&& echo pwned |', ''];
    for (const name of hostile) {
      const out = await runAction(
        exec(node, ['-e', ARGV_SCRIPT, '--', '{name}', 'before-{name}-after', '{id}']),
        ctx({ facts: { ...facts, name } }),
      );
      expect(out.status).toBe('handled');
      expect(JSON.parse(out.detail['output'] as string)).toEqual([name, `before-${name}-after`, 'm-1']);
    }
  });

  it('passes DROPWIRE_* and only the variables in ctx.env', async () => {
    process.env['DW_TEST_AGENT_SECRET'] = 'must-not-leak';
    onTestFinished(() => {
      delete process.env['DW_TEST_AGENT_SECRET'];
    });
    const out = await runAction(
      exec(node, ['-e', 'process.stdout.write(JSON.stringify(process.env))']),
      ctx({ env: { PATH: process.env['PATH'], ONLY_THIS: 'yes', UNSET: undefined } }),
    );
    expect(out.status).toBe('handled');
    const env = JSON.parse(out.detail['output'] as string) as Record<string, string>;
    expect(env).toMatchObject({
      ONLY_THIS: 'yes',
      DROPWIRE_FILE: '/spool/m-1',
      DROPWIRE_NAME: 'order.xml',
      DROPWIRE_FROM: 'shop-east',
      DROPWIRE_ID: 'm-1',
    });
    expect(env['DW_TEST_AGENT_SECRET']).toBeUndefined();
    expect(env['HOME']).toBeUndefined();
    expect('UNSET' in env).toBe(false);
  });

  it('without ctx.env, passes only the allow-listed base environment', async () => {
    process.env['DW_TEST_AGENT_SECRET'] = 'must-not-leak';
    onTestFinished(() => {
      delete process.env['DW_TEST_AGENT_SECRET'];
    });
    const out = await runAction(exec(node, ['-e', 'process.stdout.write(JSON.stringify(process.env))']), { facts });
    const env = JSON.parse(out.detail['output'] as string) as Record<string, string>;
    expect(env['PATH']).toBe(process.env['PATH']);
    expect(env['DW_TEST_AGENT_SECRET']).toBeUndefined();
    expect(env['DROPWIRE_ID']).toBe('m-1');
  });

  it('reports a missing command as DW_EXEC_NOT_FOUND', async () => {
    const out = await runAction(exec('dropwire-no-such-command-xyz', ['{file}']), ctx());
    expect(out).toMatchObject({ status: 'failed', code: 'DW_EXEC_NOT_FOUND' });
    const abs = await runAction(exec('/nonexistent/dir/tool', []), ctx());
    expect(abs).toMatchObject({ status: 'failed', code: 'DW_EXEC_NOT_FOUND' });
  });

  it('runs in cwd, and reports a missing cwd as DW_EXEC_BAD_CWD', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'dw-exec-'));
    onTestFinished(() => rm(dir, { recursive: true, force: true }));
    const out = await runAction(exec(node, ['-e', 'process.stdout.write(process.cwd())'], { cwd: dir }), ctx());
    expect(out.detail['output']).toBe(dir);
    const missing = await runAction(exec(node, ['-e', ''], { cwd: path.join(dir, 'nope') }), ctx());
    expect(missing).toMatchObject({ status: 'failed', code: 'DW_EXEC_BAD_CWD' });
  });

  it.skipIf(process.platform === 'win32')('stops the command when the signal aborts', async () => {
    const ac = new AbortController();
    const p = runAction(exec('sh', ['-c', 'echo "sh=$$"; sleep 30']), ctx({ signal: ac.signal }));
    setTimeout(() => ac.abort(), 300);
    const out = await p;
    expect(out).toMatchObject({ status: 'failed', code: 'DW_CANCELLED' });
    const sh = Number(/sh=(\d+)/u.exec(out.detail['output'] as string)?.[1]);
    await waitGone([sh]);
    expect(alive(sh)).toBe(false);
  });
});

describe('the environment handlers get', () => {
  it('README lists exactly the variables baseEnv passes on', async () => {
    const readme = await readFile(path.join(import.meta.dirname, '../../README.md'), 'utf8');
    const para = readme.split('\n\n').find((p) => p.startsWith("Handlers' environment:"));
    expect(para).toBeDefined();
    const listed = [...para!.split('Anything else')[0]!.matchAll(/`([A-Z_()0-9*]+)`/g)].map((m) => m[1]!);
    expect(listed.filter((v) => v !== 'DROPWIRE_*').sort()).toEqual([...BASE_ENV_KEYS, 'LC_*'].sort());
  });

  it('passes the listed variables and LC_*, nothing else', () => {
    const env = baseEnv({ PATH: '/bin', HOME: '/h', LANG: 'C.UTF-8', LC_TIME: 'de_DE', TERM: 'xterm', SHELL: '/bin/sh', AWS_SECRET_ACCESS_KEY: 'x', HTTPS_PROXY: 'http://p', DROPWIRE_HOME: '/h/.dw' });
    expect(env).toEqual({ PATH: '/bin', HOME: '/h', LANG: 'C.UTF-8', LC_TIME: 'de_DE', TERM: 'xterm', SHELL: '/bin/sh' });
  });
});
