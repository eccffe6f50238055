import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { applyPlan } from '../../src/service/apply.js';
import { updateSaveDirsDropIn } from '../../src/service/dropin.js';
import { installPlan, resolveTarget, type ServiceOptions } from '../../src/service/plan.js';
import { ROOT, tempDir } from '../helpers/cli.js';
import { systemdAnalyzeUnavailable, systemdExposure, systemdVerify } from '../helpers/service.js';

const unavailable = systemdAnalyzeUnavailable();
if (unavailable) console.log(`skipping systemd-analyze tests: ${unavailable}`);

/** Installs into a fresh root with this machine's node and dropwire (verify checks ExecStart exists). */
function install(o: ServiceOptions, saveDirs: string[] = []): string {
  const root = tempDir('dw-sd-');
  const t = resolveTarget({ platform: 'linux', node: fs.realpathSync(process.execPath), cli: path.join(ROOT, 'bin', 'dropwire.js'), ...o });
  applyPlan(installPlan(t, { enrolled: true, saveDirs, otherInstalled: false }), { root, out: () => {} });
  return root;
}

describe.skipIf(unavailable)('rendered systemd units pass systemd-analyze verify', () => {
  it('system agent unit with its save-folder drop-in (folders with blanks and %)', async () => {
    const root = install({}, ['/srv/incoming', '/srv/with space', '/srv/100%', '/etc/dropwire/inbox']);
    const unit = path.join(root, 'etc/systemd/system/dropwire-agent.service');
    // The drop-in next to the unit is read by verify too; update it the way `rule add` does.
    await updateSaveDirsDropIn('/etc/dropwire', ['/srv/incoming', '/srv/with space', '/srv/100%', '/srv/new'], { root, platform: 'linux' });
    expect(fs.readFileSync(`${unit}.d/save-dirs.conf`, 'utf8')).toContain('ReadWritePaths=-/srv/new');
    expect(systemdVerify(unit)).toEqual({ code: 0, output: '' });
    const s = systemdExposure(unit);
    console.log(`systemd-analyze security --offline=yes dropwire-agent.service (system): ${s.score} ${s.verdict}`);
    expect(s.score).toBeLessThanOrEqual(2.5);
  });

  it('system agent unit with node outside home folders (ProtectHome=yes)', () => {
    // /usr/bin/env stands in for a node in /usr/bin: verify checks only that ExecStart's program exists.
    const root = install({ node: '/usr/bin/env', cli: '/usr/lib/node_modules/dropwire/bin/dropwire.js' });
    const unit = path.join(root, 'etc/systemd/system/dropwire-agent.service');
    expect(fs.readFileSync(unit, 'utf8')).toContain('\nProtectHome=yes\n');
    expect(systemdVerify(unit)).toEqual({ code: 0, output: '' });
    const s = systemdExposure(unit);
    console.log(`systemd-analyze security --offline=yes dropwire-agent.service (system, ProtectHome=yes): ${s.score} ${s.verdict}`);
  });

  it('relay unit', () => {
    const root = install({ role: 'relay', public: 'relay.example.net:7390' });
    const unit = path.join(root, 'etc/systemd/system/dropwire-relay.service');
    expect(systemdVerify(unit)).toEqual({ code: 0, output: '' });
    const s = systemdExposure(unit);
    console.log(`systemd-analyze security --offline=yes dropwire-relay.service: ${s.score} ${s.verdict}`);
    expect(s.score).toBeLessThanOrEqual(2.5);
  });

  it('user unit (default.target), a home with blanks and %', () => {
    const root = install({ scope: 'user', home: '/home/op/my 100% dropwire' });
    const unit = path.join(root, os_home(), '.config/systemd/user/dropwire-agent.service');
    expect(systemdVerify(unit, true)).toEqual({ code: 0, output: '' });
    const s = systemdExposure(unit, true);
    console.log(`systemd-analyze --user security --offline=yes dropwire-agent.service (user): ${s.score} ${s.verdict} (no file-system sandbox: opened applications must see the session)`);
  });

  it('the check is real: verify reports a broken drop-in', () => {
    const root = install({});
    const unit = path.join(root, 'etc/systemd/system/dropwire-agent.service');
    fs.writeFileSync(`${unit}.d/save-dirs.conf`, '[Service]\nReadWritePaths=-relative/dir\nTpye=exec\n');
    const r = systemdVerify(unit);
    expect(r.output).toMatch(/relative|absolute/i);
    expect(r.output).toContain('Tpye');
  });
});

function os_home(): string {
  return resolveTarget({ platform: 'linux', scope: 'user', node: '/usr/bin/node', cli: '/x/bin/dropwire.js' }).userHome;
}
