import net from 'node:net';
import { fromHex } from '../protocol/bytes.js';
import { Connection } from '../protocol/connection.js';
import { nodeCrypto } from '../protocol/crypto-node.js';
import type { ProtocolError } from '../protocol/errors.js';
import { Session } from '../protocol/session.js';
import { decodeEnrollmentToken, parseHostPort } from '../shared/enrollment.js';
import { DropwireError } from '../shared/errors.js';
import { loadOrCreateKeyPair, random } from '../transport/identity.js';
import { Link } from '../transport/link.js';
import { paths } from './config.js';
import { openConfigStore } from './config-store.js';
import { Journal } from './journal.js';

export interface EnrollResult {
  name: string;
  relay: string;
  home: string;
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
export async function enroll(o: { home: string; token: string; name?: string; relay?: string; timeoutMs?: number }): Promise<EnrollResult> {
  const t = decodeEnrollmentToken(o.token);
  if (t.expiresAt < Date.now()) throw new DropwireError('DW_TOKEN_EXPIRED', `this enrollment token expired at ${new Date(t.expiresAt).toISOString()}: ask for a new token with \`relay device add\``);
  const relay = o.relay ?? t.relays[0]!;
  const name = o.name ?? t.name;
  const { host, port } = parseHostPort(relay, 'relay');
  const p = paths(o.home);
  const keys = loadOrCreateKeyPair(p.key);
  const journal = new Journal(p.journal);
  try {
    await new Promise<void>((resolve, reject) => {
      const socket = net.connect({ host, port });
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new DropwireError('DW_ENROLL_TIMEOUT', `no answer from the relay at ${relay}`));
      }, o.timeoutMs ?? 15_000);
      socket.once('error', (err) => {
        clearTimeout(timer);
        reject(new DropwireError('DW_RELAY_UNREACHABLE', `cannot reach the relay at ${relay}: ${err.message}`, { cause: err }));
      });
      socket.once('connect', () => {
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
        });
        link.pump();
      });
    });
  } finally {
    journal.close();
  }
  const config = openConfigStore(o.home);
  config.set({ name, relay, relayKey: t.relayKey });
  if (!config.has('rules')) config.set('rules', [{ match: '*', action: { type: 'save', dir: p.inbox, ifExists: 'rename' } }]);
  return { name, relay, home: o.home };
}
