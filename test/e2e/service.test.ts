import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { cli, cliOk, ROOT, setup, spawnCli, tempDir, waitFor } from '../helpers/cli.js';
import { dryRunCommands, dryRunFiles, listTree } from '../helpers/service.js';

/** Agents in these tests are not under systemd, whatever runs the tests: logs go to the rotated file. */
const NOT_SYSTEMD = { INVOCATION_ID: '', JOURNAL_STREAM: '', DROPWIRE_LOG: '', DROPWIRE_LOG_FILE: '' };
const NODE = fs.realpathSync(process.execPath);
/**
 * The units name this checkout's dropwire.js, or, when the checkout itself is under a temporary folder (where
 * `service install` rightly refuses to point a unit: DW_TEMP_PATH), where a global install would put it.
 */
const CHECKOUT_IS_TEMPORARY = [os.tmpdir(), '/tmp', '/var/tmp'].some((d) => ROOT.startsWith(d + '/'));
const CLI = CHECKOUT_IS_TEMPORARY ? '/usr/lib/node_modules/dropwire/bin/dropwire.js' : path.join(ROOT, 'bin', 'dropwire.js');
const pin = ['--node', NODE, '--cli', CLI];

describe('dropwire service install --dry-run', () => {
  const uid = os.userInfo().uid;
  const cases: { args: string[]; files: string[]; commands: string[] }[] = [
    {
      args: ['--platform', 'linux'],
      files: ['/etc/sysusers.d/dropwire.conf', '/etc/systemd/system/dropwire-agent.service', '/etc/systemd/system/dropwire-agent.service.d/save-dirs.conf'],
      commands: ['systemd-sysusers /etc/sysusers.d/dropwire.conf', 'chown dropwire:dropwire /etc/dropwire', 'systemctl daemon-reload', 'systemctl enable dropwire-agent.service'],
    },
    {
      args: ['--platform', 'linux', '--user', '--home', '/home/op/.config/dropwire'],
      files: ['/home/op/.config/systemd/user/dropwire-agent.service'],
      commands: ['systemctl --user daemon-reload', 'systemctl --user enable dropwire-agent.service'],
    },
    {
      args: ['--platform', 'linux', '--relay', '--public', 'relay.example.net:7390'],
      files: ['/etc/sysusers.d/dropwire.conf', '/etc/systemd/system/dropwire-relay.service'],
      commands: ['systemd-sysusers /etc/sysusers.d/dropwire.conf', 'systemctl daemon-reload', 'systemctl enable dropwire-relay.service', 'systemctl restart dropwire-relay.service'],
    },
    {
      args: ['--platform', 'darwin'],
      files: ['/home/op/Library/LaunchAgents/com.dropwire.agent.plist'],
      commands: [`launchctl bootout gui/${uid}/com.dropwire.agent`],
    },
    {
      args: ['--platform', 'darwin', '--system'],
      files: ['/Library/LaunchDaemons/com.dropwire.agent.plist'],
      commands: [
        'dscl . -read /Users/_dropwire UniqueID',
        "chown -R _dropwire '/Library/Application Support/dropwire'",
        'chown root:wheel /Library/LaunchDaemons/com.dropwire.agent.plist',
        'launchctl bootout system/com.dropwire.agent',
      ],
    },
    {
      args: ['--platform', 'darwin', '--relay'],
      files: ['/Library/LaunchDaemons/com.dropwire.relay.plist'],
      commands: [
        'dscl . -read /Users/_dropwire UniqueID',
        "chown -R _dropwire '/Library/Application Support/dropwire-relay'",
        'chown root:wheel /Library/LaunchDaemons/com.dropwire.relay.plist',
        'launchctl bootout system/com.dropwire.relay',
        'launchctl bootstrap system /Library/LaunchDaemons/com.dropwire.relay.plist',
      ],
    },
    {
      args: ['--platform', 'win32', '--account', 'SHOP\\printing'],
      files: ['C:\\Program Files\\dropwire\\dropwire-agent.xml'],
      commands: [
        'icacls C:\\ProgramData\\dropwire /inheritance:r /grant:r "*S-1-5-18:(OI)(CI)F" "*S-1-5-32-544:(OI)(CI)F" "SHOP\\printing:(OI)(CI)M" /T',
        '"C:\\Program Files\\dropwire\\dropwire-agent.exe" uninstall',
        '"C:\\Program Files\\dropwire\\dropwire-agent.exe" install',
      ],
    },
    {
      args: ['--platform', 'win32', '--relay'],
      files: ['C:\\Program Files\\dropwire\\dropwire-relay.xml'],
      commands: [
        'icacls C:\\ProgramData\\dropwire-relay /inheritance:r /grant:r "*S-1-5-18:(OI)(CI)F" "*S-1-5-32-544:(OI)(CI)F" "*S-1-5-19:(OI)(CI)M" /T',
        '"C:\\Program Files\\dropwire\\dropwire-relay.exe" uninstall',
        '"C:\\Program Files\\dropwire\\dropwire-relay.exe" install',
        '"C:\\Program Files\\dropwire\\dropwire-relay.exe" start',
      ],
    },
  ];

  for (const c of cases) {
    it(`${c.args.join(' ')}: every file with its content and every command; nothing written`, async () => {
      const env = { HOME: '/home/op', ProgramData: '', ProgramFiles: '' };
      const out = await cliOk(['service', 'install', '--dry-run', ...c.args, ...pin], { env });
      expect(out).toMatch(/^# dropwire service install: /);
      expect(out).toContain('# dry run: nothing is written and nothing is run');
      const files = dryRunFiles(out);
      expect([...files.keys()]).toEqual(c.files);
      for (const [f, content] of files) {
        expect(content, f).not.toMatch(/\{\{[A-Z_]+\}\}/);
        expect(content.length, f).toBeGreaterThan(50);
      }
      expect(dryRunCommands(out)).toEqual(c.commands);
      for (const f of c.files) if (!f.startsWith('C:')) expect(fs.existsSync(f), f).toBe(false);
    });
  }

  it('--dry-run shows exactly what --root writes', async () => {
    const root = tempDir('dw-root-');
    const out = await cliOk(['service', 'install', '--dry-run', ...pin]);
    await cliOk(['service', 'install', '--root', root, ...pin]);
    for (const [f, content] of dryRunFiles(out)) expect(fs.readFileSync(path.join(root, f), 'utf8'), f).toBe(content);
  });

  it('refuses what cannot work', async () => {
    const other = await cli(['service', 'install', '--platform', 'win32']);
    expect(other.code).toBe(2);
    expect(other.stderr).toContain('DW_USAGE');
    const both = await cli(['service', 'install', '--user', '--system', '--dry-run']);
    expect(both.code).toBe(2);
    const relayUser = await cli(['service', 'install', '--relay', '--user', '--dry-run']);
    expect(relayUser.code).toBe(2);
    const badAccount = await cli(['service', 'install', '--dry-run', '--account', 'root;rm']);
    expect(badAccount.code).toBe(2);
  });
});

describe('dropwire service install/uninstall --root (Linux)', () => {
  it('system agent and relay: exactly the expected files in, exactly the data left after uninstall', async () => {
    const root = tempDir('dw-root-');
    // An enrolled agent whose rules save into /srv/orders (outside the home) and into its inbox (inside).
    fs.mkdirSync(path.join(root, 'etc/dropwire'), { recursive: true });
    const config = {
      name: 'shop',
      relay: '127.0.0.1:7390',
      relayKey: 'ab'.repeat(32),
      rules: [
        { match: '*.xml', action: { type: 'save', dir: '/srv/orders', ifExists: 'rename' } },
        { match: '*', action: { type: 'save', dir: '/etc/dropwire/inbox', ifExists: 'rename' } },
      ],
    };
    fs.writeFileSync(path.join(root, 'etc/dropwire/config.json'), JSON.stringify(config));
    const out = await cliOk(['service', 'install', '--root', root, ...pin]);
    expect(out).toContain('run: systemctl restart dropwire-agent.service'); // enrolled: started at once
    expect(listTree(root)).toEqual([
      'etc/',
      'etc/dropwire/',
      'etc/dropwire/config.json',
      'etc/systemd/',
      'etc/systemd/system/',
      'etc/systemd/system/dropwire-agent.service',
      'etc/systemd/system/dropwire-agent.service.d/',
      'etc/systemd/system/dropwire-agent.service.d/save-dirs.conf',
      'etc/sysusers.d/',
      'etc/sysusers.d/dropwire.conf',
    ]);
    const dropIn = fs.readFileSync(path.join(root, 'etc/systemd/system/dropwire-agent.service.d/save-dirs.conf'), 'utf8');
    expect(dropIn).toContain('\nReadWritePaths=-/srv/orders\n');
    expect(dropIn).not.toContain('inbox');
    expect(fs.statSync(path.join(root, 'etc/dropwire')).mode & 0o777).toBe(0o750);
    expect(fs.statSync(path.join(root, 'etc/systemd/system/dropwire-agent.service')).mode & 0o777).toBe(0o644);

    await cliOk(['service', 'install', '--relay', '--root', root, ...pin]);
    expect(listTree(root)).toContain('etc/systemd/system/dropwire-relay.service');

    // The agent goes; the account file stays while the relay still uses it.
    const un = await cliOk(['service', 'uninstall', '--root', root]);
    expect(un).toContain('run: systemctl disable --now dropwire-agent.service');
    expect(un).toContain('note: kept /etc/dropwire');
    expect(listTree(root)).toEqual([
      'etc/',
      'etc/dropwire/',
      'etc/dropwire/config.json',
      'etc/systemd/',
      'etc/systemd/system/',
      'etc/systemd/system/dropwire-relay.service',
      'etc/sysusers.d/',
      'etc/sysusers.d/dropwire.conf',
    ]);
    await cliOk(['service', 'uninstall', '--relay', '--root', root]);
    expect(listTree(root)).toEqual(['etc/', 'etc/dropwire/', 'etc/dropwire/config.json', 'etc/systemd/', 'etc/systemd/system/', 'etc/sysusers.d/']);
    expect(JSON.parse(fs.readFileSync(path.join(root, 'etc/dropwire/config.json'), 'utf8'))).toEqual(config);
  });

  it('user unit: one file in, nothing left; uninstall finds the installed scope without --user', async () => {
    const root = tempDir('dw-root-');
    const env = { HOME: '/home/op' };
    await cliOk(['service', 'install', '--user', '--home', '/home/op/.config/dropwire', '--root', root, ...pin], { env });
    expect(listTree(root)).toEqual([
      'home/',
      'home/op/',
      'home/op/.config/',
      'home/op/.config/systemd/',
      'home/op/.config/systemd/user/',
      'home/op/.config/systemd/user/dropwire-agent.service',
    ]);
    // Without --user, commands pick the scope that is installed.
    const start = await cliOk(['service', 'start', '--dry-run'], { env: { ...env } });
    expect(start).toContain('run: systemctl start dropwire-agent.service'); // the real / has no user unit for this HOME: the default scope
    await cliOk(['service', 'uninstall', '--root', root], { env });
    expect(listTree(root)).toEqual(['home/', 'home/op/', 'home/op/.config/', 'home/op/.config/systemd/', 'home/op/.config/systemd/user/']);
  });
});

describe('logs', () => {
  it('logs -f shows a handled message within a second; -n 20 --json prints JSON lines; --id follows one message', async () => {
    const s = await setup();
    const agent = spawnCli(['agent', '--home', s.home], { env: NOT_SYSTEMD });
    await agent.waitLog((l) => l.msg === 'session started');
    const follow = spawnCli(['logs', '-f', '--home', s.home], { env: NOT_SYSTEMD });
    // spawnCli keeps non-JSON lines as { msg: line }: readable lines here.
    await follow.waitLog((l) => / INFO  session started/.test(String(l.msg)));

    const sent = await s.api.send(s.device, 'order-1.xml', '<order n="1"/>');
    const id = sent.json.id as string;
    await agent.waitLog((l) => l.msg === 'message handled' && l.id === id);
    // The agent wrote the line to its log file before its stdout copy reached us: a second from here.
    const handled = await follow.waitLog((l) => String(l.msg).includes(' message handled  ') && String(l.msg).includes(`id=${id}`), 1000);
    expect(String(handled.msg)).toMatch(/^\d{4}-\d\d-\d\dT[\d:.]+Z INFO  message handled  id=\S+ status=handled/);
    const mine = follow.logs.map((l) => String(l.msg)).filter((l) => l.includes(`id=${id}`));
    expect(mine.map((l) => /Z INFO  ([a-z]+ [a-z]+)  /.exec(l)![1])).toEqual(['message received', 'handler started', 'message handled']);

    // Enough lines for -n 20 to cut.
    for (let i = 2; i <= 8; i++) {
      const r = await s.api.send(s.device, `order-${i}.xml`, `<order n="${i}"/>`);
      await s.api.until(r.json.id as string, ['handled']);
    }
    await agent.waitLog((l) => l.msg === 'message handled' && agent.logs.filter((x) => x.msg === 'message handled').length === 8);
    const last20 = (await cliOk(['logs', '-n', '20', '--json', '--home', s.home])).split('\n');
    expect(last20).toHaveLength(20);
    const parsed = last20.map((l) => JSON.parse(l) as { level: number; time: string; msg: string; pid: number });
    for (const l of parsed) expect(l).toMatchObject({ level: expect.any(Number), time: expect.any(String), msg: expect.any(String), pid: agent.pid });
    const fileLines = fs.readFileSync(path.join(s.home, 'agent.log'), 'utf8').trim().split('\n');
    expect(last20).toEqual(fileLines.slice(-20));

    const one = (await cliOk(['logs', '--id', id, '--json', '-n', '100', '--home', s.home])).split('\n').map((l) => JSON.parse(l) as { id: string; msg: string });
    expect(one.map((l) => l.msg)).toEqual(['message received', 'handler started', 'message handled']);
    expect(one.every((l) => l.id === id)).toBe(true);
    expect(await cliOk(['logs', '--level', 'error', '--home', s.home])).toBe('');

    await follow.kill();
    expect(follow.child.exitCode === 0 || follow.child.signalCode === 'SIGTERM').toBe(true);
    await agent.kill();
  });

  it('no log yet: a clear error', async () => {
    const r = await cli(['logs', '--home', tempDir()]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('DW_NO_LOG');
  });
});

describe('status', () => {
  it('connected (exit 0), then not connected after the relay stops (exit 4), then not running (exit 3)', async () => {
    const s = await setup();
    const agent = spawnCli(['agent', '--home', s.home], { env: NOT_SYSTEMD });
    await agent.waitLog((l) => l.msg === 'session started');
    const sent = await s.api.send(s.device, 'invoice.pdf', '%PDF-1.4');
    const id = sent.json.id as string;
    await s.api.until(id, ['handled']);
    await agent.waitLog((l) => l.msg === 'message handled' && l.id === id);

    const ok = await cli(['status', '--json', '--home', s.home]);
    expect(ok.code).toBe(0);
    const st = JSON.parse(ok.stdout) as Record<string, unknown>;
    expect(st).toMatchObject({
      running: true,
      connected: true,
      device: s.device,
      relay: s.relay.info.agents,
      sessions: 1,
      resumes: 0,
      queue: 0,
      lastError: null,
      pid: agent.pid,
      home: s.home,
      lastMessage: { id, filename: 'invoice.pdf', status: 'handled' },
      log: { to: 'file', file: path.join(s.home, 'agent.log') },
    });
    expect(Date.parse(st.since as string)).toBeGreaterThan(0);
    const human = await cli(['status', '--home', s.home]);
    expect(human.code).toBe(0);
    expect(human.stdout).toContain(`relay       ${s.relay.info.agents}: connected since `);
    expect(human.stdout).toContain(`invoice.pdf (${id}): handled`);

    await s.relay.proc.kill();
    const down = await waitFor(async () => {
      const r = await cli(['status', '--json', '--home', s.home]);
      return r.code === 4 ? r : undefined;
    }, 30_000, 'status exit 4');
    expect(JSON.parse(down.stdout)).toMatchObject({ running: true, connected: false, relay: s.relay.info.agents, lastError: expect.stringMatching(/^DW_/) });
    expect(down.stderr).toContain('DW_NOT_CONNECTED');

    await agent.kill();
    const gone = await cli(['status', '--json', '--home', s.home]);
    expect(gone.code).toBe(3);
    expect(JSON.parse(gone.stdout)).toEqual({ running: false, connected: false, home: s.home });
    expect(gone.stderr).toContain('DW_AGENT_NOT_RUNNING');
  });

  it('a second agent on the same folder is refused; the first keeps answering', async () => {
    const s = await setup();
    const agent = spawnCli(['agent', '--home', s.home], { env: NOT_SYSTEMD });
    await agent.waitLog((l) => l.msg === 'session started');
    const second = await cli(['agent', '--home', s.home], { env: NOT_SYSTEMD });
    expect(second.code).toBe(1);
    expect(second.stderr).toContain('DW_AGENT_RUNNING');
    expect((await cli(['status', '--json', '--home', s.home])).code).toBe(0);
    await agent.kill();
  });
});

describe('a broken config edit', () => {
  it('the agent refuses to start, names the field, keeps the file, and says so in its log', async () => {
    const s = await setup();
    const file = path.join(s.home, 'config.json');
    const good = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;

    // `init` writes the address list as `relays`; a bad address there is named.
    expect(good.relays).toBeDefined();
    fs.writeFileSync(file, JSON.stringify({ ...good, relays: ['relay.example.net'] }, null, 2));
    const before = fs.readFileSync(file);
    const r = await cli(['agent', '--home', s.home], { env: NOT_SYSTEMD });
    expect(r.code).toBe(78);
    expect(r.stderr).toContain('DW_BAD_CONFIG');
    expect(r.stderr).toContain("field 'relays'");
    expect(fs.readFileSync(file)).toEqual(before);
    const last = JSON.parse(await cliOk(['logs', '-n', '1', '--json', '--home', s.home])) as { level: number; msg: string; code: string };
    expect(last).toMatchObject({ level: 60, code: 'DW_BAD_CONFIG' });
    expect(last.msg).toContain("field 'relays'");

    fs.writeFileSync(file, JSON.stringify({ ...good, rules: [{ match: '*', action: { type: 'teleport' } }] }, null, 2));
    const rule = await cli(['agent', '--home', s.home], { env: NOT_SYSTEMD });
    expect(rule.code).toBe(78);
    expect(rule.stderr).toContain('rules[0].action.type');

    const broken = JSON.stringify(good).slice(0, -5);
    fs.writeFileSync(file, broken);
    const bad = await cli(['agent', '--home', s.home], { env: NOT_SYSTEMD });
    expect(bad.code).toBe(78);
    expect(bad.stderr).toContain('DW_BAD_CONFIG');
    expect(fs.readFileSync(file, 'utf8')).toBe(broken);
    expect(fs.existsSync(path.join(s.home, 'agent.sock'))).toBe(false);
    expect((await cli(['status', '--home', s.home])).code).toBe(3);
  });
});
