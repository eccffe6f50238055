import { execFile, execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ROOT } from '../helpers/cli.js';

/**
 * The linux-x64 single executable for the tests, built once per source state and shared by the test files
 * (and by later runs): `npm run release -- --targets linux-x64` into a cache folder keyed by everything
 * that goes into the executable (sources, templates, installers, lock file, Node version). A second test
 * file that asks while the first builds waits for it.
 */

export const canBuild = process.platform === 'linux' && process.arch === 'x64' && process.versions.node.startsWith('24.');
/**
 * Per checkout: several worktrees on one machine keep their own builds. Not under a temporary folder:
 * `service install` rightly refuses an executable there (a reboot empties it), and the tests install it.
 */
const CACHE = path.join(process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'), 'dropwire-sea-test', createHash('sha256').update(ROOT).digest('hex').slice(0, 12));
/** An older build of this checkout is removed only when it has not been used for this long. */
const KEEP_UNUSED_MS = 60 * 60_000;
const BUILD_MS = 5 * 60_000;

function listFiles(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  return fs
    .readdirSync(dir, { withFileTypes: true })
    .flatMap((e) => (e.isDirectory() ? listFiles(path.join(dir, e.name)) : [path.join(dir, e.name)]))
    .sort();
}

function git(args: string[]): string {
  try {
    return execFileSync('git', args, { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return 'no git';
  }
}

/** A hash of every input of the executable, with the commit and whether the tree differs from it (both are embedded). */
export function sourceKey(): string {
  const h = createHash('sha256').update(process.version).update(git(['rev-parse', 'HEAD'])).update(git(['status', '--porcelain', '--untracked-files=no']) === '' ? 'clean' : 'dirty');
  const inputs = [...['src', 'scripts', 'service-templates'].flatMap((d) => listFiles(path.join(ROOT, d))), path.join(ROOT, 'package.json'), path.join(ROOT, 'package-lock.json')];
  for (const f of inputs) h.update(path.relative(ROOT, f)).update('\0').update(fs.readFileSync(f)).update('\0');
  return h.digest('hex').slice(0, 24);
}

/** Runs `scripts/release.mjs --targets linux-x64 --out OUT` in `root`; resolves with its stdout. */
export function buildLinuxX64(out: string, root = ROOT, env: NodeJS.ProcessEnv = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [path.join(root, 'scripts', 'release.mjs'), '--targets', 'linux-x64', '--out', out, '--no-typecheck'], { cwd: root, env: { ...process.env, ...env }, timeout: BUILD_MS, maxBuffer: 16 << 20 }, (err, stdout, stderr) =>
      err ? reject(new Error(`release build failed: ${err.message}\n${stderr.slice(-4000)}`)) : resolve(stdout),
    );
  });
}

/**
 * The same build from a copy of the checkout's build inputs in another folder (no .git there: the commit
 * string is passed in), node_modules linked: what lands in the executable must not depend on where the
 * checkout is.
 */
export async function buildLinuxX64Elsewhere(out: string, commit: string): Promise<string> {
  const copy = fs.mkdtempSync(path.join(os.tmpdir(), 'dw-elsewhere-'));
  const root = path.join(copy, 'a', 'different', 'checkout');
  try {
    fs.mkdirSync(root, { recursive: true });
    for (const p of ['src', 'scripts', 'service-templates', 'package.json', 'package-lock.json', 'tsconfig.json', 'tsconfig.build.json']) {
      fs.cpSync(path.join(ROOT, p), path.join(root, p), { recursive: true });
    }
    fs.symlinkSync(fs.realpathSync(path.join(ROOT, 'node_modules')), path.join(root, 'node_modules'));
    return await buildLinuxX64(out, root, { DROPWIRE_COMMIT: commit });
  } finally {
    fs.rmSync(copy, { recursive: true, force: true });
  }
}

export interface Release {
  dir: string;
  exe: string;
  sums: string;
}

/** The cached build for the current sources, building it first when there is none. */
export async function cachedRelease(): Promise<Release> {
  const dir = path.join(CACHE, sourceKey());
  const done = path.join(dir, 'SHA256SUMS');
  const result = (): Release => ({ dir, exe: path.join(dir, 'dropwire-linux-x64'), sums: fs.readFileSync(done, 'utf8') });
  if (fs.existsSync(done)) {
    fs.utimesSync(dir, new Date(), new Date()); // in use: not pruned
    return result();
  }
  fs.mkdirSync(CACHE, { recursive: true });
  const lock = `${dir}.lock`;
  const end = Date.now() + BUILD_MS;
  for (;;) {
    try {
      fs.mkdirSync(lock);
      break;
    } catch {
      // Another test file is building it: wait for its SHA256SUMS (or a lock left by a killed run).
      if (fs.existsSync(done)) return result();
      const age = Date.now() - (fs.statSync(lock, { throwIfNoEntry: false })?.mtimeMs ?? Date.now());
      if (age > BUILD_MS) fs.rmSync(lock, { recursive: true, force: true });
      if (Date.now() > end) throw new Error(`timed out waiting for the release build in ${dir}`);
      await new Promise((r) => setTimeout(r, 500));
    }
  }
  try {
    if (fs.existsSync(done)) return result();
    const tmp = `${dir}.tmp-${process.pid}`;
    fs.rmSync(tmp, { recursive: true, force: true });
    await buildLinuxX64(tmp);
    fs.rmSync(dir, { recursive: true, force: true });
    fs.renameSync(tmp, dir);
    // Builds of other source states are 120 MiB each: drop those unused for an hour (a test run still
    // using one keeps it fresh).
    for (const other of fs.readdirSync(CACHE)) {
      const p = path.join(CACHE, other);
      const unused = Date.now() - (fs.statSync(p, { throwIfNoEntry: false })?.mtimeMs ?? Date.now());
      if (other !== path.basename(dir) && !other.endsWith('.lock') && !other.includes('.tmp-') && unused > KEEP_UNUSED_MS) fs.rmSync(p, { recursive: true, force: true });
    }
    return result();
  } finally {
    fs.rmSync(lock, { recursive: true, force: true });
  }
}
