import type { KeyPair } from '../../protocol/crypto.js';
import type { Logger } from '../../shared/log.js';
import type { BodyStorage } from '../body-storage.js';
import { RedisBodies } from '../store/redis/bodies.js';
import type { RedisStore } from '../store/redis/index.js';
import { checkNodeKey } from './config.js';
import { ClusterNode } from './node.js';
import { openClusterStore } from './store.js';

/**
 * What `relay start --store` needs before the relay's parts are made: the cluster (refusing a database
 * without one, DW_CLUSTER_NOT_INITIALISED), the node's key checked against the cluster's
 * (DW_CLUSTER_KEY_MISMATCH), and the Redis store (durability checked, DW_STORE_UNSAFE).
 */
export async function startClusterNode(o: {
  store: string;
  keyFile: string;
  node: string;
  unsafeRedis?: boolean;
  redisReplicas?: number;
  log: Logger;
}): Promise<{ cluster: ClusterNode; store: RedisStore; keys: KeyPair; bodies: BodyStorage }> {
  const cluster = await ClusterNode.open({ url: o.store, node: o.node, log: o.log });
  try {
    const keys = checkNodeKey(cluster.config, o.keyFile);
    const store = await openClusterStore(o.store, { unsafe: o.unsafeRedis === true, replicas: o.redisReplicas ?? 0, log: o.log });
    // Large bodies in Redis, where every node reads them.
    return { cluster, store, keys, bodies: new RedisBodies(store) };
  } catch (err) {
    await cluster.close();
    throw err;
  }
}
