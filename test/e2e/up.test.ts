import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { cli, spawnCli, tempDir, waitFor } from '../helpers/cli.js';

const NOT_SYSTEMD = { JOURNAL_STREAM: '', INVOCATION_ID: '', DROPWIRE_LOG: '' };

/** `dropwire up` in `dir`, resolved once it printed its banner. */
async function up(dir: string) {
  const proc = spawnCli(['up', '--dir', path.join(dir, '.dropwire'), '--http', '127.0.0.1:0'], { cwd: dir, env: NOT_SYSTEMD });
  let out = '';
  proc.child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  await waitFor(() => (out.includes('dropwire is up.') ? true : undefined), 30_000, 'dropwire up');
  return { proc, out: () => out };
}

describe('the agent of `npm start` / `dropwire up` can be inspected (issue 11.13)', () => {
  it('status, logs, online and rule with --home .dropwire/agent see the running agent; `dropwire agent` there is refused', async () => {
    const dir = tempDir();
    const u = await up(dir);
    const home = path.join(dir, '.dropwire', 'agent');
    expect(u.out()).toContain(`dropwire status --home ${home}`);

    const status = await waitFor(async () => {
      const r = await cli(['status', '--json', '--home', home]);
      return r.code === 0 ? (JSON.parse(r.stdout) as Record<string, unknown>) : undefined;
    }, 30_000, 'status connected');
    expect(status).toMatchObject({ running: true, connected: true, device: 'local', pid: u.proc.pid, home });
    expect(status.log).toMatchObject({ to: 'file', file: path.join(home, 'agent.log') });

    const logs = await cli(['logs', '-n', '50', '--json', '--home', home]);
    expect(logs.code).toBe(0);
    const lines = logs.stdout.trim().split('\n').map((l) => JSON.parse(l) as { msg: string });
    expect(lines.map((l) => l.msg)).toContain('agent started');

    const online = await cli(['online', 'local', '--home', home], { env: { DROPWIRE_API: '', DROPWIRE_TOKEN: '' } });
    expect(online.code).toBe(0);
    expect(online.stdout).toContain('local is online');

    // The rule commands wait for this agent too (they ask it to reload over the same socket).
    const rule = await cli(['rule', 'add', '*.csv', 'save', '--dir', path.join(dir, 'csv'), '--at', '1', '--home', home]);
    expect(rule.code, rule.stderr).toBe(0);
    expect(rule.stdout + rule.stderr).toContain('the running agent applied the rules');

    const second = await cli(['agent', '--home', home], { env: NOT_SYSTEMD });
    expect(second.code).toBe(1);
    expect(second.stderr).toContain('DW_AGENT_RUNNING');
    expect(second.stderr).toContain(`pid ${u.proc.pid}`);

    u.proc.child.kill('SIGINT');
    await waitFor(() => (u.proc.child.exitCode !== null ? true : undefined), 20_000, 'up to stop');
    expect(u.proc.child.exitCode).toBe(0);
    // Stopped: status says so (3), the log stays readable.
    expect((await cli(['status', '--home', home])).code).toBe(3);
    expect((await cli(['logs', '--home', home])).stdout).toContain('agent stopped');
  });

  it('a second `dropwire up` in one folder exits DW_DATA_LOCKED naming the pid; after SIGKILL the next one starts', async () => {
    const dir = tempDir();
    const first = await up(dir);
    const second = await cli(['up', '--dir', path.join(dir, '.dropwire'), '--http', '127.0.0.1:0'], { cwd: dir });
    expect(second.code).toBe(1);
    expect(second.stderr).toContain('DW_DATA_LOCKED');
    expect(second.stderr).toContain(`pid ${first.proc.pid}`);
    // The first still runs and still has its relay.json.
    const status = await cli(['status', '--json', '--home', path.join(dir, '.dropwire', 'agent')]);
    expect(JSON.parse(status.stdout)).toMatchObject({ running: true, pid: first.proc.pid });
    await first.proc.kill('SIGKILL');
    const next = await up(dir);
    expect(next.out()).toContain('curl');
    await next.proc.kill();
  });
});
