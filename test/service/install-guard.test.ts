import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { cli, ROOT, tempDir } from '../helpers/cli.js';

/** Real paths of this machine, outside any temporary folder. */
const NODE = fs.realpathSync(process.execPath);
const CLI = path.join(ROOT, 'bin', 'dropwire.js');
const rootIsTemporary = [os.tmpdir(), '/tmp', '/var/tmp'].some((d) => ROOT.startsWith(d + '/'));
if (rootIsTemporary) console.log(`note: the checkout itself is under a temporary folder (${ROOT}); the accepted-path cases pass --cli explicitly`);

describe('service install never points a unit into a temporary folder (issue 11.12)', () => {
  for (const role of [[], ['--relay']]) {
    it(`refuses dropwire.js under /tmp for the system unit${role.length ? ' of the relay' : ''} (PrivateTmp=yes), writing nothing`, async () => {
      const root = tempDir('dw-guard-');
      const r = await cli(['service', 'install', '--platform', 'linux', '--system', ...role, '--root', root, '--node', NODE, '--cli', '/tmp/dropwire-x/bin/dropwire.js']);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain('DW_TEMP_PATH');
      expect(r.stderr).toContain('PrivateTmp=yes');
      expect(r.stderr).toContain('/tmp/dropwire-x/bin/dropwire.js');
      expect(r.stderr).toContain('npm install -g');
      expect(r.stderr).toContain('--cli PATH');
      expect(fs.readdirSync(root)).toEqual([]);
    });
  }

  it('refuses a node under os.tmpdir() and one under /var/tmp, also in --dry-run', async () => {
    const tmpNode = path.join(os.tmpdir(), 'nvm', 'bin', 'node');
    let r = await cli(['service', 'install', '--platform', 'linux', '--dry-run', '--node', tmpNode, '--cli', '/usr/lib/node_modules/dropwire/bin/dropwire.js']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('DW_TEMP_PATH');
    expect(r.stderr).toContain('--node PATH');
    expect(r.stdout).toBe('');
    r = await cli(['service', 'install', '--platform', 'linux', '--dry-run', '--node', '/var/tmp/node/bin/node', '--cli', CLI]);
    expect(r.stderr).toContain('DW_TEMP_PATH');
  });

  it('accepts paths outside temporary folders', async () => {
    const root = tempDir('dw-guard-');
    const r = await cli(['service', 'install', '--platform', 'linux', '--system', '--root', root, '--node', NODE, '--cli', rootIsTemporary ? '/usr/lib/node_modules/dropwire/bin/dropwire.js' : CLI]);
    expect(r.code, r.stderr).toBe(0);
    expect(fs.readFileSync(path.join(root, 'etc/systemd/system/dropwire-agent.service'), 'utf8')).toContain('PrivateTmp=yes');
  });
});

describe('the --user unit (issue 11.12)', () => {
  it('is WantedBy=default.target, and install --user says how to enable lingering', async () => {
    const root = tempDir('dw-user-');
    const home = path.join(root, 'agent-home');
    const r = await cli(['service', 'install', '--platform', 'linux', '--user', '--root', root, '--home', home, '--node', NODE, '--cli', rootIsTemporary ? '/opt/dropwire/bin/dropwire.js' : CLI]);
    expect(r.code, r.stderr).toBe(0);
    const unit = fs.readFileSync(path.join(root, os.homedir(), '.config/systemd/user/dropwire-agent.service'), 'utf8');
    expect(unit).toContain('\nWantedBy=default.target\n');
    expect(unit).not.toContain('WantedBy=graphical-session.target');
    expect(unit).not.toContain('PartOf=graphical-session.target');
    expect(r.stdout).toContain(`loginctl enable-linger ${os.userInfo().username}`);
  });
});
