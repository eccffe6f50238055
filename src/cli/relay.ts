import { listDevices, listTokens } from '../relay/admin.js';
import { Relay } from '../relay/relay.js';
import { parseHostPort } from '../shared/enrollment.js';
import { DropwireError } from '../shared/errors.js';
import { parseRelayList } from '../transport/address.js';
import { createLogger } from '../shared/log.js';
import { untilSignal } from './signals.js';

export async function runRelay(o: { data: string; listen: string; http: string; public?: string; maxBody?: number; tlsCert?: string; tlsKey?: string }): Promise<void> {
  if ((o.tlsCert === undefined) !== (o.tlsKey === undefined)) throw new DropwireError('DW_BAD_TLS', '--tls-cert and --tls-key go together');
  if (o.public) parseRelayList(o.public, '--public'); // a typo is refused here, not by every agent later
  const log = createLogger('relay');
  const relay = await Relay.start({
    dataDir: o.data,
    listen: parseHostPort(o.listen, '--listen'),
    http: parseHostPort(o.http, '--http'),
    ...(o.public ? { public: o.public } : {}),
    ...(o.maxBody ? { maxBody: o.maxBody } : {}),
    ...(o.tlsCert && o.tlsKey ? { tls: { certFile: o.tlsCert, keyFile: o.tlsKey } } : {}),
    log,
  });
  // SIGHUP re-reads the TLS certificate and key (a renewal); open connections stay up.
  const onHup = () => void relay.reloadTls();
  if (o.tlsCert) process.on('SIGHUP', onHup);
  await untilSignal();
  process.off('SIGHUP', onHup);
  await relay.close();
}

export async function printDevices(dataDir: string, json: boolean): Promise<void> {
  const devices = await listDevices(dataDir);
  if (json) {
    console.log(JSON.stringify(devices.map((d) => ({ name: d.name, enrolled: d.publicKey !== undefined, lastSeen: d.lastSeen ?? null, createdAt: d.createdAt }))));
    return;
  }
  for (const d of devices) {
    const seen = d.lastSeen ? new Date(d.lastSeen).toISOString() : 'never';
    console.log(`${d.name}\t${d.publicKey ? 'enrolled' : 'waiting for enrollment'}\tlast seen ${seen}`);
  }
}

export async function printTokens(dataDir: string, json: boolean): Promise<void> {
  const tokens = await listTokens(dataDir);
  if (json) {
    console.log(JSON.stringify(tokens.map((t) => ({ name: t.name, to: t.to, webhook: t.webhook ?? null, createdAt: t.createdAt }))));
    return;
  }
  for (const t of tokens) console.log(`${t.name}\tto ${t.to}${t.webhook ? `\twebhook ${t.webhook}` : ''}`);
}
