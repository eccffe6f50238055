import { createHash } from 'node:crypto';
import path from 'node:path';
import { fromHex } from '../protocol/bytes.js';
import { addDevice, listDevices, listTokens, removeDevice, removeToken, type AdminTarget } from '../relay/admin.js';
import { Relay, type RelayInfo } from '../relay/relay.js';
import { parseHostPort } from '../shared/enrollment.js';
import { DropwireError } from '../shared/errors.js';
import { parseRelayList } from '../transport/address.js';
import { createLogger } from '../shared/log.js';
import { untilSignal } from './signals.js';

export async function runRelay(o: { data: string; listen: string; http: string; public?: string; maxBody?: number; bodyTimeout?: number; maxUploads?: number; maxUploadsPerToken?: number; maxConnsPerIp?: number; store?: string; tlsCert?: string; tlsKey?: string; downloads?: string; metrics?: string }): Promise<void> {
  if ((o.tlsCert === undefined) !== (o.tlsKey === undefined)) throw new DropwireError('DW_BAD_TLS', '--tls-cert and --tls-key go together');
  if (o.public) parseRelayList(o.public, '--public'); // a typo is refused here, not by every agent later
  if (o.store) {
    // One node of a cluster (README "Several nodes").
    const { runNode } = await import('./relay-cluster.js');
    return runNode({ ...o, store: o.store });
  }
  const log = createLogger('relay');
  const relay = await Relay.start({
    dataDir: o.data,
    listen: parseHostPort(o.listen, '--listen'),
    http: parseHostPort(o.http, '--http'),
    ...(o.public ? { public: o.public } : {}),
    ...(o.maxBody ? { maxBody: o.maxBody } : {}),
    caps: { bodyTimeoutS: o.bodyTimeout, maxUploads: o.maxUploads, maxUploadsPerToken: o.maxUploadsPerToken, maxConnsPerIp: o.maxConnsPerIp },
    ...(o.tlsCert && o.tlsKey ? { tls: { certFile: o.tlsCert, keyFile: o.tlsKey } } : {}),
    ...(o.downloads ? { downloads: o.downloads } : {}),
    ...(o.metrics ? { metrics: parseHostPort(o.metrics, '--metrics') } : {}),
    log,
  });
  // On a terminal, a few lines for the person who just started it (the JSON logs go on as usual).
  if (process.stdout.isTTY) process.stdout.write(summary(relay.info, o.data));
  // SIGHUP re-reads the TLS certificate and key (a renewal); open connections stay up.
  const onHup = () => void relay.reloadTls();
  if (o.tlsCert) process.on('SIGHUP', onHup);
  await untilSignal();
  process.off('SIGHUP', onHup);
  await relay.close();
}

/** The relay key as `SHA256:<base64>` (the form ssh uses), to compare with what an agent pinned. */
export function keyFingerprint(publicKeyHex: string): string {
  return `SHA256:${createHash('sha256').update(fromHex(publicKeyHex)).digest('base64').replace(/=+$/, '')}`;
}

function summary(info: RelayInfo, data: string): string {
  const dataArg = data === './dropwire-relay' ? '' : ` --data ${data}`;
  return [
    `dropwire relay running (pid ${info.pid}), data in ${path.resolve(data)}`,
    `  agents dial    ${info.public}${info.public === info.agents ? '' : `   (listening on ${info.agents})`}`,
    `  HTTP API       http://${info.http}`,
    `  relay key      ${keyFingerprint(info.publicKey)}`,
    `Add a host:      dropwire relay device add NAME${dataArg}`,
    `Add a sender:    dropwire relay token add NAME${dataArg}`,
    `Ctrl-C stops it. JSON logs follow.`,
    '',
  ].join('\n');
}

/** `relay device add`: the token alone on stdout (for scripts); on stderr, what to run on the host. */
export async function runDeviceAdd(target: AdminTarget, name: string, o: { public?: string; ttl: number; sendTo?: string }): Promise<void> {
  const token = await addDevice(target, name, { ...(o.public ? { public: o.public } : {}), ttlHours: o.ttl, ...(o.sendTo !== undefined && o.sendTo !== '-' ? { sendTo: o.sendTo } : {}) });
  console.log(token);
  process.stderr.write(`Run this on the host '${name}' (the token works once, within ${o.ttl} h):\n  dropwire init ${token}\n`);
  if (typeof target === 'string' || !target.store) {
    const { installCommand } = await import('../relay/downloads.js');
    process.stderr.write(`or, without Node on the host:\n${installCommand(typeof target === 'string' ? target : target.data, token)}\n`);
  }
}

export async function runDeviceRemove(target: AdminTarget, name: string): Promise<void> {
  const r = await removeDevice(target, name);
  console.log(`removed device '${name}'${r.told ? '; the running relay dropped its connection' : ' (the relay is not running)'}`);
}

export async function runTokenRemove(target: AdminTarget, name: string): Promise<void> {
  const r = await removeToken(target, name);
  console.log(`removed token '${name}'${r.told ? '; the running relay refuses it from now on' : ' (the relay is not running)'}`);
}

/** Where an admin command looked: the cluster's store, or the data folder. */
function where(t: AdminTarget): string {
  if (typeof t !== 'string' && t.store) return 'the cluster';
  return path.resolve(typeof t === 'string' ? t : t.data);
}

export async function printDevices(target: AdminTarget, json: boolean): Promise<void> {
  const devices = await listDevices(target);
  if (json) {
    console.log(JSON.stringify(devices.map((d) => ({ name: d.name, enrolled: d.publicKey !== undefined, lastSeen: d.lastSeen ?? null, createdAt: d.createdAt, sendTo: d.sendTo ?? null }))));
    return;
  }
  if (devices.length === 0) process.stderr.write(`no devices in ${where(target)} yet: add one with \`dropwire relay device add NAME\`\n`);
  for (const d of devices) {
    const seen = d.lastSeen ? new Date(d.lastSeen).toISOString() : 'never';
    console.log(`${d.name}\t${d.publicKey ? 'enrolled' : 'waiting for enrollment'}\tlast seen ${seen}${d.sendTo ? `\tsends to ${d.sendTo}` : ''}`);
  }
}

export async function printTokens(target: AdminTarget, json: boolean): Promise<void> {
  const tokens = await listTokens(target);
  if (json) {
    console.log(JSON.stringify(tokens.map((t) => ({ name: t.name, to: t.to, webhook: t.webhook ?? null, role: t.role ?? 'send', createdAt: t.createdAt }))));
    return;
  }
  if (tokens.length === 0) process.stderr.write(`no sender tokens in ${where(target)} yet: add one with \`dropwire relay token add NAME\`\n`);
  for (const t of tokens) console.log(`${t.name}\tto ${t.to}${t.webhook ? `\twebhook ${t.webhook}` : ''}${t.role ? `\t${t.role}` : ''}`);
}
