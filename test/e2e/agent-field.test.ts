import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { BASE_ENV_KEYS } from '../../src/agent/handlers/exec.js';
import { safeName } from '../../src/agent/names.js';
import { cli, cliOk, recordingHandler, setup, spawnCli, tempDir, waitFor } from '../helpers/cli.js';

type Msg = { status: string; result?: Record<string, unknown> };

describe('print without a print system', () => {
  it('a print rule on a host without lp fails with DW_NO_PRINT_SYSTEM and says to install CUPS', async () => {
    const s = await setup({ rules: [{ match: '*.pdf', action: { type: 'print' } }] });
    const empty = tempDir(); // a PATH with no lp in it
    const agent = spawnCli(['agent', '--home', s.home], { env: { PATH: empty } });
    const r = await s.api.send(s.device, 'menu.pdf', '%PDF-1.4 menu');
    expect(r.status).toBe(202);
    const m = (await s.api.until(r.json.id as string, ['failed', 'handled'])) as unknown as Msg;
    expect(m.status).toBe('failed');
    expect(m.result).toMatchObject({ code: 'DW_NO_PRINT_SYSTEM', error: 'lp not found (install CUPS)' });
    await agent.kill();
  });

  it('`dropwire printers --home DIR` is accepted and says the same when lpstat is missing', async () => {
    const home = tempDir();
    const empty = tempDir();
    const r = await cli(['printers', '--home', home], { env: { PATH: empty } });
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toBe('dropwire: DW_NO_PRINT_SYSTEM: lpstat not found (install CUPS)');
    expect(fs.readdirSync(home)).toEqual([]);
  });
});

describe('errors that say what to do', () => {
  it('`rule add` with a bad glob names the rule by the number `rule list` would show', async () => {
    const s = await setup();
    const h = ['--home', s.home];
    // init's catch-all is rule 1; a new rule goes before it, so it would be rule 1 ...
    let r = await cli(['rule', 'add', '[a-', 'save', '--dir', s.dir, ...h]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toBe('dropwire: DW_BAD_CONFIG: rule 1, match: bad glob: "[" without a closing "]"');
    // ... and with --at 2 it would be rule 2; a bad --from glob is named the same way.
    r = await cli(['rule', 'add', '*.xml', 'save', '--dir', s.dir, '--at', '2', '--from', '{a,b', ...h]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toBe('dropwire: DW_BAD_CONFIG: rule 2, from: bad glob: "{" without a closing "}"');
    expect(r.stderr).not.toContain('rules[');
    expect(JSON.parse(await cli(['rule', 'list', '--json', ...h]).then((x) => x.stdout))).toHaveLength(1);
    // A config broken by hand: the rule commands name the rule by number, and the field in the file.
    const file = path.join(s.home, 'config.json');
    const cfg = JSON.parse(fs.readFileSync(file, 'utf8')) as { rules: unknown[] };
    cfg.rules.push({ match: '*.{a', action: { type: 'open' } });
    fs.writeFileSync(file, JSON.stringify(cfg));
    r = await cli(['rule', 'list', ...h]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toBe(`dropwire: DW_BAD_CONFIG: ${file}: rule 2, match: bad glob: "{" without a closing "}" (field rules[1].match); fix it there first`);
  });

  it('a device removed at the relay: logged once with what to do, dialed only every few minutes, shown by status', async () => {
    const s = await setup();
    const agent = spawnCli(['agent', '--home', s.home]);
    await agent.waitLog((l) => l.msg === 'session started');
    const removed = await cli(['relay', 'device', 'remove', s.device, '--data', s.data]);
    expect(removed.code).toBe(0);
    const line = await agent.waitLog((l) => l.code === 'DW_UNKNOWN_DEVICE');
    expect(line.level).toBe(50); // error
    expect(line.msg).toContain("'dropwire init TOKEN'");
    expect(line.msg).toContain('relay device add');
    // The next attempt is minutes away (5 min with up to half of it random), not the usual seconds.
    expect(line.retryInS).toBeGreaterThanOrEqual(150);
    expect(line.retryInS).toBeLessThanOrEqual(300);
    const st = await cli(['status', '--json', '--home', s.home]);
    expect(st.code).toBe(4); // running, not connected
    const view = JSON.parse(st.stdout) as { running: boolean; connected: boolean; lastError: string };
    expect(view).toMatchObject({ running: true, connected: false });
    expect(view.lastError).toMatch(/^DW_UNKNOWN_DEVICE: .*dropwire init TOKEN/);
    // No further attempts meanwhile: the relay refused the device once, and the agent said so once.
    await new Promise((r) => setTimeout(r, 3_000));
    expect(s.relay.proc.logs.filter((l) => String(l.msg).startsWith('handshake refused')).length).toBe(1);
    expect(agent.logs.filter((l) => l.code === 'DW_UNKNOWN_DEVICE').length).toBe(1);
    expect(agent.child.exitCode).toBeNull();
    await agent.kill();
  });
});

describe('rule changes and a running agent', () => {
  it('rule add, move and remove return once the running agent has the new rules: the very next file meets them', async () => {
    const dir = tempDir();
    const rec = recordingHandler(dir);
    const saved = path.join(dir, 'saved');
    const s = await setup({ rules: [] });
    const h = ['--home', s.home];
    const agent = spawnCli(['agent', ...h]);
    await agent.waitLog((l) => l.msg === 'session started');
    const deliver = async (name: string) => {
      const r = await s.api.send(s.device, name, `<${name}/>`);
      expect(r.status).toBe(202);
      return (await s.api.until(r.json.id as string, ['handled', 'failed', 'rejected'])) as unknown as Msg;
    };
    const { action } = rec.rule as { action: { command: string; args: string[] } };

    let out = await cliOk(['rule', 'add', '*.xml', 'exec', ...h, '--', action.command, ...action.args]);
    expect(out).toMatch(/^rule 1: \*\.xml -> exec/);
    expect(out).toMatch(/^the running agent applied the rules \(version [0-9a-f]{16}\)$/m);
    expect((await deliver('a.xml')).status).toBe('handled');
    expect(rec.runs().map((r) => r.name)).toEqual(['a.xml']);

    out = await cliOk(['rule', 'add', '*.xml', 'save', '--dir', saved, '--at', '1', ...h]);
    expect(out).toContain('the running agent applied the rules');
    let m = await deliver('b.xml');
    expect(m.result).toMatchObject({ savedAs: path.join(saved, 'b.xml') });

    out = await cliOk(['rule', 'move', '1', '2', ...h]);
    expect(out).toContain('the running agent applied the rules');
    expect((await deliver('c.xml')).status).toBe('handled');
    expect(rec.runs().map((r) => r.name)).toEqual(['a.xml', 'c.xml']);

    out = await cliOk(['rule', 'remove', '1', ...h]);
    expect(out).toContain('the running agent applied the rules');
    m = await deliver('d.xml');
    expect(m.result).toMatchObject({ savedAs: path.join(saved, 'd.xml') });
    expect(rec.runs()).toHaveLength(2);

    // Without a running agent the change is written and the command says when it takes effect.
    await agent.kill();
    const r = await cli(['rule', 'remove', '1', ...h]);
    expect(r.code).toBe(0);
    expect(r.stdout).not.toContain('applied');
    expect(r.stderr.trim()).toBe(`no agent is running with the folder ${s.home}: the rules take effect when it starts`);
    expect(JSON.parse(await cliOk(['rule', 'list', '--json', ...h]))).toEqual([]);
  });
});

describe('what an exec command gets', () => {
  it('{file} ends in the safe file name, so `cp "$1" orders/` keeps it; only the documented variables pass', async () => {
    const dir = tempDir();
    const orders = path.join(dir, 'orders');
    fs.mkdirSync(orders);
    const dump = path.join(dir, 'env.json');
    const s = await setup({
      rules: [
        { match: '*.xml', action: { type: 'exec', command: 'sh', args: ['-c', 'cp "$1" orders/', 'sh', '{file}'], cwd: dir } },
        {
          match: '*.env',
          action: {
            type: 'exec',
            command: process.execPath,
            args: ['-e', 'require("fs").writeFileSync(process.argv[1], JSON.stringify({ file: process.argv[2], env: process.env }))', dump, '{file}'],
          },
        },
      ],
    });
    const agentEnv = { LANG: 'C.UTF-8', TERM: 'xterm-256color', SHELL: '/bin/sh', LC_TIME: 'C', DW_TEST_SECRET: 'do-not-pass', HTTPS_PROXY: 'http://127.0.0.1:9', DROPWIRE_HOME: s.home };
    const agent = spawnCli(['agent', '--home', s.home], { env: agentEnv });

    let r = await s.api.send(s.device, 'order 7.xml', '<order n="7"/>');
    let m = (await s.api.until(r.json.id as string, ['handled', 'failed'])) as unknown as Msg;
    expect(m.status).toBe('handled');
    expect(fs.readdirSync(orders)).toEqual(['order 7.xml']);
    expect(fs.readFileSync(path.join(orders, 'order 7.xml'), 'utf8')).toBe('<order n="7"/>');

    const hostile = '../../etc/$(id) -x.env';
    r = await s.api.send(s.device, hostile, 'x');
    const id = r.json.id as string;
    m = (await s.api.until(id, ['handled', 'failed'])) as unknown as Msg;
    expect(m.status).toBe('handled');
    const got = JSON.parse(fs.readFileSync(dump, 'utf8')) as { file: string; env: Record<string, string> };
    expect(got.file).toBe(path.join(s.home, 'spool', id, safeName(hostile)));
    expect(path.basename(got.file)).toBe('etc_$(id) -x.env');
    const allowed = new Set([...BASE_ENV_KEYS, 'DROPWIRE_FILE', 'DROPWIRE_NAME', 'DROPWIRE_FROM', 'DROPWIRE_ID']);
    expect(Object.keys(got.env).filter((k) => !allowed.has(k) && !k.startsWith('LC_'))).toEqual([]);
    expect(got.env).toMatchObject({ PATH: process.env.PATH, LANG: 'C.UTF-8', TERM: 'xterm-256color', SHELL: '/bin/sh', LC_TIME: 'C', DROPWIRE_FILE: got.file, DROPWIRE_ID: id });
    if (process.env.HOME) expect(got.env.HOME).toBe(process.env.HOME);
    expect(got.env).not.toHaveProperty('DW_TEST_SECRET');
    expect(got.env).not.toHaveProperty('HTTPS_PROXY');
    expect(got.env).not.toHaveProperty('DROPWIRE_HOME');
    // Retention `remove` (the default): the message's spool folder goes with the file.
    await waitFor(() => (fs.readdirSync(path.join(s.home, 'spool')).length === 0 ? true : undefined), 10_000, 'spool emptied');
    await agent.kill();
  });
});
