import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { installPlan, renderPlist, renderSaveDirsDropIn, renderSystemdUnit, renderWinsw, resolveTarget, type ServiceOptions } from '../../src/service/plan.js';
import { render, showCommand, systemdValue, xmlText } from '../../src/service/render.js';
import { updateSaveDirsDropIn, unitHome } from '../../src/service/dropin.js';
import { applyPlan } from '../../src/service/apply.js';
import { tempDir } from '../helpers/cli.js';
import { child, parsePlist, parseXml, type PlistValue, type XmlElement } from '../helpers/service.js';

const mac = (o: ServiceOptions = {}) => resolveTarget({ platform: 'darwin', node: '/opt/node/bin/node', cli: '/opt/dropwire/bin/dropwire.js', ...o });
const win = (o: ServiceOptions = {}) =>
  resolveTarget({ platform: 'win32', node: 'C:\\Program Files\\nodejs\\node.exe', cli: 'C:\\dw\\bin\\dropwire.js', env: { ProgramData: 'C:\\ProgramData', ProgramFiles: 'C:\\Program Files' }, ...o });

describe('placeholders', () => {
  it('fills every placeholder and refuses missing or unused values', () => {
    expect(render('a={{A}} b={{B}}', { A: '1', B: '2' })).toBe('a=1 b=2');
    expect(() => render('a={{A}} b={{B}}', { A: '1' })).toThrow(expect.objectContaining({ code: 'DW_TEMPLATE' }));
    expect(() => render('a={{A}}', { A: '1', C: '3' })).toThrow(expect.objectContaining({ code: 'DW_TEMPLATE' }));
  });

  it('escapes for systemd, XML and the shown command line', () => {
    expect(systemdValue('/usr/bin/node')).toBe('/usr/bin/node');
    expect(systemdValue('/srv/my dir')).toBe('"/srv/my dir"');
    expect(systemdValue('/srv/100%')).toBe('/srv/100%%');
    expect(systemdValue('/srv/a"b\\c')).toBe('"/srv/a\\"b\\\\c"');
    expect(() => systemdValue('/srv/$HOME')).toThrow(expect.objectContaining({ code: 'DW_BAD_PATH' }));
    expect(() => systemdValue('/srv/a\nExecStartPre=/bin/evil')).toThrow(expect.objectContaining({ code: 'DW_BAD_PATH' }));
    expect(xmlText(`a&b<c>"d'`)).toBe('a&amp;b&lt;c&gt;&quot;d&apos;');
    expect(showCommand(['chown', '-R', 'x', '/Library/Application Support/dropwire'], 'posix')).toBe("chown -R x '/Library/Application Support/dropwire'");
    expect(showCommand(['C:\\Program Files\\x.exe', 'install'], 'win32')).toBe('"C:\\Program Files\\x.exe" install');
  });

  it('every template in service-templates/ is used by a renderer', () => {
    const dir = path.resolve(import.meta.dirname, '../../service-templates');
    const all = fs.readdirSync(dir, { recursive: true, encoding: 'utf8' }).filter((f) => fs.statSync(path.join(dir, f)).isFile() && !f.endsWith('.md'));
    const src = ['plan.ts'].map((f) => fs.readFileSync(path.resolve(import.meta.dirname, '../../src/service', f), 'utf8')).join('\n');
    for (const f of all) expect(src, f).toContain(`'${f.split(path.sep).join('/')}'`);
  });
});

describe('launchd plist, field by field', () => {
  const dict = (v: PlistValue) => v as Record<string, PlistValue>;

  it('LaunchAgent (default on macOS): in the GUI session, restarted on failure, home in the environment', () => {
    const t = mac({ home: '/Users/op/A & B <dropwire>' });
    expect(t.scope).toBe('user');
    const p = dict(parsePlist(renderPlist(t)));
    expect(Object.keys(p).sort()).toEqual(
      ['Label', 'ProgramArguments', 'EnvironmentVariables', 'WorkingDirectory', 'LimitLoadToSessionType', 'RunAtLoad', 'KeepAlive', 'ThrottleInterval', 'ExitTimeOut', 'ProcessType', 'StandardErrorPath'].sort(),
    );
    expect(p.Label).toBe('com.dropwire.agent');
    expect(p.ProgramArguments).toEqual(['/opt/node/bin/node', '/opt/dropwire/bin/dropwire.js', 'agent']);
    expect(p.EnvironmentVariables).toEqual({ DROPWIRE_HOME: '/Users/op/A & B <dropwire>', DROPWIRE_LOG: 'file' });
    expect(p.WorkingDirectory).toBe('/Users/op/A & B <dropwire>');
    expect(p.LimitLoadToSessionType).toBe('Aqua');
    expect(p.RunAtLoad).toBe(true);
    expect(p.KeepAlive).toEqual({ SuccessfulExit: false });
    expect(p.ThrottleInterval).toBe(10);
    expect(p.ExitTimeOut).toBe(30);
    expect(p.ProcessType).toBe('Standard');
    expect(p.StandardErrorPath).toBe('/Users/op/A & B <dropwire>/agent.stderr.log');
    expect(p.UserName).toBeUndefined();
  });

  it('LaunchDaemon (--system): a dedicated account, the system config folder, no GUI session', () => {
    const t = mac({ scope: 'system' });
    const p = dict(parsePlist(renderPlist(t)));
    expect(p.Label).toBe('com.dropwire.agent');
    expect(p.UserName).toBe('_dropwire');
    expect(p.ProgramArguments).toEqual(['/opt/node/bin/node', '/opt/dropwire/bin/dropwire.js', 'agent']);
    expect(p.EnvironmentVariables).toEqual({ DROPWIRE_HOME: '/Library/Application Support/dropwire', DROPWIRE_LOG: 'file' });
    expect(p.Umask).toBe(0o77);
    expect(p.KeepAlive).toEqual({ SuccessfulExit: false, NetworkState: true });
    expect(p.LimitLoadToSessionType).toBeUndefined();
    expect(p.RunAtLoad).toBe(true);
  });

  it('the relay as a LaunchDaemon, with a rotated log file', () => {
    const t = mac({ role: 'relay', public: 'relay.example.net:7390' });
    const p = dict(parsePlist(renderPlist(t)));
    expect(p.Label).toBe('com.dropwire.relay');
    expect(p.ProgramArguments).toEqual([
      '/opt/node/bin/node', '/opt/dropwire/bin/dropwire.js', 'relay', 'start',
      '--data', '/Library/Application Support/dropwire-relay', '--listen', '0.0.0.0:7390', '--http', '127.0.0.1:7391', '--public', 'relay.example.net:7390',
    ]);
    expect(p.EnvironmentVariables).toEqual({ DROPWIRE_LOG: 'file', DROPWIRE_LOG_FILE: '/Library/Application Support/dropwire-relay/relay.log' });
    expect(p.UserName).toBe('_dropwire');
  });
});

describe('WinSW XML, field by field', () => {
  const texts = (e: XmlElement, name: string) => e.children.filter((c) => c.name === name).map((c) => c.text);

  it('agent: node.exe wrapped, a named account whose password is prompted for, restart on failure, log rolling', () => {
    const t = win({ account: 'SHOP\\printing' });
    const x = parseXml(renderWinsw(t));
    expect(x.name).toBe('service');
    expect(x.children.map((c) => c.name)).toEqual([
      'id', 'name', 'description', 'executable', 'argument', 'argument', 'workingdirectory', 'env', 'env', 'startmode', 'delayedAutoStart',
      'serviceaccount', 'onfailure', 'onfailure', 'onfailure', 'resetfailure', 'stoptimeout', 'logpath', 'log',
    ]);
    expect(child(x, 'id').text).toBe('dropwire-agent');
    expect(child(x, 'executable').text).toBe('C:\\Program Files\\nodejs\\node.exe');
    expect(texts(x, 'argument')).toEqual(['C:\\dw\\bin\\dropwire.js', 'agent']);
    expect(child(x, 'workingdirectory').text).toBe('C:\\ProgramData\\dropwire');
    expect(x.children.filter((c) => c.name === 'env').map((c) => c.attrs)).toEqual([
      { name: 'DROPWIRE_HOME', value: 'C:\\ProgramData\\dropwire' },
      { name: 'DROPWIRE_LOG', value: 'file' },
    ]);
    expect(child(x, 'startmode').text).toBe('Automatic');
    expect(child(x, 'delayedAutoStart').text).toBe('true');
    const acct = child(x, 'serviceaccount');
    expect(child(acct, 'username').text).toBe('SHOP\\printing');
    expect(child(acct, 'prompt').text).toBe('console');
    expect(child(acct, 'allowservicelogon').text).toBe('true');
    expect(acct.children.some((c) => c.name === 'password')).toBe(false);
    expect(x.children.filter((c) => c.name === 'onfailure').map((c) => c.attrs)).toEqual([
      { action: 'restart', delay: '5 sec' },
      { action: 'restart', delay: '30 sec' },
      { action: 'restart', delay: '2 min' },
    ]);
    expect(child(x, 'resetfailure').text).toBe('1 hour');
    expect(child(x, 'stoptimeout').text).toBe('30 sec');
    expect(child(x, 'logpath').text).toBe('C:\\ProgramData\\dropwire\\logs');
    const log = child(x, 'log');
    expect(log.attrs).toEqual({ mode: 'roll-by-size' });
    expect(child(log, 'sizeThreshold').text).toBe('10240');
    expect(child(log, 'keepFiles').text).toBe('5');
  });

  it('relay: LocalService, its own data folder, the relay arguments', () => {
    const x = parseXml(renderWinsw(win({ role: 'relay', listen: '0.0.0.0:7390', http: '127.0.0.1:8080' })));
    expect(child(x, 'id').text).toBe('dropwire-relay');
    expect(texts(x, 'argument')).toEqual(['C:\\dw\\bin\\dropwire.js', 'relay', 'start', '--data', 'C:\\ProgramData\\dropwire-relay', '--listen', '0.0.0.0:7390', '--http', '127.0.0.1:8080']);
    expect(child(child(x, 'serviceaccount'), 'username').text).toBe('NT AUTHORITY\\LocalService');
    expect(child(x, 'workingdirectory').text).toBe('C:\\ProgramData\\dropwire-relay');
    expect(child(child(x, 'log'), 'keepFiles').text).toBe('5');
  });

  it('names with XML characters survive the round trip', () => {
    const x = parseXml(renderWinsw(win({ account: 'R&D\\o&p', cli: 'C:\\a & b\\dropwire.js' })));
    expect(child(child(x, 'serviceaccount'), 'username').text).toBe('R&D\\o&p');
    expect(texts(x, 'argument')[0]).toBe('C:\\a & b\\dropwire.js');
  });
});

describe('systemd units', () => {
  const linux = (o: ServiceOptions = {}) => resolveTarget({ platform: 'linux', node: '/usr/bin/node', cli: '/usr/lib/node_modules/dropwire/bin/dropwire.js', ...o });
  const settings = (unit: string) =>
    unit
      .split('\n')
      .filter((l) => /^[A-Z]\w*=/.test(l))
      .map((l) => l);

  it('system unit: Type=exec, restart on failure, a dedicated user, the three directories, hardening, one home', () => {
    const u = settings(renderSystemdUnit(linux()));
    for (const s of [
      'Type=exec', 'Restart=on-failure', 'User=dropwire', 'Group=dropwire', 'Environment=DROPWIRE_HOME=/etc/dropwire',
      'StateDirectory=dropwire', 'LogsDirectory=dropwire', 'ConfigurationDirectory=dropwire', 'NoNewPrivileges=yes', 'ProtectSystem=strict',
      'ProtectHome=yes', 'PrivateTmp=yes', 'ExecStart=/usr/bin/node /usr/lib/node_modules/dropwire/bin/dropwire.js agent', 'RestartPreventExitStatus=78',
    ]) expect(u).toContain(s);
    expect(unitHome(renderSystemdUnit(linux()))).toBe('/etc/dropwire');
  });

  it('node under /root or /home: ProtectHome=tmpfs with only that folder bound back read-only', () => {
    const u = settings(renderSystemdUnit(linux({ node: '/root/.nvm/versions/node/v24/bin/node', cli: '/home/op/dw/bin/dropwire.js' })));
    expect(u).toContain('ProtectHome=tmpfs');
    expect(u).toContain('BindReadOnlyPaths=/root/.nvm/versions/node/v24/bin /home/op/dw');
  });

  it('user unit: wanted by default.target (a headless host has no graphical session), the per-user home', () => {
    const u = settings(renderSystemdUnit(linux({ scope: 'user', home: '/home/op/my 100% home' })));
    expect(u).not.toContain('PartOf=graphical-session.target');
    expect(u).toContain('After=graphical-session.target');
    expect(u).toContain('WantedBy=default.target');
    expect(u.filter((l) => l.startsWith('WantedBy='))).toEqual(['WantedBy=default.target']);
    expect(u).toContain('Environment="DROPWIRE_HOME=/home/op/my 100%% home"');
    expect(u).not.toContain('User=dropwire');
    expect(unitHome(renderSystemdUnit(linux({ scope: 'user', home: '/home/op/my 100% home' })))).toBe('/home/op/my 100% home');
  });

  it('save-dirs drop-in: one ReadWritePaths=-DIR per folder outside the home, deduplicated', () => {
    const d = renderSaveDirsDropIn('/etc/dropwire', ['/srv/incoming', '/etc/dropwire/inbox', '/srv/incoming', '/srv/with space']);
    expect(settings(d)).toEqual(['ReadWritePaths=-/srv/incoming', 'ReadWritePaths="-/srv/with space"']);
    expect(d).toContain('[Service]');
  });

  it('install plan: no unit start before enrollment; restart once enrolled', () => {
    const t = linux();
    const runs = (enrolled: boolean) => installPlan(t, { enrolled, saveDirs: [], otherInstalled: false }).steps.flatMap((s) => (s.kind === 'run' ? [s.argv.join(' ')] : []));
    expect(runs(false)).toEqual(['systemd-sysusers /etc/sysusers.d/dropwire.conf', 'chown dropwire:dropwire /etc/dropwire', 'systemctl daemon-reload', 'systemctl enable dropwire-agent.service']);
    expect(runs(true).at(-1)).toBe('systemctl restart dropwire-agent.service');
  });
});

describe('updateSaveDirsDropIn', () => {
  it('rewrites the drop-in of the unit serving this home, only when the folders change', async () => {
    const root = tempDir('dw-root-');
    const none = await updateSaveDirsDropIn('/etc/dropwire', ['/srv/a'], { root, platform: 'linux' });
    expect(none).toMatchObject({ changed: false, skipped: expect.stringContaining('no system unit') });
    const t = resolveTarget({ platform: 'linux', node: '/usr/bin/node', cli: '/usr/lib/node_modules/dropwire/bin/dropwire.js' });
    applyPlan(installPlan(t, { enrolled: false, saveDirs: [], otherInstalled: false }), { root, out: () => {} });
    const file = path.join(root, 'etc/systemd/system/dropwire-agent.service.d/save-dirs.conf');
    expect(fs.readFileSync(file, 'utf8')).not.toContain('ReadWritePaths');

    const r = await updateSaveDirsDropIn('/etc/dropwire', ['/srv/a', '/srv/b c'], { root, platform: 'linux' });
    expect(r).toEqual({ changed: true, reloaded: false, file: '/etc/systemd/system/dropwire-agent.service.d/save-dirs.conf' });
    expect(fs.readFileSync(file, 'utf8')).toContain('ReadWritePaths=-/srv/a\nReadWritePaths="-/srv/b c"\n');
    expect(await updateSaveDirsDropIn('/etc/dropwire', ['/srv/a', '/srv/b c'], { root, platform: 'linux' })).toMatchObject({ changed: false });
    expect(await updateSaveDirsDropIn('/home/op/.config/dropwire', ['/srv/x'], { root, platform: 'linux' })).toMatchObject({ changed: false, skipped: expect.stringContaining('serves /etc/dropwire') });
    expect(await updateSaveDirsDropIn('/etc/dropwire', [], { root, platform: 'darwin' })).toMatchObject({ changed: false, skipped: expect.any(String) });
    expect(fs.readFileSync(file, 'utf8')).toContain('/srv/b c');
  });
});
