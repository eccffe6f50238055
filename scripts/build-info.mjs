// What `dropwire --version` says: the package version and the commit the build came from.
// Used by `npm run build` (dist/version.json) and `npm run release` (embedded into the bundle).
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

function git(args) {
  try {
    return execFileSync('git', args, { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return undefined;
  }
}

/** `{ version, commit }`; commit is the full hash, `-dirty` when tracked files differ from it, or "unknown" without git. */
export function buildInfo() {
  const version = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')).version;
  const head = process.env.DROPWIRE_COMMIT || git(['rev-parse', 'HEAD']);
  if (!head) return { version, commit: 'unknown' };
  const dirty = !process.env.DROPWIRE_COMMIT && (git(['status', '--porcelain', '--untracked-files=no']) ?? '') !== '';
  return { version, commit: dirty ? `${head}-dirty` : head };
}

/** Writes dist/version.json, which the tsc build reads at run time (src/shared/version.ts). */
export function writeVersionJson(dir = path.join(ROOT, 'dist')) {
  const info = buildInfo();
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'version.json'), JSON.stringify(info) + '\n');
  return info;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) writeVersionJson();
