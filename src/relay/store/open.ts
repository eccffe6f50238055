/**
 * Opening a store from what an operator wrote: `--store URL` (or the DROPWIRE_STORE variable), or the
 * SQLite file of a data folder. The one place store URLs are read:
 *
 *   redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]          a Redis server (port 6379)
 *   rediss://…                                          the same over TLS
 *   redis-sentinel://[[USER]:PASSWORD@]H1[:P1],H2[:P2]/MASTERNAME[/DB]
 *                                                       the primary the sentinels name (port 26379)
 *   sqlite:PATH                                         a SQLite file (what `{ sqlitePath }` opens)
 */
import { DropwireError } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';
import { openRedisStore, type RedisStore } from './redis/index.js';
import type { RedisTarget } from './redis/connection.js';
import { openSqliteStore, type SqliteStore } from './sqlite/index.js';
import { StoreErrorCode } from './types.js';

/** The environment variable that may stand in for `--store`. */
export const STORE_ENV = 'DROPWIRE_STORE';

export interface RedisUrl {
  target: RedisTarget;
  db?: number;
  username?: string;
  password?: string;
}

export type StoreLocation = { kind: 'redis'; redis: RedisUrl } | { kind: 'sqlite'; path: string };

export interface OpenStoreOptions {
  /** Redis: accept a server that does not fsync every write (logs a warning). */
  unsafe?: boolean;
  /** Redis: each write waits for this many replicas (WAIT). */
  replicas?: number;
  replicaTimeoutMs?: number;
  commandTimeoutMs?: number;
  connectTimeoutMs?: number;
  /** Redis over TLS: PEM of a private CA that signed the server's certificate. */
  tlsCa?: string | Buffer;
  /** Redis: key prefix (default `dw:`). */
  prefix?: string;
  /** Redis: how long large bodies stay after their message ended. */
  bodyRetentionMs?: number;
  log?: Logger;
  /** SQLite: clock for its bookkeeping. */
  now?: () => number;
}

function badUrl(url: string, why: string): DropwireError {
  return new DropwireError(StoreErrorCode.URL, `store URL ${redact(url)}: ${why}`);
}

/** The URL with its password hidden, for messages and logs. */
export function redact(url: string): string {
  return url.replace(/^([a-z-]+:\/\/)([^@/]*)@/i, (_m, scheme: string, auth: string) => `${scheme}${auth.includes(':') ? auth.slice(0, auth.indexOf(':') + 1) + '***' : '***'}@`);
}

function hostPort(spec: string, defaultPort: number, url: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+))(?::(\d{1,5}))?$/.exec(spec);
  if (!m) throw badUrl(url, `"${spec}" is not HOST[:PORT]`);
  const port = m[3] !== undefined ? Number(m[3]) : defaultPort;
  if (port < 1 || port > 65_535) throw badUrl(url, `port ${port} out of range`);
  return { host: (m[1] ?? m[2])!, port };
}

function dbNumber(text: string | undefined, url: string): number | undefined {
  if (text === undefined || text === '') return undefined;
  if (!/^\d{1,5}$/.test(text)) throw badUrl(url, `database "${text}" is not a number`);
  return Number(text);
}

function decode(text: string, url: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    throw badUrl(url, 'bad percent-encoding in the credentials');
  }
}

/** Reads a store URL; DW_STORE_URL when it is not one of the forms above. */
export function parseStoreUrl(url: string): StoreLocation {
  if (url.startsWith('sqlite:')) {
    const path = url.slice('sqlite:'.length).replace(/^\/\/(?=\/)/, '');
    if (!path) throw badUrl(url, 'no file path');
    return { kind: 'sqlite', path };
  }
  const m = /^(redis|rediss|redis-sentinel):\/\/(?:([^@/]*)@)?([^/?#]+)(?:\/([^?#]*))?$/i.exec(url);
  if (!m) throw badUrl(url, 'expected redis://HOST:PORT[/DB], rediss://…, redis-sentinel://H1:P1,H2:P2/MASTERNAME or sqlite:PATH');
  const scheme = m[1]!.toLowerCase();
  const auth = m[2];
  const hosts = m[3]!;
  const path = m[4] ?? '';
  let username: string | undefined;
  let password: string | undefined;
  if (auth !== undefined && auth !== '') {
    const colon = auth.indexOf(':');
    if (colon < 0) password = decode(auth, url); // redis://PASSWORD@host, as redis-cli takes it
    else {
      username = decode(auth.slice(0, colon), url) || undefined;
      password = decode(auth.slice(colon + 1), url);
    }
  }
  const creds = { ...(username !== undefined ? { username } : {}), ...(password !== undefined ? { password } : {}) };
  if (scheme === 'redis-sentinel') {
    const [name, db, ...extra] = path.split('/');
    if (!name) throw badUrl(url, 'the master name is missing (redis-sentinel://H1:P1,H2:P2/MASTERNAME)');
    if (extra.length > 0) throw badUrl(url, 'too many path parts');
    const sentinels = hosts.split(',').map((h) => hostPort(h.trim(), 26_379, url));
    const dbn = dbNumber(db, url);
    return { kind: 'redis', redis: { target: { kind: 'sentinel', sentinels, name: decode(name, url) }, ...(dbn !== undefined ? { db: dbn } : {}), ...creds } };
  }
  if (hosts.includes(',')) throw badUrl(url, 'several hosts need redis-sentinel://');
  const { host, port } = hostPort(hosts, 6_379, url);
  const dbn = dbNumber(path.replace(/\/$/, ''), url);
  return {
    kind: 'redis',
    redis: { target: { kind: 'server', host, port, ...(scheme === 'rediss' ? { tls: true } : {}) }, ...(dbn !== undefined ? { db: dbn } : {}), ...creds },
  };
}

/** `--store` when given, else DROPWIRE_STORE, else undefined (the data folder's SQLite file). */
export function storeUrlFrom(flag: string | undefined, env: NodeJS.ProcessEnv = process.env): string | undefined {
  const v = flag ?? env[STORE_ENV];
  return v === undefined || v.trim() === '' ? undefined : v.trim();
}

/** Opens the store a URL (or a SQLite file) names. */
export async function openStore(where: string | { sqlitePath: string }, options: OpenStoreOptions = {}): Promise<RedisStore | SqliteStore> {
  const loc: StoreLocation = typeof where === 'string' ? parseStoreUrl(where) : { kind: 'sqlite', path: where.sqlitePath };
  if (loc.kind === 'sqlite') return openSqliteStore({ path: loc.path, ...(options.now ? { now: options.now } : {}) });
  return openRedisStore({ ...loc.redis, ...options });
}
