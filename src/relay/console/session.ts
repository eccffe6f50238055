import { createHmac, hkdfSync, randomBytes, timingSafeEqual } from 'node:crypto';
import type http from 'node:http';

/**
 * Console sessions without server state: the cookie carries who signed in and until when, signed with a
 * key derived from the relay's private key. Every node of a cluster holds the same key (the cluster's
 * relay.key), so a cookie made by one node is good on all of them. A session also ends as soon as its admin
 * token is removed (checked on every request) and, in the browser, on sign out.
 */

export const SESSION_COOKIE = 'dw_console';
/** How long a sign-in lasts. */
export const SESSION_TTL_MS = 12 * 3600_000;
/** Largest cookie value read (a signed session is ~200 bytes). */
const MAX_COOKIE = 1024;

export interface Session {
  /** The admin token's name and hash (a removed token ends its sessions). */
  token: string;
  hash: string;
  expiresAt: number;
  /** Random per sign-in: the CSRF token is derived from it. */
  nonce: string;
}

export class SessionKeys {
  private readonly key: Buffer;

  /** `secret`: the relay's private key (never leaves this process; only a derived key is used). */
  constructor(secret: Uint8Array) {
    this.key = Buffer.from(hkdfSync('sha256', secret, 'dropwire', 'console session v1', 32));
  }

  private mac(what: string): Buffer {
    return createHmac('sha256', this.key).update(what).digest();
  }

  issue(token: { name: string; hash: string }, now: number): { cookie: string; session: Session } {
    const session: Session = { token: token.name, hash: token.hash, expiresAt: now + SESSION_TTL_MS, nonce: randomBytes(16).toString('base64url') };
    const body = Buffer.from(JSON.stringify(session)).toString('base64url');
    return { cookie: `${body}.${this.mac(`session:${body}`).toString('base64url')}`, session };
  }

  /** The session a cookie value carries, when its signature is good and it has not expired. */
  verify(value: string | undefined, now: number): Session | undefined {
    if (!value || value.length > MAX_COOKIE) return undefined;
    const dot = value.indexOf('.');
    if (dot <= 0) return undefined;
    const body = value.slice(0, dot);
    const sig = Buffer.from(value.slice(dot + 1), 'base64url');
    const want = this.mac(`session:${body}`);
    if (sig.length !== want.length || !timingSafeEqual(sig, want)) return undefined;
    try {
      const s = JSON.parse(Buffer.from(body, 'base64url').toString('utf8')) as Session;
      if (typeof s.token !== 'string' || typeof s.hash !== 'string' || typeof s.nonce !== 'string' || typeof s.expiresAt !== 'number') return undefined;
      return s.expiresAt > now ? s : undefined;
    } catch {
      return undefined;
    }
  }

  /** The token every form of this session carries (double submit, bound to the session's nonce). */
  csrf(session: Session): string {
    return this.mac(`csrf:${session.nonce}`).toString('base64url');
  }

  checkCsrf(session: Session, given: string | undefined): boolean {
    if (!given) return false;
    const a = Buffer.from(given);
    const b = Buffer.from(this.csrf(session));
    return a.length === b.length && timingSafeEqual(a, b);
  }
}

/** One cookie's value from the Cookie header. */
export function readCookie(req: http.IncomingMessage, name: string): string | undefined {
  const header = req.headers.cookie;
  if (!header) return undefined;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return undefined;
}

export function sessionCookie(value: string, secure: boolean): string {
  return `${SESSION_COOKIE}=${value}; Path=/; HttpOnly; SameSite=Strict; Max-Age=${SESSION_TTL_MS / 1000}${secure ? '; Secure' : ''}`;
}

export function clearedCookie(secure: boolean): string {
  return `${SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0${secure ? '; Secure' : ''}`;
}

/**
 * A state-changing request must come from the console's own pages: the browser's Sec-Fetch-Site (when
 * sent) is same-origin, and Origin (when sent) names this very host. The scheme is not compared: behind a
 * TLS reverse proxy the browser's origin is https:// while the relay hears plain HTTP. Returns why not.
 */
export function crossSite(req: http.IncomingMessage): string | undefined {
  const site = req.headers['sec-fetch-site'];
  if (site !== undefined && site !== 'same-origin' && site !== 'none') return `Sec-Fetch-Site is ${String(site)}`;
  const origin = req.headers.origin;
  if (origin !== undefined) {
    const host = req.headers.host;
    const m = /^https?:\/\/([^/]+)$/.exec(origin);
    if (!host || !m || m[1]!.toLowerCase() !== host.toLowerCase()) return `Origin ${origin} is not this console`;
  }
  return undefined;
}

/** The browser reached the console over HTTPS: the relay's own TLS, or a reverse proxy that says so. */
export function overHttps(req: http.IncomingMessage, relayTls: boolean): boolean {
  return relayTls || req.headers['x-forwarded-proto'] === 'https';
}
