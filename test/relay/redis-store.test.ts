import { basename } from 'node:path';
import { afterAll, beforeAll, describe } from 'vitest';
import { openRedisStore } from '../../src/relay/store/redis/index.js';
import { redisUnavailableReason, startRedis, type PrivateRedis } from '../helpers/redis.js';
import { eventContract, storeContract } from './store-contract.js';

const why = redisUnavailableReason();
if (why) console.log(`skipping the Redis store tests: ${why}`);

describe.skipIf(why !== undefined)('Redis store', () => {
  let server: PrivateRedis;
  beforeAll(async () => {
    server = await startRedis();
  }, 30_000);
  afterAll(async () => {
    await server?.dispose();
  });
  // Each test's temp dir names its own key prefix: tests share the server, never their keys.
  const open = (dir: string) =>
    openRedisStore({ target: { kind: 'server', host: server.host, port: server.port }, prefix: `t:${basename(dir)}:` });
  storeContract('redis', open);
  eventContract('redis', open);
});
