import type { Logger } from '../../shared/log.js';
import { openRedisStore, type RedisStore } from '../store/redis/index.js';
import type { RedisTarget } from '../store/redis/connection.js';
import { redisOptions } from './connect.js';

/** The Redis store of a cluster, from the node's `--store` URL. */
export async function openClusterStore(url: string, o: { unsafe: boolean; replicas: number; log?: Logger }): Promise<RedisStore> {
  const r = redisOptions(url);
  const target: RedisTarget = r.sentinels
    ? { kind: 'sentinel', sentinels: r.sentinels.map((s) => ({ host: s.host!, port: s.port! })), name: r.name! }
    : { kind: 'server', host: r.host!, port: r.port!, ...(r.tls ? { tls: true } : {}) };
  return openRedisStore({
    target,
    ...(r.db ? { db: r.db } : {}),
    ...(r.username ? { username: r.username } : {}),
    ...(r.password ? { password: r.password } : {}),
    unsafe: o.unsafe,
    replicas: o.replicas,
    ...(o.log ? { log: o.log } : {}),
  });
}
