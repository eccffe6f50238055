import { Redis } from 'ioredis';
import { clientOptions } from '../store/redis/connection.js';
import { parseStoreUrl, redact } from '../store/open.js';
import { ClusterCode, ClusterError } from './errors.js';

/** The Redis a cluster `--store` URL names (store/open.ts reads every store URL); DW_BAD_STORE_URL for sqlite:. */
function redisUrl(url: string) {
  const loc = parseStoreUrl(url);
  if (loc.kind !== 'redis') throw new ClusterError(ClusterCode.BAD_STORE_URL, `a cluster needs Redis: --store ${redact(url)} is not a redis://, rediss:// or redis-sentinel:// URL`);
  return loc.redis;
}

/**
 * A connection for the cluster runtime, with the store's client settings: a command while Redis is away
 * fails at once (never a hang); reconnection and Sentinel failover are ioredis's job. A subscriber keeps its
 * subscriptions across reconnections.
 */
export async function openRedis(url: string, o: { subscriber?: boolean; name?: string } = {}): Promise<Redis> {
  const r = new Redis({
    ...clientOptions(redisUrl(url)),
    ...(o.subscriber ? { enableOfflineQueue: true, autoResendUnfulfilledCommands: true, commandTimeout: undefined } : {}),
    ...(o.name ? { connectionName: o.name } : {}),
  });
  r.on('error', () => {}); // reported through the commands that fail; ioredis reconnects by itself
  try {
    await r.connect();
  } catch (err) {
    r.disconnect();
    throw new ClusterError(ClusterCode.STORE_DOWN, `cannot reach Redis at ${redact(url)}: ${(err as Error).message}`, { cause: err });
  }
  return r;
}
