import type http from 'node:http';
import { describe, expect, it } from 'vitest';
import { crossSite, SESSION_TTL_MS, SessionKeys } from '../../src/relay/console/session.js';
import { esc } from '../../src/relay/console/pages.js';

const key = (b: number) => new Uint8Array(32).fill(b);
const req = (headers: Record<string, string>) => ({ headers }) as unknown as http.IncomingMessage;

describe('console sessions', () => {
  it('a cookie verifies with the same relay key (every node of a cluster), not with another, nor tampered, nor expired', () => {
    const a = new SessionKeys(key(1));
    const { cookie, session } = a.issue({ name: 'ops', hash: 'ab'.repeat(32) }, 1_000);
    expect(new SessionKeys(key(1)).verify(cookie, 2_000)).toEqual(session);
    expect(new SessionKeys(key(2)).verify(cookie, 2_000)).toBeUndefined();
    expect(a.verify(cookie, 1_000 + SESSION_TTL_MS)).toBeUndefined();
    const [body, sig] = cookie.split('.') as [string, string];
    const forged = Buffer.from(JSON.stringify({ ...session, token: 'root' })).toString('base64url');
    expect(a.verify(`${forged}.${sig}`, 2_000)).toBeUndefined();
    expect(a.verify(`${body}.${sig.slice(0, -2)}`, 2_000)).toBeUndefined();
    expect(a.verify('', 2_000)).toBeUndefined();
    expect(a.verify('x'.repeat(5_000), 2_000)).toBeUndefined();
  });

  it('the CSRF token belongs to one sign-in', () => {
    const a = new SessionKeys(key(1));
    const one = a.issue({ name: 'ops', hash: 'h' }, 1).session;
    const two = a.issue({ name: 'ops', hash: 'h' }, 1).session;
    expect(a.checkCsrf(one, a.csrf(one))).toBe(true);
    expect(a.checkCsrf(two, a.csrf(one))).toBe(false);
    expect(a.checkCsrf(one, undefined)).toBe(false);
    expect(a.checkCsrf(one, 'short')).toBe(false);
  });

  it('refuses requests from another site by Sec-Fetch-Site or Origin', () => {
    expect(crossSite(req({ host: 'r:7391', origin: 'http://r:7391', 'sec-fetch-site': 'same-origin' }))).toBeUndefined();
    expect(crossSite(req({ host: 'r:7391' }))).toBeUndefined(); // curl: neither header
    expect(crossSite(req({ host: 'relay.example', origin: 'https://relay.example' }))).toBeUndefined(); // behind a TLS proxy
    expect(crossSite(req({ host: 'r:7391', 'sec-fetch-site': 'same-site' }))).toMatch(/same-site/);
    expect(crossSite(req({ host: 'r:7391', 'sec-fetch-site': 'cross-site' }))).toMatch(/cross-site/);
    expect(crossSite(req({ host: 'r:7391', origin: 'http://evil.example' }))).toMatch(/evil/);
    expect(crossSite(req({ host: 'r:7391', origin: 'http://r:7391.evil.example' }))).toMatch(/not this console/);
    expect(crossSite(req({ host: 'r:7391', origin: 'null' }))).toMatch(/not this console/);
  });

  it('escapes what it puts in pages', () => {
    expect(esc(`<img src=x onerror="a('b')">&`)).toBe('&lt;img src=x onerror=&quot;a(&#39;b&#39;)&quot;&gt;&amp;');
  });
});
