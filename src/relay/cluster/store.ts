import type { Logger } from '../../shared/log.js';
import { openStore } from '../store/open.js';
import type { RedisStore } from '../store/redis/index.js';
import { ClusterCode, ClusterError } from './errors.js';

/** The Redis store of a cluster, from the node's `--store` URL (durability checked: DW_STORE_UNSAFE). */
export async function openClusterStore(url: string, o: { unsafe: boolean; replicas: number; log?: Logger }): Promise<RedisStore> {
  const store = await openStore(url, { unsafe: o.unsafe, replicas: o.replicas, ...(o.log ? { log: o.log } : {}) });
  if (!('wakeups' in store)) {
    await store.close();
    throw new ClusterError(ClusterCode.BAD_STORE_URL, 'a cluster needs a Redis store');
  }
  return store;
}
