import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { cliOk, ROOT, sha256, startRelay, tempDir } from '../helpers/cli.js';
import { cachedRelease, canBuild, type Release } from './build.js';

/** Issue 15: `curl -fsSL RELAY/install.sh | sh -s -- TOKEN` against a real relay on loopback, in a throwaway root. */

const hasCurl = (() => {
  try {
    execFileSync('/bin/sh', ['-c', 'command -v curl'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();
if (!hasCurl) console.log('install.sh tests skipped: curl is not installed');

/** The tools install.sh uses: on this machine /usr/bin also holds a node, so PATH gets a folder of just these. */
const TOOLS = ['sh', 'curl', 'uname', 'mktemp', 'awk', 'sha256sum', 'cut', 'id', 'mkdir', 'chmod', 'mv', 'rm', 'sed', 'pwd'];
function toolsOnlyPath(dir: string): string {
  const bin = path.join(dir, 'tools');
  fs.mkdirSync(bin, { recursive: true });
  for (const t of TOOLS) {
    const found = execFileSync('/bin/sh', ['-c', `command -v ${t}`], { encoding: 'utf8' }).trim();
    fs.symlinkSync(found, path.join(bin, t));
  }
  return bin;
}

/** `curl -fsSL BASE/install.sh | sh -s -- ARGS`, as an operator types it, with no node on PATH. */
function pipeInstall(base: string, args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number; stdout: string; stderr: string }> {
  const quoted = args.map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
  return new Promise((resolve) => {
    execFile(path.join(env.PATH!, 'sh'), ['-c', `curl -fsSL ${base}/install.sh | sh -s -- ${quoted}`], { env, timeout: 120_000 }, (err, stdout, stderr) =>
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

describe.skipIf(!canBuild || !hasCurl)('install.sh', () => {
  let rel: Release;
  beforeAll(async () => {
    rel = await cachedRelease();
    process.env.DROPWIRE_CLI_BIN = rel.exe;
  }, 6 * 60_000);

  it('installs the checked executable, enrolls and writes the service files; refuses a corrupted download', async () => {
    const dir = tempDir();
    const data = path.join(dir, 'relay');
    const downloads = path.join(dir, 'downloads');
    fs.mkdirSync(downloads);
    const served = path.join(downloads, 'dropwire-linux-x64');
    fs.writeFileSync(path.join(downloads, 'SHA256SUMS'), rel.sums);
    const relay = await startRelay(data, ['--downloads', downloads]);
    const base = `http://${relay.info.http}`;
    const userHome = path.join(dir, 'home');
    fs.mkdirSync(userHome);
    const env = { PATH: toolsOnlyPath(dir), HOME: userHome, TMPDIR: dir };
    expect(fs.existsSync(path.join(env.PATH, 'node'))).toBe(false);
    const asRoot = process.getuid?.() === 0;
    const binIn = (root: string) => path.join(root, asRoot ? '/usr/local/bin/dropwire' : `${userHome}/.local/bin/dropwire`);
    const homeIn = (root: string) => path.join(root, asRoot ? '/etc/dropwire' : `${userHome}/.config/dropwire`);

    // A corrupted executable (its first MiB, then garbage) under the genuine SHA256SUMS: refused, nothing done.
    fs.writeFileSync(served, Buffer.concat([fs.readFileSync(rel.exe).subarray(0, 1 << 20), Buffer.from('corrupted')]));
    const badRoot = path.join(dir, 'bad-root');
    const token1 = await cliOk(['relay', 'device', 'add', 'kitchen', '--data', data]);
    const bad = await pipeInstall(base, [token1, '--root', badRoot], env);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/checksum mismatch for dropwire-linux-x64: got [0-9a-f]{64}, SHA256SUMS says [0-9a-f]{64}; refusing to install it/);
    expect(fs.existsSync(binIn(badRoot))).toBe(false);
    expect(fs.existsSync(homeIn(badRoot))).toBe(false);

    // The genuine one.
    fs.copyFileSync(rel.exe, served);
    const root = path.join(dir, 'root');
    const token2 = await cliOk(['relay', 'device', 'add', 'shop', '--data', data]);
    const good = await pipeInstall(base, [token2, '--root', root], env);
    expect(good.code, good.stderr).toBe(0);
    const bin = binIn(root);
    expect(good.stdout).toContain(`Checked SHA-256 ${sha256(fs.readFileSync(rel.exe))}`);
    expect(sha256(fs.readFileSync(bin))).toBe(sha256(fs.readFileSync(rel.exe)));
    expect(fs.statSync(bin).mode & 0o111).not.toBe(0);
    // init ran: the agent's key and config, enrolled with the relay.
    const cfg = JSON.parse(fs.readFileSync(path.join(homeIn(root), 'config.json'), 'utf8')) as { name?: string };
    expect(cfg.name).toBe('shop');
    const devices = JSON.parse(await cliOk(['relay', 'device', 'list', '--json', '--data', data])) as { name: string; enrolled: boolean }[];
    expect(devices.find((d) => d.name === 'shop')?.enrolled).toBe(true);
    expect(devices.find((d) => d.name === 'kitchen')?.enrolled).toBe(false); // the refused install enrolled nothing
    // service install --root: the unit runs the executable where it will be once `root` is /.
    const unit = asRoot ? path.join(root, 'etc/systemd/system/dropwire-agent.service') : path.join(root, userHome, '.config/systemd/user/dropwire-agent.service');
    const unitText = fs.readFileSync(unit, 'utf8');
    expect(unitText).toContain(`ExecStart=${asRoot ? '/usr/local/bin/dropwire' : `${userHome}/.local/bin/dropwire`} agent`);
    // What it did, and how to undo it.
    expect(good.stdout).toContain('To undo:');
    expect(good.stdout).toContain('service uninstall');
    expect(good.stdout).toContain(`rm ${bin}`);

    // Running it again (an update) replaces the executable and keeps the enrollment.
    const keyBefore = fs.readFileSync(path.join(homeIn(root), 'device.key'));
    const again = await pipeInstall(base, ['dw1.unused', '--root', root], env);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toContain('Already enrolled');
    expect(fs.readFileSync(path.join(homeIn(root), 'device.key'))).toEqual(keyBefore);

    // --dry-run downloads and checks, then installs nothing (DESTDIR as the root this time).
    const dryRoot = path.join(dir, 'dry-root');
    const token3 = await cliOk(['relay', 'device', 'add', 'office', '--data', data]);
    const dry = await pipeInstall(base, [token3, '--dry-run'], { ...env, DESTDIR: dryRoot });
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stdout).toContain('Dry run: nothing installed');
    expect(dry.stdout).toContain(`install -m 0755 dropwire-linux-x64 ${binIn(dryRoot)}`); // DESTDIR is the root
    expect(fs.existsSync(dryRoot)).toBe(false);

    await relay.proc.kill();
  });

  it('refuses to run without a token, naming the usage', async () => {
    const r = await new Promise<{ code: number; stderr: string }>((resolve) =>
      execFile('/bin/sh', [path.join(ROOT, 'scripts', 'install.sh'), '--base', 'http://127.0.0.1:9'], { env: { PATH: toolsOnlyPath(tempDir()) } }, (err, _o, stderr) => resolve({ code: err ? 1 : 0, stderr })),
    );
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('usage: curl -fsSL RELAY/install.sh | sh -s -- TOKEN');
  });
});

const pwsh = (() => {
  try {
    return execFileSync('/bin/sh', ['-c', 'command -v pwsh'], { encoding: 'utf8' }).trim() || undefined;
  } catch {
    return undefined;
  }
})();
if (!pwsh) console.log('install.ps1 parse check skipped: pwsh (PowerShell) is not installed');

describe.skipIf(!pwsh)('install.ps1', () => {
  it('parses without errors', async () => {
    const script = path.join(ROOT, 'scripts', 'install.ps1');
    const check = `$e = $null; [System.Management.Automation.Language.Parser]::ParseFile('${script}', [ref]$null, [ref]$e) | Out-Null; if ($e.Count) { $e | ForEach-Object { $_.ToString() }; exit 1 }`;
    const r = await new Promise<number>((resolve) => execFile(pwsh!, ['-NoProfile', '-Command', check], { env: { ...process.env, HOME: os.tmpdir() } }, (err) => resolve(err ? 1 : 0)));
    expect(r).toBe(0);
  });
});
