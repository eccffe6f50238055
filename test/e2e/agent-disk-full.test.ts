import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it, onTestFinished } from 'vitest';
import { cli, randomData, recordingHandler, setup, sha256, spawnCli, tempDir, waitFor } from '../helpers/cli.js';

/** A small tmpfs the test can fill; undefined when mounting is not permitted here (the reason instead). */
function mountTmpfs(dir: string, size: string): string | undefined {
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0700`, 'tmpfs', dir], { stdio: 'pipe' });
    return undefined;
  } catch (err) {
    return `cannot mount a tmpfs (${((err as { stderr?: Buffer }).stderr?.toString() || (err as Error).message).trim()})`;
  }
}

const cannotMount = (() => {
  const probe = fs.mkdtempSync(path.join(os.tmpdir(), 'dw-mount-probe-'));
  const why = mountTmpfs(probe, '64k');
  if (!why) execFileSync('umount', [probe]);
  fs.rmdirSync(probe);
  if (why) console.log(`skipping the full-disk test: ${why}`);
  return why;
})();

/** Writes to `file` until the file system has no byte left (bounded: at most `max` bytes). */
function fill(file: string, max = 64 * 1024 * 1024): number {
  const fd = fs.openSync(file, 'w');
  let total = 0;
  try {
    for (const size of [64 * 1024, 4096, 512, 1]) {
      const buf = Buffer.alloc(size, 0x61);
      for (;;) {
        if (total >= max) throw new Error('the file system did not fill up');
        try {
          total += fs.writeSync(fd, buf);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
          break;
        }
      }
    }
  } finally {
    fs.closeSync(fd);
  }
  return total;
}

/** An enrolled agent home on a fresh 2 MiB tmpfs (unmounted when the test ends, after the agent is killed). */
async function agentOnSmallDisk(rules: unknown[]) {
  const s = await setup({ rules });
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'dw-full-'));
  expect(mountTmpfs(home, '2m')).toBeUndefined();
  const box: { agent?: ReturnType<typeof spawnCli> } = {};
  onTestFinished(async () => {
    await box.agent?.kill('SIGKILL');
    execFileSync('umount', [home]);
    fs.rmdirSync(home);
  });
  fs.cpSync(s.home, home, { recursive: true });
  box.agent = spawnCli(['agent', '--home', home]);
  await box.agent.waitLog((l) => l.msg === 'session started');
  return { s, home, agent: box.agent };
}

describe.skipIf(cannotMount !== undefined)('agent on a full disk', () => {
  it('stays up, does not acknowledge, logs DW_DISK_FULL once, retries, and delivers exactly once when space is free', { timeout: 120_000 }, async () => {
    const dir = tempDir();
    const rec = recordingHandler(dir); // the handler's record is kept off the small disk
    const { s, home, agent } = await agentOnSmallDisk([rec.rule]);
    // One file through while there is space: the journal and its WAL have their pages.
    const warm = await s.api.send(s.device, 'warm.xml', '<warm/>');
    await s.api.until(warm.json.id as string, ['handled']);

    const filler = path.join(home, 'filler');
    expect(fill(filler)).toBeGreaterThan(0);
    const body = randomData(256 * 1024);
    const sent = await s.api.send(s.device, 'order.xml', body);
    expect(sent.status).toBe(202);
    const id = sent.json.id as string;

    const full = await agent.waitLog((l) => l.code === 'DW_DISK_FULL' && l.level === 50, 30_000);
    expect(full.msg).toContain('disk of the agent folder is full');
    // It keeps trying: two more connections made while the disk stays full ...
    const reconnects = async () => {
      await new Promise((r) => setTimeout(r, 500)); // one `dropwire status` process at a time, not a stream of them
      return (JSON.parse((await cli(['status', '--json', '--home', home])).stdout) as { reconnects: number }).reconnects;
    };
    const before = await reconnects();
    await waitFor(async () => ((await reconnects()) >= before + 2 ? true : undefined), 60_000, 'two more attempts');
    // ... yet the agent is up, nothing was acknowledged, and DW_DISK_FULL was logged once.
    expect(agent.child.exitCode).toBeNull();
    const st = await cli(['status', '--json', '--home', home]);
    const view = JSON.parse(st.stdout) as { running: boolean; lastError: string };
    expect(view.running).toBe(true);
    expect(view.lastError).toMatch(/^DW_DISK_FULL: /);
    const m = await s.api.message(id);
    expect(['queued', 'sent']).toContain(m.status);
    expect(agent.logs.filter((l) => l.code === 'DW_DISK_FULL' && l.level === 50)).toHaveLength(1);
    expect(rec.runs().map((r) => r.id)).not.toContain(id);

    // Space again: delivered, handled exactly once, bytes intact.
    const attemptsWhileFull = (await reconnects()) - before + 1;
    fs.rmSync(filler);
    const freedAt = Date.now();
    const done = await s.api.until(id, ['handled', 'failed'], 60_000);
    console.log(`full disk: ${attemptsWhileFull} attempts while full, 1 DW_DISK_FULL line; handled ${((Date.now() - freedAt) / 1000).toFixed(1)} s after space was freed`);
    expect(done.status).toBe('handled');
    const runs = rec.runs().filter((r) => r.id === id);
    expect(runs).toEqual([{ id, sha: sha256(body), name: 'order.xml' }]);
    const history = (done.history as { status: string }[]).map((h) => h.status);
    expect(history.filter((x) => x === 'received')).toHaveLength(1);
    await agent.waitLog((l) => l.msg === 'the agent folder has space again');
    expect(agent.child.exitCode).toBeNull();
  });

  it('a handler that fills the disk: the outcome waits in memory until the journal can take it; the handler runs once', { timeout: 120_000 }, async () => {
    const dir = tempDir();
    const script = path.join(dir, 'fill-then-ok.mjs');
    const runs = path.join(dir, 'runs.log');
    fs.writeFileSync(
      script,
      `import fs from 'node:fs';
const [filler, id] = process.argv.slice(2);
fs.appendFileSync(${JSON.stringify(runs)}, id + '\\n');
const fd = fs.openSync(filler, 'w');
for (const size of [65536, 4096, 512, 1]) {
  const b = Buffer.alloc(size, 97);
  for (let i = 0; i < 100000; i++) { try { fs.writeSync(fd, b); } catch { break; } }
}
fs.closeSync(fd);
console.log('disk filled');\n`,
    );
    const { s, home, agent } = await agentOnSmallDisk([
      { match: '*', action: { type: 'exec', command: process.execPath, args: [script, '{file}.filler', '{id}'], timeoutS: 60 } },
    ]);
    const sent = await s.api.send(s.device, 'job.txt', 'fill the disk, then succeed');
    const id = sent.json.id as string;
    await s.api.until(id, ['received', 'handled', 'failed']);
    const full = await agent.waitLog((l) => l.code === 'DW_DISK_FULL' && l.level === 50, 30_000);
    expect(full.stage).toBe('journal');
    // The handler ran and succeeded, but the outcome is not reported before the journal has it.
    expect((await s.api.message(id)).status).toBe('received');
    expect(agent.child.exitCode).toBeNull();
    // Space again: the same outcome is recorded and reported; the handler did not run a second time.
    const fillerFile = path.join(home, 'spool', id, 'job.txt.filler');
    expect(fs.statSync(fillerFile).size).toBeGreaterThan(0);
    fs.rmSync(fillerFile);
    const done = await s.api.until(id, ['handled', 'failed'], 60_000);
    expect(done.status).toBe('handled');
    expect((done.result as { output?: string }).output).toContain('disk filled');
    expect(fs.readFileSync(runs, 'utf8').trim().split('\n')).toEqual([id]);
  });

  it('an agent started on a full disk says DW_DISK_FULL and why, without a stack trace', async () => {
    const s = await setup();
    const home = fs.mkdtempSync(path.join(os.tmpdir(), 'dw-full-'));
    expect(mountTmpfs(home, '1m')).toBeUndefined();
    onTestFinished(() => {
      execFileSync('umount', [home]);
      fs.rmdirSync(home);
    });
    fs.cpSync(s.home, home, { recursive: true });
    fill(path.join(home, 'filler'));
    const r = await cli(['agent', '--home', home]);
    expect(r.code).toBe(1);
    // (Its log file cannot be written either, which it says once, on stderr.)
    expect(r.stderr).toMatch(new RegExp(`^dropwire: DW_DISK_FULL: the disk of ${home} is full: the agent cannot open its journal .*; free some space$`, 'm'));
    expect(r.stderr).not.toContain('    at ');
  });
});
