import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { Api, cli, cliOk, pathWithoutNode, ROOT, sha256, spawnCli, startRelay, tempDir, waitFor } from '../helpers/cli.js';
import { buildLinuxX64Elsewhere, cachedRelease, canBuild, type Release } from './build.js';

/**
 * Issue 15: the Linux x64 single executable works on a host without Node. Every CLI process in these
 * tests is the executable (DROPWIRE_CLI_BIN), with no `node` on PATH and an empty working folder.
 */
describe.skipIf(!canBuild)('the linux-x64 single executable', () => {
  let rel: Release;
  beforeAll(async () => {
    rel = await cachedRelease();
    process.env.DROPWIRE_CLI_BIN = rel.exe;
  }, 6 * 60_000);

  it('runs where no node is on PATH: version, relay, enroll, files, an exec rule, status, logs, service install --dry-run', async () => {
    const noNodePath = pathWithoutNode();
    const which = await new Promise<number>((r) => execFile('/bin/sh', ['-c', 'command -v node'], { env: { PATH: noNodePath } }, (err) => r(err ? 1 : 0)));
    expect(which).toBe(1); // there really is no node to fall back on

    const head = execFileSync('git', ['rev-parse', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).trim();
    const version = await cliOk(['--version']);
    expect(version).toMatch(/^dropwire \d+\.\d+\.\d+ \(commit [0-9a-f]{40}(-dirty)?\)$/);
    expect(version).toContain(head);

    const dir = tempDir();
    const data = path.join(dir, 'relay');
    const home = path.join(dir, 'agent');
    const relay = await startRelay(data);
    const added = await cli(['relay', 'device', 'add', 'shop', '--data', data]);
    expect(added.code).toBe(0);
    const enrollToken = added.stdout.trim();
    expect(added.stderr).toContain(`curl -fsSL http://${relay.info.http}/install.sh | sh -s -- ${enrollToken}`);
    expect(await cliOk(['init', enrollToken, '--home', home])).toContain("enrolled as 'shop'");
    const token = await cliOk(['relay', 'token', 'add', 'web', '--data', data]);
    const api = new Api(relay.info.http, token);
    // An exec rule before the default save rule; the handler gets no PATH, so absolute paths only.
    await cliOk(['rule', 'add', '*.job', 'exec', '--home', home, '--at', '1', '--', '/bin/sh', '-c', 'while read -r l; do echo "job: $l"; done < "$1"', 'sh', '{file}']);

    const agent = spawnCli(['agent', '--home', home]);
    const saved = await api.send('shop', 'order.xml', '<order n="1"/>');
    const ran = await api.send('shop', 'nightly.job', 'line one\nline two\n');
    expect(saved.status).toBe(202);
    expect((await api.until(saved.json.id as string, ['handled'])).status).toBe('handled');
    expect(fs.readFileSync(path.join(home, 'inbox', 'order.xml'), 'utf8')).toBe('<order n="1"/>');
    const job = await api.until(ran.json.id as string, ['handled', 'failed']);
    expect(job).toMatchObject({ status: 'handled', result: { exitCode: 0 } });
    expect(String((job.result as { output: string }).output)).toContain('job: line two');

    // The agent told the relay what it runs.
    const device = (await api.get('/v1/devices/shop')).json;
    const commit = version.match(/commit ([0-9a-f]{40})/)![1]!;
    expect(device).toMatchObject({ name: 'shop', online: true, agentVersion: expect.stringContaining(`(${commit.slice(0, 12)}`) });

    const status = await cli(['status', '--home', home]);
    expect(status.code).toBe(0);
    expect(status.stdout).toMatch(/connected since/);
    const logs = await cliOk(['logs', '--home', home, '-n', '200', '--json']);
    expect(logs).toContain(ran.json.id as string);

    const plan = await cliOk(['service', 'install', '--dry-run', '--user', '--home', home]);
    expect(plan).toContain(`ExecStart=${fs.realpathSync(rel.exe)} agent`);
    expect(plan).not.toMatch(/dropwire\.js|\/node\b/);
    const windows = await cliOk(['service', 'install', '--dry-run', '--platform', 'win32']);
    expect(windows).toContain('https://github.com/winsw/winsw/releases'); // where to get WinSW

    await agent.kill();
    await relay.proc.kill();
  });

  it('SHA256SUMS lists the executable and its SHA-256', () => {
    expect(rel.sums).toBe(`${sha256(fs.readFileSync(rel.exe))}  dropwire-linux-x64\n`);
  });

  it('a second build of the same sources, from another folder, gives the same bytes', async () => {
    const out = fs.mkdtempSync(path.join(os.tmpdir(), 'dw-rebuild-'));
    try {
      const commit = /\(commit (\S+)\)/.exec(execFileSync(rel.exe, ['--version'], { encoding: 'utf8' }))![1]!;
      await buildLinuxX64Elsewhere(out, commit);
      expect(fs.readFileSync(path.join(out, 'SHA256SUMS'), 'utf8')).toBe(rel.sums);
    } finally {
      fs.rmSync(out, { recursive: true, force: true });
    }
  }, 6 * 60_000);

  it('the relay run from the executable serves its installers, and 404 JSON for anything else', async () => {
    const dir = tempDir();
    const downloads = path.join(dir, 'downloads');
    fs.mkdirSync(downloads);
    fs.writeFileSync(path.join(downloads, 'SHA256SUMS'), rel.sums);
    fs.writeFileSync(path.join(dir, 'secret.txt'), 'no');
    const relay = await startRelay(path.join(dir, 'relay'), ['--downloads', downloads]);
    const base = `http://${relay.info.http}`;
    const sh = await fetch(`${base}/install.sh`);
    expect(sh.status).toBe(200);
    expect(await sh.text()).toContain(`BASE='${base}'`);
    expect(await (await fetch(`${base}/install.ps1`)).text()).toContain(`[string]$Base = '${base}'`);
    expect(await (await fetch(`${base}/download/SHA256SUMS`)).text()).toBe(rel.sums);
    for (const bad of ['/download/..%2Fsecret.txt', '/download/.hidden', '/download/a%00b', '/download/missing-file']) {
      const r = await fetch(`${base}${bad}`);
      expect(r.status, bad).toBe(404);
      expect(await r.json()).toMatchObject({ error: { code: 'DW_NOT_FOUND' } });
    }
    await relay.proc.kill();
  });
});
