import { DropwireError } from '../shared/errors.js';
import { formatHostPort, parseHostPort } from '../shared/enrollment.js';
import { CONNECT_PATH } from './websocket.js';

/** A relay address: `HOST:PORT` (TCP), or a `ws://` / `wss://` URL of the relay's /v1/connect. */
export type RelayAddress =
  | { kind: 'tcp'; text: string; host: string; port: number }
  | { kind: 'ws' | 'wss'; text: string; host: string; port: number; url: string };

export type TransportMode = 'tcp' | 'wss' | 'auto';
export const TRANSPORT_MODES: readonly TransportMode[] = ['tcp', 'wss', 'auto'];

/** The port the automatic WSS fallback dials when the list has no WebSocket URL for a host. */
export const FALLBACK_WSS_PORT = 443;

export function parseRelayAddress(text: string, what = 'relay'): RelayAddress {
  const t = text.trim();
  if (/^wss?:\/\//i.test(t)) {
    let u: URL;
    try {
      u = new URL(t);
    } catch (err) {
      throw new DropwireError('DW_BAD_ADDRESS', `${what} '${t}' is not a valid URL`, { cause: err });
    }
    if (u.hash || u.username || u.password) throw new DropwireError('DW_BAD_ADDRESS', `${what} '${t}' must not carry a fragment or credentials`);
    const kind = u.protocol === 'wss:' ? 'wss' : 'ws';
    const host = u.hostname.replace(/^\[|\]$/g, '');
    if (!host) throw new DropwireError('DW_BAD_ADDRESS', `${what} '${t}' has no host`);
    const port = Number(u.port) || (kind === 'wss' ? 443 : 80);
    return { kind, text: u.href, host, port, url: u.href };
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(t)) {
    throw new DropwireError('DW_BAD_ADDRESS', `${what} must be HOST:PORT, wss://HOST[:PORT]${CONNECT_PATH} or ws://…, got '${t}'`);
  }
  const { host, port } = parseHostPort(t, what);
  return { kind: 'tcp', text: formatHostPort(host, port), host, port };
}

/** `--relay a,b,c`, or a list already split (config, token). Empty entries are ignored; none left is an error. */
export function parseRelayList(input: string | readonly string[], what = 'relay'): RelayAddress[] {
  const items = (typeof input === 'string' ? input.split(',') : input.flatMap((s) => s.split(','))).map((s) => s.trim()).filter(Boolean);
  if (items.length === 0) throw new DropwireError('DW_BAD_ADDRESS', `${what}: no address given`);
  return items.map((s) => parseRelayAddress(s, what));
}

export function parseTransportMode(text: string | undefined): TransportMode {
  const t = (text ?? 'auto').trim().toLowerCase();
  if (!(TRANSPORT_MODES as readonly string[]).includes(t)) throw new DropwireError('DW_BAD_TRANSPORT', `transport must be tcp, wss or auto, got '${text}'`);
  return t as TransportMode;
}

/** The WSS URL the automatic fallback tries for a TCP address: the same host on port 443. */
export function fallbackWss(a: RelayAddress): RelayAddress {
  const host = a.host.includes(':') ? `[${a.host}]` : a.host;
  return parseRelayAddress(`wss://${host}${a.kind === 'wss' && a.port !== FALLBACK_WSS_PORT ? `:${a.port}` : ''}${CONNECT_PATH}`);
}

/**
 * The order in which to try the addresses (PROTOCOL 11.5): the configured list shuffled (so a cluster's
 * agents spread over its nodes); in `auto` mode, per host, its TCP address first and then its WebSocket
 * URL, or the WSS fallback on port 443 when the list has none for that host; `tcp` keeps the TCP addresses, `wss` the WebSocket ones
 * (a TCP address standing for wss://HOST/v1/connect when the list has no URL for its host). The address that worked last time comes first.
 */
export function candidates(list: readonly RelayAddress[], mode: TransportMode, o: { preferred?: string | undefined; random?: () => number } = {}): RelayAddress[] {
  const random = o.random ?? Math.random;
  const shuffled = [...list];
  for (let i = shuffled.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [shuffled[i], shuffled[j]] = [shuffled[j]!, shuffled[i]!];
  }
  const wsHosts = new Set(list.filter((a) => a.kind !== 'tcp').map((a) => a.host.toLowerCase()));
  const out: RelayAddress[] = [];
  const add = (a: RelayAddress) => {
    if (!out.some((b) => b.text === a.text)) out.push(a);
  };
  for (const a of shuffled) {
    if (mode === 'tcp') {
      if (a.kind === 'tcp') add(a);
    } else if (mode === 'wss') {
      if (a.kind !== 'tcp') add(a);
      else if (!wsHosts.has(a.host.toLowerCase())) add(fallbackWss(a));
    } else {
      add(a);
      if (a.kind === 'tcp' && !wsHosts.has(a.host.toLowerCase())) add(fallbackWss(a));
    }
  }
  if (mode === 'auto') {
    // Per host, TCP first and then WebSocket (the fallback is for networks that let only HTTPS out); the
    // hosts stay in their shuffled order, so a node that is down costs one refused dial, not a timeout each.
    const hosts = [...new Set(out.map((a) => a.host.toLowerCase()))];
    const rank = (a: RelayAddress) => hosts.indexOf(a.host.toLowerCase()) * 2 + Number(a.kind !== 'tcp');
    out.sort((x, y) => rank(x) - rank(y));
  }
  if (out.length === 0) throw new DropwireError('DW_BAD_ADDRESS', `no relay address can be used with --transport ${mode}`);
  const i = o.preferred ? out.findIndex((a) => a.text === o.preferred) : -1;
  if (i > 0) out.unshift(...out.splice(i, 1));
  return out;
}
