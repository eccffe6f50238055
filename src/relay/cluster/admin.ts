import type { Redis } from 'ioredis';
import type { Store } from '../store/types.js';
import { envelope } from './bus.js';
import { requireClusterConfig, type ClusterConfig } from './config.js';
import { openRedis } from './connect.js';
import { channels } from './keys.js';
import { openClusterStore } from './store.js';

/** What the admin commands (`relay device|token … --store`) work with, from any machine. */
export interface ClusterAdmin {
  store: Store;
  config: ClusterConfig;
  /** Tells every node to drop a removed device's session at once. */
  dropEverywhere(device: string): Promise<void>;
}

export async function withClusterAdmin<T>(url: string, fn: (a: ClusterAdmin) => Promise<T>): Promise<T> {
  const redis: Redis = await openRedis(url, { name: 'dropwire:admin' });
  try {
    const config = await requireClusterConfig(redis);
    // The nodes check Redis's durability at start; an admin command only reads and writes through it.
    const store = await openClusterStore(url, { unsafe: true, replicas: 0 });
    try {
      return await fn({
        store,
        config,
        dropEverywhere: async (device) => {
          await redis.publish(channels.all, envelope('admin', { t: 'drop', device }));
        },
      });
    } finally {
      await store.close();
    }
  } finally {
    redis.disconnect();
  }
}
