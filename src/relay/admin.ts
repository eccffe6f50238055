import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import { toHex } from '../protocol/bytes.js';
import { encodeEnrollmentToken } from '../shared/enrollment.js';
import { DropwireError } from '../shared/errors.js';
import { loadOrCreateKeyPair } from '../transport/identity.js';
import { tokenHash } from './http.js';
import { adminToken, relayPaths, type RelayInfo } from './relay.js';
import { openSqliteStore } from './store/sqlite.js';
import type { DeviceRecord, Store, TokenRecord } from './store/types.js';

/** Operator actions on a relay's data folder; they work whether the relay runs or not (SQLite WAL). */

export const DEFAULT_ENROLL_TTL_H = 24;
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

function checkName(kind: string, name: string): void {
  if (!NAME.test(name)) throw new DropwireError('DW_BAD_NAME', `${kind} name must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit`);
}

export function runningRelay(dataDir: string): RelayInfo | undefined {
  try {
    const info = JSON.parse(fs.readFileSync(relayPaths(dataDir).info, 'utf8')) as RelayInfo;
    process.kill(info.pid, 0);
    return info;
  } catch {
    return undefined;
  }
}

async function withStore<T>(dataDir: string, fn: (s: Store) => Promise<T>): Promise<T> {
  fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const store = await openSqliteStore({ path: relayPaths(dataDir).db });
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}

export async function addDevice(dataDir: string, name: string, o: { public?: string; ttlHours?: number } = {}): Promise<string> {
  checkName('device', name);
  const info = runningRelay(dataDir);
  const relay = o.public ?? info?.public;
  if (!relay) throw new DropwireError('DW_NO_ADDRESS', 'the relay is not running: pass --public HOST:PORT (the address agents dial)');
  const keys = loadOrCreateKeyPair(relayPaths(dataDir).key);
  const secret = randomBytes(18).toString('base64url');
  const now = Date.now();
  const expiresAt = now + (o.ttlHours ?? DEFAULT_ENROLL_TTL_H) * 3600_000;
  await withStore(dataDir, (s) =>
    s.createDevice({ name, enrollSecretHash: createHash('sha256').update(secret).digest('hex'), enrollExpiresAt: expiresAt, createdAt: now }),
  );
  // `--public a,b`: every address goes into the token (TCP and wss://…/v1/connect, or a cluster's nodes).
  return encodeEnrollmentToken({ relays: relay.split(',').map((a) => a.trim()).filter(Boolean), relayKey: toHex(keys.publicKey), name, secret, expiresAt });
}

export function listDevices(dataDir: string): Promise<DeviceRecord[]> {
  return withStore(dataDir, (s) => s.listDevices());
}

export async function removeDevice(dataDir: string, name: string): Promise<void> {
  const removed = await withStore(dataDir, (s) => s.removeDevice(name, Date.now()));
  if (!removed) throw new DropwireError('DW_UNKNOWN_DEVICE', `no device named '${name}'`);
  // Drop its live session at once.
  await tellRunningRelay(dataDir, `/v1/admin/devices/${encodeURIComponent(name)}/drop`);
}

/** Tells a running relay (if any) about a change made to its store from here. */
async function tellRunningRelay(dataDir: string, path: string): Promise<void> {
  const info = runningRelay(dataDir);
  if (!info) return;
  await fetch(`http://${info.http}${path}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${adminToken(dataDir)}` },
    signal: AbortSignal.timeout(5_000),
  }).catch(() => undefined);
}

/** Makes a sender token; with a webhook also its signing secret. Both are shown once. */
export async function addToken(dataDir: string, name: string, o: { to?: string; webhook?: string } = {}): Promise<{ token: string; webhookSecret?: string }> {
  checkName('token', name);
  if (o.webhook !== undefined) {
    let u: URL;
    try {
      u = new URL(o.webhook);
    } catch {
      throw new DropwireError('DW_BAD_ARGUMENT', `--webhook must be an http(s) URL, got '${o.webhook}'`);
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new DropwireError('DW_BAD_ARGUMENT', '--webhook must be an http(s) URL');
  }
  const secret = `dwt_${randomBytes(24).toString('base64url')}`;
  const webhookSecret = o.webhook ? `whsec_${randomBytes(24).toString('base64url')}` : undefined;
  await withStore(dataDir, async (s) => {
    await s.createToken({ name, hash: tokenHash(secret), to: o.to ?? '*', ...(o.webhook ? { webhook: o.webhook, webhookSecret } : {}), createdAt: Date.now() });
    // A new webhook starts with the events from now on, not the relay's whole history.
    if (o.webhook) await s.skipWebhookEvents(name, await s.lastEventSeq());
  });
  await tellRunningRelay(dataDir, '/v1/admin/tokens/changed');
  return { token: secret, ...(webhookSecret ? { webhookSecret } : {}) };
}

export function listTokens(dataDir: string): Promise<TokenRecord[]> {
  return withStore(dataDir, (s) => s.listTokens());
}

export async function removeToken(dataDir: string, name: string): Promise<void> {
  const removed = await withStore(dataDir, (s) => s.removeToken(name));
  if (!removed) throw new DropwireError('DW_UNKNOWN_TOKEN', `no token named '${name}'`);
  await tellRunningRelay(dataDir, '/v1/admin/tokens/changed'); // stops working at once
}
