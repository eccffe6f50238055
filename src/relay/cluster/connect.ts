import { Redis, type RedisOptions } from 'ioredis';
import { ClusterCode, ClusterError } from './errors.js';

/**
 * `--store` URLs of a Redis-backed relay, as ioredis options:
 *   redis://[[user]:password@]HOST:PORT[/DB]          plain TCP
 *   rediss://…                                         TLS
 *   redis-sentinel://[[user]:password@]H1:P1,H2:P2/MASTER[/DB]   Sentinel (ioredis follows failovers)
 */
export function redisOptions(url: string): RedisOptions {
  const bad = (why: string) => new ClusterError(ClusterCode.BAD_STORE_URL, `--store ${redact(url)}: ${why}`);
  const m = /^(redis|rediss|redis-sentinel):\/\/(?:([^:@/]*)(?::([^@/]*))?@)?([^/?#]+)(?:\/([^?#]*))?$/.exec(url.trim());
  if (!m) throw bad('expected redis://HOST:PORT[/DB], rediss://… or redis-sentinel://H1:P1,H2:P2/MASTER[/DB]');
  const [, scheme, user, password, hosts, rest] = m;
  const auth = { ...(user ? { username: decodeURIComponent(user) } : {}), ...(password ? { password: decodeURIComponent(password) } : {}) };
  const addrs = hosts!.split(',').map((h) => {
    const a = /^(?:\[([^\]]+)\]|([^:]+))(?::(\d{1,5}))?$/.exec(h);
    if (!a) throw bad(`bad address '${h}'`);
    return { host: a[1] ?? a[2]!, port: a[3] ? Number(a[3]) : scheme === 'redis-sentinel' ? 26379 : 6379 };
  });
  const path = (rest ?? '').split('/').filter(Boolean);
  const db = (s: string | undefined) => {
    if (s === undefined) return 0;
    if (!/^\d{1,2}$/.test(s)) throw bad(`database must be a number, got '${s}'`);
    return Number(s);
  };
  if (scheme === 'redis-sentinel') {
    if (path.length < 1 || path.length > 2) throw bad('a Sentinel URL names the master: redis-sentinel://H1:P1,H2:P2/MASTER[/DB]');
    return { sentinels: addrs, name: path[0]!, db: db(path[1]), ...auth, ...(password ? { sentinelPassword: decodeURIComponent(password) } : {}) };
  }
  if (addrs.length !== 1) throw bad('several addresses need redis-sentinel://');
  if (path.length > 1) throw bad('expected at most one path part (the database number)');
  return { ...addrs[0]!, db: db(path[0]), ...auth, ...(scheme === 'rediss' ? { tls: { servername: addrs[0]!.host } } : {}) };
}

/** The URL without its password, for messages and logs. */
export function redact(url: string): string {
  return url.replace(/\/\/([^:@/]*):[^@/]*@/, '//$1:***@');
}

/**
 * A connection for the cluster runtime. It never queues a command while Redis is away (a caller is told at
 * once, instead of hanging); reconnection and Sentinel failover are ioredis's job.
 */
export function connectRedis(url: string, o: { subscriber?: boolean; name?: string } = {}): Redis {
  return new Redis({
    ...redisOptions(url),
    lazyConnect: true,
    enableOfflineQueue: o.subscriber === true, // a subscriber re-subscribes itself after a reconnect
    maxRetriesPerRequest: 1,
    connectTimeout: 2_000,
    commandTimeout: o.subscriber ? undefined : 5_000,
    retryStrategy: (n) => Math.min(50 * 2 ** Math.min(n, 5), 1_000),
    ...(o.name ? { connectionName: o.name } : {}),
  } as RedisOptions);
}

/** Connects, or fails with DW_STORE_DOWN naming the URL (without its password). */
export async function openRedis(url: string, o: { subscriber?: boolean; name?: string } = {}): Promise<Redis> {
  const r = connectRedis(url, o);
  r.on('error', () => {}); // reported through the commands that fail; ioredis reconnects by itself
  try {
    await r.connect();
  } catch (err) {
    r.disconnect();
    throw new ClusterError(ClusterCode.STORE_DOWN, `cannot reach Redis at ${redact(url)}: ${(err as Error).message}`, { cause: err });
  }
  return r;
}
