import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { toHex } from '../protocol/bytes.js';
import { encodeEnrollmentToken } from '../shared/enrollment.js';
import { DropwireError } from '../shared/errors.js';
import { loadOrCreateKeyPair } from '../transport/identity.js';
import { tokenHash } from './http.js';
import { adminToken, relayPaths, type RelayInfo } from './relay.js';
import { openSqliteStore } from './store/sqlite.js';
import type { DeviceRecord, Store, TokenRecord, TokenRole } from './store/types.js';

/**
 * Operator actions on a relay's data folder (they work whether the relay runs or not: SQLite WAL), or,
 * with a store URL, on a cluster from any machine.
 */

/** A data folder, or `{ store }` (a cluster's Redis; `data` is then unused). */
export type AdminTarget = string | { data: string; store?: string | undefined };

const storeUrl = (t: AdminTarget): string | undefined => (typeof t === 'string' ? undefined : t.store);
const dataDirOf = (t: AdminTarget): string => (typeof t === 'string' ? t : t.data);

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

/**
 * Only `relay start` (and `up`) create a data folder: a command run in the wrong folder must not make a
 * fresh relay with a new key next to the real one. DW_NO_RELAY_DATA says where it looked.
 */
export function requireRelayData(dataDir: string): void {
  const p = relayPaths(dataDir);
  if (fs.existsSync(p.db) && fs.existsSync(p.key)) return;
  const abs = path.resolve(dataDir);
  const why = fs.existsSync(abs) ? `${abs} has no relay.db and relay.key` : `${abs} does not exist`;
  const service = '/var/lib/dropwire-relay';
  const hint = process.platform === 'linux' && abs !== service && fs.existsSync(path.join(service, 'relay.db')) ? ` (the relay service's folder is ${service})` : '';
  throw new DropwireError(
    'DW_NO_RELAY_DATA',
    `no relay data folder here: ${why}. Pass --data DIR, the folder the relay was started with (\`relay start --data DIR\`)${hint}; only \`relay start\` creates one`,
  );
}

async function withStore<T>(target: AdminTarget, fn: (s: Store) => Promise<T>): Promise<T> {
  const url = storeUrl(target);
  if (url) {
    const { withClusterAdmin } = await import('./cluster/admin.js');
    return withClusterAdmin(url, (a) => fn(a.store));
  }
  const dataDir = dataDirOf(target);
  requireRelayData(dataDir);
  const store = await openSqliteStore({ path: relayPaths(dataDir).db });
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}

export async function addDevice(target: AdminTarget, name: string, o: { public?: string; ttlHours?: number; sendTo?: string } = {}): Promise<string> {
  checkName('device', name);
  if (o.sendTo !== undefined) checkGlob(o.sendTo);
  const url = storeUrl(target);
  if (url) {
    // A cluster: the token carries every agent address of the cluster (or --public's list), its public key.
    const { withClusterAdmin } = await import('./cluster/admin.js');
    return withClusterAdmin(url, async (a) => {
      const relays = o.public ? o.public.split(',').map((s) => s.trim()).filter(Boolean) : a.config.agents;
      const { secret, record } = newEnrollment(name, o.ttlHours, o.sendTo);
      await a.store.createDevice(record);
      return encodeEnrollmentToken({ relays, relayKey: a.config.publicKey, name, secret, expiresAt: record.enrollExpiresAt! });
    });
  }
  const dataDir = dataDirOf(target);
  requireRelayData(dataDir);
  const info = runningRelay(dataDir);
  const relay = o.public ?? info?.public;
  if (!relay) throw new DropwireError('DW_NO_ADDRESS', 'the relay is not running: pass --public HOST:PORT (the address agents dial)');
  const keys = loadOrCreateKeyPair(relayPaths(dataDir).key);
  const { secret, record } = newEnrollment(name, o.ttlHours, o.sendTo);
  await withStore(dataDir, (s) => s.createDevice(record));
  // `--public a,b`: every address goes into the token (TCP and wss://…/v1/connect, or a cluster's nodes).
  return encodeEnrollmentToken({ relays: relay.split(',').map((a) => a.trim()).filter(Boolean), relayKey: toHex(keys.publicKey), name, secret, expiresAt: record.enrollExpiresAt! });
}

/** A device waiting for enrollment, and the one-time secret its token carries (only its hash is stored). */
function newEnrollment(name: string, ttlHours = DEFAULT_ENROLL_TTL_H, sendTo?: string): { secret: string; record: DeviceRecord } {
  const secret = randomBytes(18).toString('base64url');
  const now = Date.now();
  return { secret, record: { name, enrollSecretHash: createHash('sha256').update(secret).digest('hex'), enrollExpiresAt: now + ttlHours * 3600_000, createdAt: now, ...(sendTo !== undefined ? { sendTo } : {}) } };
}

/** A send-to glob: names, `*` and `?`; `-` alone means nowhere. */
function checkGlob(glob: string): void {
  if (glob !== '-' && !/^[A-Za-z0-9._*?-]{1,64}$/.test(glob)) {
    throw new DropwireError('DW_BAD_ARGUMENT', `--send-to must be a glob of names (letters, digits, '.', '_', '-', '*', '?'), or '-' for nowhere; got '${glob}'`);
  }
}

/**
 * `relay device allow NAME --send-to GLOB`: where the device may send files (PROTOCOL 7.14); `-` takes it
 * back. The relay reads it at every offer: it applies at once, running or not.
 */
export async function allowDevice(target: AdminTarget, name: string, sendTo: string): Promise<void> {
  checkGlob(sendTo);
  const found = await withStore(target, (s) => s.setSendTo(name, sendTo === '-' ? undefined : sendTo));
  if (!found) throw new DropwireError('DW_UNKNOWN_DEVICE', `no device named '${name}'`);
}

export function listDevices(target: AdminTarget): Promise<DeviceRecord[]> {
  return withStore(target, (s) => s.listDevices());
}

/** Removes a device; `told` says whether a running relay (or every node of a cluster) dropped its live session at once. */
export async function removeDevice(target: AdminTarget, name: string): Promise<{ told: boolean }> {
  const url = storeUrl(target);
  if (url) {
    const { withClusterAdmin } = await import('./cluster/admin.js');
    const removed = await withClusterAdmin(url, async (a) => {
      const done = await a.store.removeDevice(name, Date.now());
      if (done) await a.dropEverywhere(name); // every node drops its live session at once
      return done;
    });
    if (!removed) throw new DropwireError('DW_UNKNOWN_DEVICE', `no device named '${name}'`);
    return { told: true };
  }
  const dataDir = dataDirOf(target);
  const removed = await withStore(dataDir, (s) => s.removeDevice(name, Date.now()));
  if (!removed) throw new DropwireError('DW_UNKNOWN_DEVICE', `no device named '${name}'`);
  // Drop its live session at once.
  return { told: await tellRunningRelay(dataDir, `/v1/admin/devices/${encodeURIComponent(name)}/drop`) };
}

/** Tells a running relay (if any) about a change made to its store from here; true when it answered. */
async function tellRunningRelay(dataDir: string, urlPath: string): Promise<boolean> {
  const info = runningRelay(dataDir);
  if (!info) return false;
  const res = await fetch(`http://${info.http}${urlPath}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${adminToken(dataDir)}` },
    signal: AbortSignal.timeout(5_000),
  }).catch(() => undefined);
  return res?.ok === true;
}

/** Makes a sender token; with a webhook also its signing secret. Both are shown once. */
export async function addToken(target: AdminTarget, name: string, o: { to?: string; webhook?: string; receive?: boolean; deliverUrl?: string; role?: TokenRole } = {}): Promise<{ token: string; webhookSecret?: string }> {
  checkName('token', name);
  if (o.role === 'metrics' && (o.webhook !== undefined || o.receive || (o.to !== undefined && o.to !== '*'))) {
    throw new DropwireError('DW_BAD_ARGUMENT', 'a --metrics token only reads /metrics: it takes no --to, --webhook or --receive');
  }
  for (const [flag, v] of [['--webhook', o.webhook], ['--deliver-url', o.deliverUrl]] as const) {
    if (v === undefined) continue;
    let u: URL;
    try {
      u = new URL(v);
    } catch {
      throw new DropwireError('DW_BAD_ARGUMENT', `${flag} must be an http(s) URL, got '${v}'`);
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new DropwireError('DW_BAD_ARGUMENT', `${flag} must be an http(s) URL`);
  }
  if (o.deliverUrl !== undefined && !o.receive) throw new DropwireError('DW_BAD_ARGUMENT', '--deliver-url goes with --receive');
  const secret = `dwt_${randomBytes(24).toString('base64url')}`;
  // One signing key for the token's webhook and for the files pushed to it.
  const webhookSecret = o.webhook || o.deliverUrl ? `whsec_${randomBytes(24).toString('base64url')}` : undefined;
  await withStore(target, async (s) => {
    if (o.receive && (await s.getDevice(name))) throw new DropwireError('DW_NAME_TAKEN', `a device is named '${name}': a receiving site needs a name of its own`);
    await s.createToken({
      name,
      hash: tokenHash(secret),
      to: o.to ?? '*',
      ...(o.webhook ? { webhook: o.webhook } : {}),
      ...(webhookSecret ? { webhookSecret } : {}),
      ...(o.receive ? { receive: true } : {}),
      ...(o.deliverUrl ? { deliverUrl: o.deliverUrl } : {}),
      ...(o.role && o.role !== 'send' ? { role: o.role } : {}),
      createdAt: Date.now(),
    });
    // A new webhook starts with the events from now on, not the relay's whole history.
    if (o.webhook) await s.skipWebhookEvents(name, await s.lastEventSeq());
  });
  if (!storeUrl(target)) await tellRunningRelay(dataDirOf(target), '/v1/admin/tokens/changed'); // a cluster's nodes re-read tokens every 2 s
  return { token: secret, ...(webhookSecret ? { webhookSecret } : {}) };
}

export function listTokens(target: AdminTarget): Promise<TokenRecord[]> {
  return withStore(target, (s) => s.listTokens());
}

export async function removeToken(target: AdminTarget, name: string): Promise<{ told: boolean }> {
  const removed = await withStore(target, (s) => s.removeToken(name));
  if (!removed) throw new DropwireError('DW_UNKNOWN_TOKEN', `no token named '${name}'`);
  // Stops working at once on a single relay; within 2 s on every node of a cluster (their token cache).
  return { told: storeUrl(target) ? true : await tellRunningRelay(dataDirOf(target), '/v1/admin/tokens/changed') };
}
