import fs from 'node:fs';

/**
 * The version and the commit this dropwire was built from (`dropwire --version`, the agent's HELLO).
 * A release executable has them compiled in (esbuild `define`, scripts/release.mjs); the tsc build reads
 * dist/version.json, written by `npm run build` (scripts/build-info.mjs). Without either: the
 * package.json version and the commit "unknown".
 */
export interface BuildInfo {
  version: string;
  /** Full git commit hash (`-dirty` when built from a modified tree), or "unknown". */
  commit: string;
}

declare const __DROPWIRE_VERSION__: string | undefined;
declare const __DROPWIRE_COMMIT__: string | undefined;

let cached: BuildInfo | undefined;

function readJson(url: URL): Record<string, unknown> | undefined {
  try {
    return JSON.parse(fs.readFileSync(url, 'utf8')) as Record<string, unknown>;
  } catch {
    return undefined;
  }
}

export function buildInfo(): BuildInfo {
  if (cached) return cached;
  if (typeof __DROPWIRE_VERSION__ === 'string' && typeof __DROPWIRE_COMMIT__ === 'string') {
    return (cached = { version: __DROPWIRE_VERSION__, commit: __DROPWIRE_COMMIT__ });
  }
  // dist/src/shared/version.js → dist/version.json; package.json two or three levels up (src or dist).
  const written = readJson(new URL('../../version.json', import.meta.url));
  if (typeof written?.version === 'string' && typeof written.commit === 'string') return (cached = { version: written.version, commit: written.commit });
  const pkg = [new URL('../../../package.json', import.meta.url), new URL('../../package.json', import.meta.url)].map(readJson).find((p) => p?.name === 'dropwire');
  return (cached = { version: typeof pkg?.version === 'string' ? pkg.version : '0.0.0', commit: 'unknown' });
}

/** `dropwire 0.1.0 (commit 0123abcd…)`: what `--version` prints. */
export function versionLine(): string {
  const b = buildInfo();
  return `dropwire ${b.version} (commit ${b.commit})`;
}

/** The agent's product token in HELLO (PROTOCOL 7.3): `dropwire/0.1.0 (0123abcd4567)`. */
export function agentProduct(): string {
  const b = buildInfo();
  return `dropwire/${b.version} (${b.commit === 'unknown' ? 'unknown' : b.commit.slice(0, 12) + (b.commit.endsWith('-dirty') ? '-dirty' : '')})`;
}
