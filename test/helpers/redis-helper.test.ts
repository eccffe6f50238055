import { describe, expect, it, onTestFinished } from 'vitest';
import { Redis } from 'ioredis';
import { redisUnavailableReason, startRedis } from './redis.js';

const why = redisUnavailableReason();
if (why) console.log(`skipping the private redis-server test: ${why}`);

describe.skipIf(why !== undefined)('private redis-server', () => {
  it('keeps an appendfsync-always write across a SIGKILL and restart', async () => {
    const r = await startRedis();
    onTestFinished(() => r.dispose());
    const c = new Redis({ host: r.host, port: r.port, lazyConnect: true, maxRetriesPerRequest: 1, retryStrategy: () => 100 });
    onTestFinished(() => void c.disconnect());
    await c.connect();
    expect(await c.config('GET', 'appendfsync')).toEqual(['appendfsync', 'always']);
    await c.set('k', 'v');
    await r.kill();
    expect(r.pid()).toBeUndefined();
    await r.restart();
    const d = new Redis({ host: r.host, port: r.port });
    onTestFinished(() => void d.disconnect());
    expect(await d.get('k')).toBe('v');
  });
});
