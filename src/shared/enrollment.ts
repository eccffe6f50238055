import { DropwireError } from './errors.js';

/**
 * The one line `relay device add` prints and `dropwire init` takes: `dw1.` + base64url(JSON). It carries
 * the relay addresses agents dial (one, or every node of a cluster), the relay's public key (pinned by the
 * agent), the device name, a one-time secret and its expiry.
 */
export interface EnrollmentToken {
  /** At least one address: `HOST:PORT` (TCP), or a `ws://` / `wss://` URL. */
  relays: string[];
  relayKey: string;
  name: string;
  secret: string;
  expiresAt: number;
}

const PREFIX = 'dw1.';

export function encodeEnrollmentToken(t: EnrollmentToken): string {
  if (t.relays.length === 0) throw new DropwireError('DW_BAD_TOKEN', 'an enrollment token needs at least one relay address');
  // PROTOCOL 3.11: `r` is one address as a string, several as an array.
  const r = t.relays.length === 1 ? t.relays[0] : t.relays;
  const json = JSON.stringify({ r, k: t.relayKey, n: t.name, s: t.secret, e: t.expiresAt });
  return PREFIX + Buffer.from(json).toString('base64url');
}

export function decodeEnrollmentToken(text: string): EnrollmentToken {
  const bad = (why: string) => new DropwireError('DW_BAD_TOKEN', `not a dropwire enrollment token: ${why}`);
  const s = text.trim();
  if (!s.startsWith(PREFIX)) throw bad(`it must start with ${PREFIX}`);
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(Buffer.from(s.slice(PREFIX.length), 'base64url').toString('utf8')) as Record<string, unknown>;
  } catch (err) {
    throw new DropwireError('DW_BAD_TOKEN', 'not a dropwire enrollment token: unreadable', { cause: err });
  }
  const str = (k: string) => {
    const v = o[k];
    if (typeof v !== 'string' || v.length === 0) throw bad(`field ${k}`);
    return v;
  };
  const e = o.e;
  if (typeof e !== 'number' || !Number.isSafeInteger(e)) throw bad('field e');
  const relayKey = str('k');
  if (!/^[0-9a-f]{64}$/.test(relayKey)) throw bad('relay key');
  const r = o.r;
  const relays = typeof r === 'string' ? [r] : Array.isArray(r) ? r : [];
  if (relays.length === 0 || relays.some((a) => typeof a !== 'string' || a.length === 0)) throw bad('field r');
  return { relays: relays as string[], relayKey, name: str('n'), secret: str('s'), expiresAt: e };
}

/** Parses HOST:PORT (IPv6 in brackets). */
export function parseHostPort(text: string, what = 'address'): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(text.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new DropwireError('DW_BAD_ADDRESS', `${what} must be HOST:PORT, got '${text}'`);
  return { host: m[1] ?? (m[2] || '0.0.0.0'), port };
}

export function formatHostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}
