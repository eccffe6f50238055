import { execFile, execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it, onTestFinished } from 'vitest';
import { BIN, ROOT, tempDir, waitFor } from '../helpers/cli.js';

/** The machine's own Node (20 here), if it is older than 24. */
const OLD_NODE = (() => {
  for (const p of ['/usr/bin/node', '/usr/local/bin/node']) {
    try {
      const v = execFileSync(p, ['--version'], { encoding: 'utf8' }).trim();
      if (Number(v.slice(1).split('.')[0]) < 24) return { path: p, version: v.slice(1) };
    } catch {
      // not there
    }
  }
  return undefined;
})();
const CACHE = path.join(os.homedir(), '.cache', 'dropwire-node');
const CACHED_NODE = fs.existsSync(path.join(CACHE, 'node_modules', '.bin', 'node'));
const NPM = (() => {
  try {
    execFileSync('npm', ['--version'], { stdio: 'ignore', env: { ...process.env, PATH: oldPath() } });
    return true;
  } catch {
    return false;
  }
})();
if (!OLD_NODE) console.log('skipping the old-Node tests: no Node older than 24 at /usr/bin/node');
if (!CACHED_NODE) console.log(`skipping the npm start test: no Node 24 in ${CACHE} (tests do not fetch it)`);

/** PATH with the old Node first (as on a fresh machine) and without the Node 24 of this test run. */
function oldPath(): string {
  const dir = OLD_NODE ? path.dirname(OLD_NODE.path) : '/usr/bin';
  return [dir, ...(process.env.PATH ?? '').split(path.delimiter).filter((p) => p !== path.dirname(process.execPath) && !p.includes('dropwire-node'))].join(path.delimiter);
}

function run(file: string, args: string[], env: NodeJS.ProcessEnv = {}, cwd = ROOT): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(file, args, { cwd, env: { ...process.env, PATH: oldPath(), ...env }, timeout: 120_000 }, (err, stdout, stderr) =>
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

describe.skipIf(!OLD_NODE)('Node older than 24 (issue 11.11)', () => {
  it('`dropwire` run directly says which Node it needs and found, with no stack, and exits 1', async () => {
    for (const args of [['up'], ['--version'], ['relay', 'start', '--data', path.join(tempDir(), 'r')]]) {
      const r = await run(OLD_NODE!.path, [BIN, ...args]);
      expect(r.code).toBe(1);
      expect(r.stdout).toBe('');
      expect(r.stderr).toBe(`dropwire needs Node.js 24 or newer (found ${OLD_NODE!.version}); see README\n`);
    }
  });

  it.skipIf(!CACHED_NODE)('the wrapper of `npm start` / `npm test` runs the command with the cached Node 24 and says so in one line', async () => {
    const r = await run(OLD_NODE!.path, ['scripts/with-node24.js', 'node -p process.versions.node'], { DROPWIRE_NODE_CACHE: CACHE });
    expect(r.code).toBe(0);
    expect(r.stdout.trim().split('\n')[0]).toMatch(/^24\./);
    const lines = r.stderr.trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(new RegExp(`^dropwire: Node ${OLD_NODE!.version.replace(/\./g, '\\.')} is older than 24; using Node 24\\.\\d+\\.\\d+ from ${CACHE}$`));
    // Both scripts go through it.
    const scripts = (JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> }).scripts;
    expect(scripts.start).toBe('node scripts/with-node24.js "node bin/dropwire.js up"');
    expect(scripts.test).toBe('node scripts/with-node24.js "npm run build && vitest run"');
    // The test runner itself starts on Node 24 there.
    const v = await run(OLD_NODE!.path, ['scripts/with-node24.js', 'vitest --version'], { DROPWIRE_NODE_CACHE: CACHE });
    expect(v.code).toBe(0);
    expect(v.stdout).toMatch(/vitest\/\d+\.\d+\.\d+ .*node-v24\./);
  });

  it('with no Node 24 cached, the wrapper installs node@24 (from the npm cache: tests stay offline) and goes on', async (ctx) => {
    const cache = tempDir('dw-node-');
    const r = await run(OLD_NODE!.path, ['scripts/with-node24.js', 'node -p process.versions.node'], { DROPWIRE_NODE_CACHE: cache, npm_config_offline: 'true' });
    if (r.code !== 0 && r.stderr.includes('installing node@24') && r.stderr.includes('ENOTCACHED')) {
      console.log('skipping the install test: node@24 is not in the npm cache and tests do not reach the registry');
      ctx.skip();
    }
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toMatch(/^24\./);
    expect(r.stderr.trim()).toBe(`dropwire: Node ${OLD_NODE!.version} is older than 24; using Node ${r.stdout.trim()} fetched from the npm registry into ${cache}`);
    expect(fs.existsSync(path.join(cache, 'node_modules', '.bin', 'node'))).toBe(true);
  });

  it.skipIf(!CACHED_NODE || !NPM)('`npm start` on the old Node brings dropwire up; Ctrl-C stops it cleanly', async () => {
    const dir = tempDir();
    // Its own process group, like a terminal's foreground job: Ctrl-C signals the whole group.
    const npm = spawn('npm', ['start', '--', '--dir', path.join(dir, '.dropwire'), '--http', '127.0.0.1:0'], {
      cwd: ROOT,
      env: { ...process.env, PATH: oldPath(), DROPWIRE_NODE_CACHE: CACHE },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    const exited = new Promise<void>((r) => npm.once('exit', () => r()));
    onTestFinished(async () => {
      if (npm.exitCode === null && npm.signalCode === null) {
        process.kill(-npm.pid!, 'SIGKILL');
        await exited;
      }
    });
    let out = '';
    let err = '';
    npm.stdout.on('data', (d: Buffer) => (out += d.toString()));
    npm.stderr.on('data', (d: Buffer) => (err += d.toString()));
    await waitFor(() => (out.includes('Ctrl-C stops both.') ? true : undefined), 60_000, 'dropwire up through npm start');
    expect(err).toMatch(/dropwire: Node \d+\.\d+\.\d+ is older than 24; using Node 24\.\d+\.\d+ from /);
    expect(out).toContain('dropwire is up.');
    const relay = JSON.parse(fs.readFileSync(path.join(dir, '.dropwire', 'relay', 'relay.json'), 'utf8')) as { http: string; pid: number };
    expect((await fetch(`http://${relay.http}/healthz`)).status).toBe(200);
    process.kill(-npm.pid!, 'SIGINT');
    await exited;
    await waitFor(() => (out.includes('dropwire stopped.') ? true : undefined), 20_000, 'a clean stop');
    // The dropwire process is gone (it removed relay.json on its way out).
    expect(fs.existsSync(path.join(dir, '.dropwire', 'relay', 'relay.json'))).toBe(false);
    expect(() => process.kill(relay.pid, 0)).toThrow();
  });
});
