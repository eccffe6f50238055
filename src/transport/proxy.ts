import http from 'node:http';
import https from 'node:https';
import type net from 'node:net';
import { DropwireError } from '../shared/errors.js';

/**
 * HTTP(S) proxies for the WebSocket transport: the proxy to use for a relay URL (`--proxy`, else
 * HTTPS_PROXY / https_proxy for wss and HTTP_PROXY / http_proxy for ws, unless NO_PROXY names the host),
 * and a CONNECT tunnel through it. Basic authentication comes from the proxy URL's user and password.
 * The tunnel carries TLS (wss) or the plain upgrade (ws); the relay key pin authenticates the relay
 * inside it either way.
 */

export class ProxyError extends DropwireError {}

/** The proxy for `target` (a ws:// or wss:// URL), or undefined to connect directly. */
export function proxyFor(target: URL, explicit: string | undefined, env: NodeJS.ProcessEnv = process.env): URL | undefined {
  const fromEnv = target.protocol === 'wss:' ? (env.HTTPS_PROXY ?? env.https_proxy) : (env.HTTP_PROXY ?? env.http_proxy);
  const chosen = explicit ?? fromEnv;
  if (!chosen) return undefined;
  if (explicit === undefined && bypassed(target, env.NO_PROXY ?? env.no_proxy ?? '')) return undefined;
  return parseProxyUrl(chosen);
}

export function parseProxyUrl(text: string): URL {
  let u: URL;
  try {
    u = new URL(/^[a-z][a-z0-9+.-]*:\/\//i.test(text) ? text : `http://${text}`);
  } catch (err) {
    throw new ProxyError('DW_BAD_PROXY', `proxy must be a URL like http://[user:password@]host:port, got '${redact(text)}'`, { cause: err });
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new ProxyError('DW_BAD_PROXY', `proxy must be an http:// or https:// URL, got '${redact(text)}'`);
  return u;
}

/** NO_PROXY: comma-separated host names, domain suffixes (`.example.com` or `example.com`), `host:port`, or `*`. */
export function bypassed(target: URL, noProxy: string): boolean {
  const host = target.hostname.replace(/^\[|\]$/g, '').toLowerCase();
  const port = target.port || (target.protocol === 'wss:' ? '443' : '80');
  for (const raw of noProxy.split(/[,\s]+/)) {
    const entry = raw.trim().toLowerCase();
    if (!entry) continue;
    if (entry === '*') return true;
    const m = /^(\[[^\]]+\]|[^:]+)(?::(\d+))?$/.exec(entry);
    if (!m) continue;
    const name = m[1]!.replace(/^\[|\]$/g, '').replace(/^\*?\./, '');
    if (m[2] && m[2] !== port) continue;
    if (host === name || host.endsWith(`.${name}`)) return true;
  }
  return false;
}

/** The proxy URL without its password, for logs and status. */
export function redact(text: string | URL): string {
  try {
    const u = new URL(text.toString());
    if (u.password) u.password = '***';
    return u.origin === 'null' ? u.href : `${u.protocol}//${u.username ? `${u.username}${u.password ? ':***' : ''}@` : ''}${u.host}`;
  } catch {
    return '(unreadable proxy URL)';
  }
}

/**
 * Opens a CONNECT tunnel to `host:port` through `proxy`. 407 (or 401) is DW_PROXY_AUTH (wrong or missing
 * credentials), any other refusal DW_PROXY_REFUSED, no answer in time DW_PROXY_TIMEOUT.
 */
export function connectTunnel(proxy: URL, host: string, port: number, o: { timeoutMs: number; ca?: string[] | undefined; signal?: AbortSignal | undefined }): Promise<net.Socket> {
  const authority = host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
  const headers: Record<string, string> = { host: authority };
  if (proxy.username || proxy.password) {
    const user = decodeURIComponent(proxy.username);
    const pass = decodeURIComponent(proxy.password);
    headers['proxy-authorization'] = `Basic ${Buffer.from(`${user}:${pass}`).toString('base64')}`;
  }
  const secure = proxy.protocol === 'https:';
  const where = redact(proxy);
  return new Promise((resolve, reject) => {
    const req = (secure ? https : http).request({
      host: proxy.hostname.replace(/^\[|\]$/g, ''),
      port: Number(proxy.port) || (secure ? 443 : 80),
      method: 'CONNECT',
      path: authority,
      headers,
      agent: false,
      ...(secure && o.ca ? { ca: o.ca } : {}),
    });
    let settled = false;
    const settle = (err: Error | undefined, socket?: net.Socket) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      o.signal?.removeEventListener('abort', onAbort);
      if (err) {
        req.destroy();
        reject(err);
      } else resolve(socket!);
    };
    const timer = setTimeout(() => settle(new ProxyError('DW_PROXY_TIMEOUT', `the proxy ${where} did not open a tunnel to ${authority} within ${o.timeoutMs} ms`)), o.timeoutMs);
    const onAbort = () => settle(new ProxyError('DW_PROXY_TIMEOUT', 'cancelled'));
    o.signal?.addEventListener('abort', onAbort, { once: true });
    req.once('connect', (res: http.IncomingMessage, socket: net.Socket, head: Buffer) => {
      if (res.statusCode === 200) {
        if (head.length > 0) socket.unshift(head);
        socket.setTimeout(0);
        settle(undefined, socket);
        return;
      }
      socket.destroy();
      // 407 is the standard answer; some proxies (tinyproxy) answer CONNECT with 401.
      if (res.statusCode === 407 || res.statusCode === 401) {
        const why = headers['proxy-authorization'] ? 'refused the user name and password in the proxy URL' : 'asks for a user name and password (put them in the proxy URL: http://user:password@host:port)';
        settle(new ProxyError('DW_PROXY_AUTH', `the proxy ${where} ${why} (HTTP ${res.statusCode})`));
      } else {
        settle(new ProxyError('DW_PROXY_REFUSED', `the proxy ${where} refused a tunnel to ${authority} (HTTP ${res.statusCode} ${res.statusMessage ?? ''})`.trim()));
      }
    });
    req.once('response', (res: http.IncomingMessage) => {
      res.resume();
      settle(new ProxyError('DW_PROXY_REFUSED', `the proxy ${where} answered HTTP ${res.statusCode} to CONNECT`));
    });
    req.once('error', (err) => settle(new ProxyError('DW_PROXY_UNREACHABLE', `cannot reach the proxy ${where}: ${err.message}`, { cause: err })));
    req.end();
  });
}
