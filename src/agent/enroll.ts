import path from 'node:path';
import { fromHex } from '../protocol/bytes.js';
import { Connection } from '../protocol/connection.js';
import { nodeCrypto } from '../protocol/crypto-node.js';
import type { ProtocolError } from '../protocol/errors.js';
import { Session } from '../protocol/session.js';
import { decodeEnrollmentToken } from '../shared/enrollment.js';
import { DropwireError } from '../shared/errors.js';
import { loadOrCreateKeyPair, random } from '../transport/identity.js';
import { parseTransportMode, type TransportMode } from '../transport/address.js';
import { Link } from '../transport/link.js';
import { describeRoute, RelayReach } from '../transport/reach.js';
import { paths } from './config.js';
import { openConfigStore } from './config-store.js';
import { Journal } from './journal.js';

export interface EnrollResult {
  name: string;
  relay: string;
  home: string;
  /** How enrollment reached the relay: tcp, wss, "wss via proxy"… */
  transport: string;
}

/** How to reach the relay (README "Reaching the relay"); kept in the config for the agent. */
export interface ReachSettings {
  /** Overrides the token's addresses (comma-separated). */
  relay?: string;
  transport?: string;
  proxy?: string;
  ca?: string;
}

/** The relay's enrollment refusals (PROTOCOL 3.10), said the way an operator can act on. */
const ENROLL_REFUSALS: Record<string, string> = {
  DW_ENROLL_USED: 'this enrollment token was already used (the device is enrolled with another key)',
  DW_ENROLL_EXPIRED: 'this enrollment token has expired',
  DW_ENROLL_UNKNOWN: 'the relay does not know this enrollment token (the device was removed, or given a newer token)',
  DW_ENROLL_REFUSED: 'the relay refused this enrollment token (already used, expired, or unknown)',
};

/**
 * `dropwire init TOKEN`: makes the device key, proves the one-time secret to the relay inside an IK
 * handshake to the relay key the token names (PROTOCOL 3.4, ENROLL), pins that key, writes the config.
 */
export async function enroll(o: { home: string; token: string; name?: string; timeoutMs?: number } & ReachSettings): Promise<EnrollResult> {
  const t = decodeEnrollmentToken(o.token);
  if (t.expiresAt < Date.now()) throw new DropwireError('DW_TOKEN_EXPIRED', `this enrollment token expired at ${new Date(t.expiresAt).toISOString()}: ask for a new token with \`relay device add\``);
  const relays = o.relay ? o.relay.split(',') : t.relays;
  const name = o.name ?? t.name;
  const p = paths(o.home);
  const transport: TransportMode | undefined = o.transport === undefined ? undefined : parseTransportMode(o.transport);
  const ca = o.ca === undefined ? undefined : path.resolve(o.ca);
  const reach = new RelayReach({ relays, ...(transport ? { mode: transport } : {}), proxy: o.proxy, caFile: ca, memoryFile: p.route });
  let relay = reach.plan[0]!.text;
  let how = '';
  const keys = loadOrCreateKeyPair(p.key);
  const journal = new Journal(p.journal);
  try {
    const opened = await reach.open(AbortSignal.timeout(o.timeoutMs ?? 15_000));
    relay = opened.address;
    how = describeRoute(opened);
    const socket = opened.stream;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new DropwireError('DW_ENROLL_TIMEOUT', `no answer from the relay at ${relay}`));
      }, o.timeoutMs ?? 15_000);
      {
        // The enrollment handshake (PROTOCOL 3.4) on the stream `reach` opened, whatever its transport.
        const conn = Connection.initiator({
          crypto: nodeCrypto,
          random,
          staticKey: keys,
          remoteStatic: fromHex(t.relayKey),
          session: new Session(),
          timestamp: journal.nextTimestamp(Date.now()),
          now: Date.now(),
          enroll: { name, secret: t.secret },
        });
        let done = false;
        const link = new Link(socket, conn, {
          onOutput: (out, l) => {
            if (out.type !== 'established') return;
            done = true;
            clearTimeout(timer);
            l.close();
            resolve();
          },
          onClose: (err: ProtocolError) => {
            clearTimeout(timer);
            if (done) return;
            const reason = typeof err.cause === 'string' ? err.cause : err.code;
            const why = ENROLL_REFUSALS[reason];
            reject(new DropwireError(why ? reason : err.code, why ? `${why}: ask for a new token with \`relay device add\`` : `enrollment failed: ${reason}`, { cause: err }));
          },
        }, undefined, opened.transport);
        link.pump();
      }
    });
    reach.worked(relay);
  } finally {
    journal.close();
  }
  const config = openConfigStore(o.home);
  config.set({ name, relays: reach.list.map((a) => a.text), relayKey: t.relayKey });
  config.delete('relay'); // an older config's single address; `relays` replaces it
  if (transport) config.set('transport', transport);
  if (o.proxy) config.set('proxy', o.proxy);
  if (ca) config.set('ca', ca);
  if (!config.has('rules')) config.set('rules', [{ match: '*', action: { type: 'save', dir: p.inbox, ifExists: 'rename' } }]);
  return { name, relay, home: o.home, transport: how };
}
