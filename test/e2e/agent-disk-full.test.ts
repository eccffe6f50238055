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

describe.skipIf(cannotMount !== undefined)('agent on a full disk', () => {
  it('stays up, does not acknowledge, logs DW_DISK_FULL once, retries, and delivers exactly once when space is free', { timeout: 120_000 }, async () => {
    const dir = tempDir();
    const rec = recordingHandler(dir); // the handler's record is kept off the small disk
    const s = await setup({ rules: [rec.rule] });
    // The agent's home on a 2 MiB tmpfs, made from the enrolled home.
    const home = fs.mkdtempSync(path.join(os.tmpdir(), 'dw-full-'));
    const why = mountTmpfs(home, '2m');
    expect(why).toBeUndefined();
    let agent: ReturnType<typeof spawnCli> | undefined;
    onTestFinished(async () => {
      await agent?.kill('SIGKILL');
      execFileSync('umount', [home]);
      fs.rmdirSync(home);
    });
    fs.cpSync(s.home, home, { recursive: true });
    agent = spawnCli(['agent', '--home', home]);
    await agent.waitLog((l) => l.msg === 'session started');
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
    const reconnects = async () => (JSON.parse((await cli(['status', '--json', '--home', home])).stdout) as { reconnects: number }).reconnects;
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
    fs.rmSync(filler);
    const done = await s.api.until(id, ['handled', 'failed'], 60_000);
    expect(done.status).toBe('handled');
    const runs = rec.runs().filter((r) => r.id === id);
    expect(runs).toEqual([{ id, sha: sha256(body), name: 'order.xml' }]);
    const history = (done.history as { status: string }[]).map((h) => h.status);
    expect(history.filter((x) => x === 'received')).toHaveLength(1);
    await agent.waitLog((l) => l.msg === 'the agent folder has space again');
    expect(agent.child.exitCode).toBeNull();
  });
});
