import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { describe, expect, it, onTestFinished } from 'vitest';
import { ROOT, tempDir, waitFor } from '../helpers/cli.js';

/**
 * `npm install -g` of dropwire, for real, into a temporary --prefix (never the real global prefix).
 * Tests never reach beyond loopback, so the dependencies come from a small npm registry on 127.0.0.1
 * serving the packages already in node_modules (packuments and tarballs, the way registry.npmjs.org
 * answers the npm client).
 */

const has = (cmd: string, args: string[]) => {
  try {
    execFileSync(cmd, args, { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
};
const TOOLS = has('npm', ['--version']) && has('tar', ['--version']);
if (!TOOLS) console.log('skipping the global install tests: npm or GNU tar is missing');
const BUILT = fs.existsSync(path.join(ROOT, 'dist', 'src', 'cli', 'main.js'));
if (!BUILT) console.log('skipping the global install tests: dist/ is not built (npm test builds it first)');

interface Manifest {
  name: string;
  version: string;
  dependencies?: Record<string, string>;
  optionalDependencies?: Record<string, string>;
  peerDependencies?: Record<string, string>;
  peerDependenciesMeta?: Record<string, { optional?: boolean }>;
  bin?: unknown;
  engines?: unknown;
  os?: unknown;
  cpu?: unknown;
  scripts?: Record<string, string>;
}

/** Finds `name` as Node would from `fromDir` (nested node_modules first, then up the tree). */
function resolvePackage(name: string, fromDir: string): string | undefined {
  for (let dir = fromDir; ; dir = path.dirname(dir)) {
    const candidate = path.join(dir, 'node_modules', name, 'package.json');
    if (fs.existsSync(candidate)) return path.dirname(fs.realpathSync(candidate));
    if (path.dirname(dir) === dir) return undefined;
  }
}

/** Every package dropwire needs at run time, as installed here: name → version → folder. */
function dependencyClosure(): Map<string, Map<string, string>> {
  const found = new Map<string, Map<string, string>>();
  const root = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as Manifest;
  // npm resolves the whole tree, devDependencies too, even when it installs without them.
  const queue: [string, string][] = [...Object.keys(root.dependencies ?? {}), ...Object.keys((root as { devDependencies?: object }).devDependencies ?? {})].map((n) => [n, ROOT]);
  while (queue.length) {
    const [name, from] = queue.shift()!;
    const dir = resolvePackage(name, from);
    if (!dir) continue; // an optional dependency for another platform
    const m = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')) as Manifest;
    const versions = found.get(m.name) ?? new Map<string, string>();
    if (versions.has(m.version)) continue;
    versions.set(m.version, dir);
    found.set(m.name, versions);
    for (const d of [...Object.keys(m.dependencies ?? {}), ...Object.keys(m.optionalDependencies ?? {}), ...Object.keys(m.peerDependencies ?? {})]) queue.push([d, dir]);
  }
  return found;
}

/** A read-only npm registry on loopback for the packages of `dependencyClosure()`. */
async function localRegistry(work: string): Promise<string> {
  const packages = dependencyClosure();
  const tarballs = new Map<string, string>();
  const server = http.createServer((req, res) => {
    const url = decodeURIComponent((req.url ?? '/').split('?')[0]!);
    if (url.startsWith('/-/tarballs/')) {
      // Packed on first request: most of the tree (the dev tools) is resolved but never downloaded.
      const key = url.slice('/-/tarballs/'.length);
      const dir = tarballs.get(key);
      if (!dir) return res.writeHead(404).end();
      const file = path.join(work, key);
      if (!fs.existsSync(file)) execFileSync('tar', ['-czf', file, '--exclude=./node_modules', '--transform', 's,^\\.,package,', '-C', dir, '.']);
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      return fs.createReadStream(file).pipe(res);
    }
    const name = url.slice(1);
    const versions = packages.get(name);
    if (!versions) {
      res.writeHead(404, { 'content-type': 'application/json' });
      return res.end(JSON.stringify({ error: 'not found' }));
    }
    const base = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
    const packument = { name, 'dist-tags': { latest: [...versions.keys()].at(-1) }, versions: {} as Record<string, unknown> };
    for (const [version, dir] of versions) {
      const key = `${name.replace('/', '__')}-${version}.tgz`;
      tarballs.set(key, dir);
      const m = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')) as Manifest;
      packument.versions[version] = {
        name,
        version,
        ...(m.dependencies ? { dependencies: m.dependencies } : {}),
        ...(m.optionalDependencies ? { optionalDependencies: m.optionalDependencies } : {}),
        ...(m.peerDependencies ? { peerDependencies: m.peerDependencies } : {}),
        ...(m.peerDependenciesMeta ? { peerDependenciesMeta: m.peerDependenciesMeta } : {}),
        ...(m.bin ? { bin: m.bin } : {}),
        ...(m.engines ? { engines: m.engines } : {}),
        ...(m.os ? { os: m.os } : {}),
        ...(m.cpu ? { cpu: m.cpu } : {}),
        ...(m.scripts ? { scripts: m.scripts } : {}),
        dist: { tarball: `${base}/-/tarballs/${key}` },
      };
    }
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(packument));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  onTestFinished(() => new Promise<void>((r) => server.close(() => r())));
  return `http://127.0.0.1:${(server.address() as { port: number }).port}/`;
}

function run(cmd: string, args: string[], o: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { cwd: o.cwd ?? ROOT, env: { ...process.env, ...o.env }, timeout: 240_000 }, (err, stdout, stderr) =>
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

/** npm, kept on loopback and away from the real global prefix and the user's cache. */
function npmEnv(work: string, registry: string, prefix: string): NodeJS.ProcessEnv {
  return {
    npm_config_registry: registry,
    npm_config_cache: path.join(work, 'npm-cache'),
    npm_config_prefix: prefix,
    npm_config_userconfig: path.join(work, 'npmrc'),
    npm_config_audit: 'false',
    npm_config_fund: 'false',
    npm_config_update_notifier: 'false',
    npm_config_proxy: '',
    npm_config_https_proxy: '',
    // The Node 24 of this test run first on PATH (npm's own `node` and the installed `dropwire`).
    PATH: [path.join(prefix, 'bin'), path.dirname(process.execPath), process.env.PATH ?? ''].join(path.delimiter),
  };
}

/** The installed command works: version, a relay that starts and answers, and the temp-folder guard. */
async function checkInstalled(prefix: string, work: string, env: NodeJS.ProcessEnv): Promise<void> {
  const bin = path.join(prefix, 'bin', 'dropwire');
  expect(fs.existsSync(bin)).toBe(true);
  const version = await run('dropwire', ['--version'], { env, cwd: work });
  expect(version.stderr).toBe('');
  const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string };
  expect(version.code).toBe(0);
  expect(version.stdout).toMatch(new RegExp(`(^|\\s)${pkg.version.replace(/\./g, '\\.')}(\\s|$)`));
  const data = path.join(work, 'relay-data');
  const relay = execFile('dropwire', ['relay', 'start', '--data', data, '--listen', '127.0.0.1:0', '--http', '127.0.0.1:0'], { env: { ...process.env, ...env }, cwd: work });
  onTestFinished(() => {
    relay.kill('SIGKILL');
  });
  const info = await waitFor(() => {
    try {
      return JSON.parse(fs.readFileSync(path.join(data, 'relay.json'), 'utf8')) as { http: string };
    } catch {
      return undefined;
    }
  }, 30_000, 'the installed relay');
  expect(((await (await fetch(`http://${info.http}/healthz`)).json()) as { ok: boolean }).ok).toBe(true);
  relay.kill('SIGTERM');
  // The installed copy lives under a temporary folder here: `service install` says so instead of
  // writing a unit that cannot start.
  const svc = await run('dropwire', ['service', 'install', '--dry-run', '--platform', 'linux'], { env, cwd: work });
  expect(svc.code).toBe(1);
  expect(svc.stderr).toContain('DW_TEMP_PATH');
  expect(svc.stderr).toContain(`ExecStart=${path.join(fs.realpathSync(path.join(prefix, 'lib', 'node_modules', 'dropwire')), 'bin', 'dropwire.js')}`);
}

describe.skipIf(!TOOLS || !BUILT)('a `dropwire` command on PATH (issue 11.12)', () => {
  it('`npm pack` then `npm install -g` of the tarball (temporary --prefix)', async () => {
    const work = tempDir('dw-pack-');
    const registry = await localRegistry(work);
    const prefix = path.join(work, 'prefix');
    const env = npmEnv(work, registry, prefix);
    // --ignore-scripts: `prepare` (the build) already ran for this test run; building here would rewrite
    // dist/ under the feet of the tests running beside this one.
    const pack = await run('npm', ['pack', '--ignore-scripts', '--pack-destination', work, '--json'], { env });
    expect(pack.code, pack.stderr).toBe(0);
    const packed = (JSON.parse(pack.stdout) as { filename: string; files: { path: string }[] }[])[0]!;
    const files = packed.files.map((f) => f.path);
    for (const f of ['bin/dropwire.js', 'dist/src/cli/main.js', 'service-templates/systemd/dropwire-agent.service', 'package.json']) expect(files).toContain(f);
    expect(files.some((f) => f.startsWith('src/') || f.startsWith('test/'))).toBe(false);

    const install = await run('npm', ['install', '-g', path.join(work, packed.filename)], { env, cwd: work });
    expect(install.code, install.stderr).toBe(0);
    expect(fs.lstatSync(path.join(prefix, 'lib', 'node_modules', 'dropwire')).isDirectory()).toBe(true);
    await checkInstalled(prefix, work, env);
  });

  it('`npm install -g .` in the dropwire folder (a copy of this checkout, temporary --prefix)', async () => {
    const work = tempDir('dw-link-');
    const registry = await localRegistry(work);
    const prefix = path.join(work, 'prefix');
    const env = npmEnv(work, registry, prefix);
    // The checkout as a user has it after `npm install`: its files, and node_modules. Here node_modules
    // is a folder of links to this checkout's packages, so nothing npm does can change the shared ones.
    const copy = path.join(work, 'dropwire');
    const files = execFileSync('git', ['ls-files', '-co', '--exclude-standard', '-z'], { cwd: ROOT, encoding: 'utf8' }).split('\0').filter(Boolean);
    for (const f of files) {
      if (f === 'node_modules' || f.startsWith('node_modules/') || !fs.existsSync(path.join(ROOT, f))) continue;
      fs.mkdirSync(path.dirname(path.join(copy, f)), { recursive: true });
      fs.copyFileSync(path.join(ROOT, f), path.join(copy, f));
    }
    const modules = fs.realpathSync(path.join(ROOT, 'node_modules'));
    fs.mkdirSync(path.join(copy, 'node_modules'));
    for (const e of fs.readdirSync(modules)) fs.symlinkSync(path.join(modules, e), path.join(copy, 'node_modules', e));
    expect(fs.existsSync(path.join(copy, 'dist'))).toBe(false);

    // npm links the folder and runs its `prepare` (the build) there.
    const install = await run('npm', ['install', '-g', '.'], { env, cwd: copy });
    expect(install.code, install.stderr).toBe(0);
    expect(fs.realpathSync(path.join(prefix, 'lib', 'node_modules', 'dropwire'))).toBe(fs.realpathSync(copy));
    expect(fs.existsSync(path.join(copy, 'dist', 'src', 'cli', 'main.js'))).toBe(true);
    await checkInstalled(prefix, work, env);
  });
});

