import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { cli, cliOk, setup, spawnCli, startRelay, tempDir, waitFor } from '../helpers/cli.js';

const NOT_SYSTEMD = { JOURNAL_STREAM: '', INVOCATION_ID: '', DROPWIRE_LOG: '' };

describe('one relay per data folder (issue 11.4)', () => {
  it('a second `relay start --data D` exits DW_DATA_LOCKED naming the pid; the first keeps its relay.json', async () => {
    const dir = tempDir();
    const data = path.join(dir, 'relay');
    const first = await startRelay(data);
    const infoBefore = fs.readFileSync(path.join(data, 'relay.json'), 'utf8');

    const second = await cli(['relay', 'start', '--data', data, '--listen', '127.0.0.1:0', '--http', '127.0.0.1:0']);
    expect(second.code).toBe(1);
    expect(second.stderr).toContain('DW_DATA_LOCKED');
    expect(second.stderr).toContain(`pid ${first.proc.pid}`);
    expect(second.stderr).not.toMatch(/\n\s+at /); // no stack
    // The first relay's file is untouched and it still answers.
    expect(fs.readFileSync(path.join(data, 'relay.json'), 'utf8')).toBe(infoBefore);
    expect((await fetch(`http://${first.info.http}/healthz`)).status).toBe(200);
    await first.proc.kill();
  });

  it('the lock goes with the process: after SIGKILL a new relay starts on the same folder', async () => {
    const dir = tempDir();
    const data = path.join(dir, 'relay');
    const first = await startRelay(data);
    await first.proc.kill('SIGKILL');
    // relay.json of the killed relay is still there (a pid file would now be stale): no matter.
    expect(fs.existsSync(path.join(data, 'relay.json'))).toBe(true);
    const again = await startRelay(data);
    expect(again.info.pid).toBe(again.proc.pid);
    expect((await fetch(`http://${again.info.http}/healthz`)).status).toBe(200);
    await again.proc.kill();
    // An orderly stop removes relay.json and frees the folder for the next start.
    expect(fs.existsSync(path.join(data, 'relay.json'))).toBe(false);
    const third = await startRelay(data);
    await third.proc.kill();
  });

  it('a second agent on one home is still refused (DW_AGENT_RUNNING, with the pid); after SIGKILL one starts', async () => {
    const s = await setup();
    const agent = spawnCli(['agent', '--home', s.home], { env: NOT_SYSTEMD });
    await agent.waitLog((l) => l.msg === 'session started');
    const second = await cli(['agent', '--home', s.home], { env: NOT_SYSTEMD });
    expect(second.code).toBe(1);
    expect(second.stderr).toContain('DW_AGENT_RUNNING');
    expect(second.stderr).toContain(`pid ${agent.pid}`);
    await agent.kill('SIGKILL');
    const next = spawnCli(['agent', '--home', s.home], { env: NOT_SYSTEMD });
    await next.waitLog((l) => l.msg === 'session started');
    expect((await cli(['status', '--json', '--home', s.home])).code).toBe(0);
    await next.kill();
  });
});

describe('only `relay start` creates a data folder (issue 11.6)', () => {
  it('device, token and list commands outside the data folder refuse with DW_NO_RELAY_DATA and create nothing', async () => {
    const cwd = tempDir();
    const commands = [
      ['relay', 'token', 'add', 'web'],
      ['relay', 'token', 'list'],
      ['relay', 'token', 'remove', 'web'],
      ['relay', 'device', 'add', 'shop', '--public', '127.0.0.1:7390'],
      ['relay', 'device', 'list'],
      ['relay', 'device', 'remove', 'shop'],
    ];
    for (const args of commands) {
      const r = await cli(args, { cwd });
      expect(r.code, args.join(' ')).toBe(1);
      expect(r.stdout).toBe('');
      expect(r.stderr).toContain('DW_NO_RELAY_DATA');
      expect(r.stderr).toContain(path.join(fs.realpathSync(cwd), 'dropwire-relay')); // where it looked
      expect(r.stderr).toContain('--data');
    }
    expect(fs.readdirSync(cwd)).toEqual([]);
    // A folder that exists but holds no relay is refused too (and left as it is).
    const empty = path.join(cwd, 'somewhere');
    fs.mkdirSync(empty);
    const r = await cli(['relay', 'token', 'add', 'web', '--data', empty]);
    expect(r.stderr).toContain('DW_NO_RELAY_DATA');
    expect(fs.readdirSync(empty)).toEqual([]);
  });

  it('`relay start` creates it; then the same commands work on it, running or not', async () => {
    const dir = tempDir();
    const data = path.join(dir, 'new-relay');
    const relay = await startRelay(data);
    expect(fs.existsSync(path.join(data, 'relay.db'))).toBe(true);
    await relay.proc.kill();
    const token = await cliOk(['relay', 'token', 'add', 'web', '--data', data]);
    expect(token).toMatch(/^dwt_/);
    await waitFor(async () => ((await cli(['relay', 'token', 'list', '--json', '--data', data])).stdout.includes('"web"') ? true : undefined));
  });
});
