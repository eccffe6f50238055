import { describe, expect, it } from 'vitest';
import { parseStoreUrl, redact, storeUrlFrom } from '../../src/relay/store/open.js';

describe('store URLs', () => {
  it('reads a Redis server, with database, credentials and TLS', () => {
    expect(parseStoreUrl('redis://127.0.0.1:6380/2')).toEqual({
      kind: 'redis',
      redis: { target: { kind: 'server', host: '127.0.0.1', port: 6380 }, db: 2 },
    });
    expect(parseStoreUrl('redis://redis.lan')).toEqual({ kind: 'redis', redis: { target: { kind: 'server', host: 'redis.lan', port: 6379 } } });
    expect(parseStoreUrl('rediss://:s%40cret@[::1]:6390')).toEqual({
      kind: 'redis',
      redis: { target: { kind: 'server', host: '::1', port: 6390, tls: true }, password: 's@cret' },
    });
    expect(parseStoreUrl('redis://relay:pw@h:1/0')).toMatchObject({ redis: { username: 'relay', password: 'pw', db: 0 } });
    expect(parseStoreUrl('redis://pw@h')).toMatchObject({ redis: { password: 'pw' } });
  });

  it('reads a Sentinel list and master name', () => {
    expect(parseStoreUrl('redis-sentinel://:pw@10.0.0.1:26379,10.0.0.2,10.0.0.3:26380/mymaster/3')).toEqual({
      kind: 'redis',
      redis: {
        target: {
          kind: 'sentinel',
          name: 'mymaster',
          sentinels: [
            { host: '10.0.0.1', port: 26379 },
            { host: '10.0.0.2', port: 26379 },
            { host: '10.0.0.3', port: 26380 },
          ],
        },
        db: 3,
        password: 'pw',
      },
    });
  });

  it('reads a SQLite path', () => {
    expect(parseStoreUrl('sqlite:/var/lib/dropwire/relay.db')).toEqual({ kind: 'sqlite', path: '/var/lib/dropwire/relay.db' });
  });

  it('refuses what it cannot read, with DW_STORE_URL and without echoing the password', () => {
    for (const bad of [
      'http://h:1',
      'redis://',
      'redis://h:99999',
      'redis://h:1/x',
      'redis://a:1,b:2',
      'redis-sentinel://h:1',
      'redis-sentinel://h:1/m/1/2',
      'sqlite:',
      'redis://:p%zz@h',
    ]) {
      expect(() => parseStoreUrl(bad), bad).toThrow(expect.objectContaining({ code: 'DW_STORE_URL' }));
    }
    try {
      parseStoreUrl('redis://u:topsecret@h:1/x');
    } catch (err) {
      expect((err as Error).message).not.toContain('topsecret');
    }
    expect(redact('redis://u:topsecret@h')).toBe('redis://u:***@h');
  });

  it('takes --store first, then DROPWIRE_STORE', () => {
    expect(storeUrlFrom('redis://a', { DROPWIRE_STORE: 'redis://b' })).toBe('redis://a');
    expect(storeUrlFrom(undefined, { DROPWIRE_STORE: 'redis://b' })).toBe('redis://b');
    expect(storeUrlFrom(undefined, { DROPWIRE_STORE: ' ' })).toBeUndefined();
    expect(storeUrlFrom(undefined, {})).toBeUndefined();
  });
});
