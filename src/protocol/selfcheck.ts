import { equal } from './bytes.js';
import { Connection, type Output } from './connection.js';
import { generateKeyPair, type CryptoBackend, type KeyPair } from './crypto.js';
import { ProtocolCode, ProtocolError } from './errors.js';
import { Session } from './session.js';

/**
 * One whole connection in memory, as the relay runs it at start: an initiator with a fresh key and a
 * responder with `keys`, the IK handshake, a DATA record each way, ACK, PING and PONG. Throws
 * DW_HANDSHAKE_FAILED when the crypto backend cannot do what PROTOCOL 3-4 needs (an OpenSSL build without
 * X25519 or ChaCha20-Poly1305, a FIPS mode): better said at start than by every agent's failed handshake.
 * It also leaves the code every handshake runs loaded and compiled before the first agent arrives.
 */
export function selfCheck(crypto: CryptoBackend, keys: KeyPair, random: (n: number) => Uint8Array, now = 0): void {
  try {
    run(crypto, keys, random, now);
  } catch (err) {
    throw new ProtocolError(ProtocolCode.HANDSHAKE_FAILED, `protocol self-check failed: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
}

function run(crypto: CryptoBackend, keys: KeyPair, random: (n: number) => Uint8Array, now: number): void {
  const device = generateKeyPair(crypto, random);
  const a = new Session();
  const b = new Session();
  const i = Connection.initiator({ crypto, random, staticKey: device, remoteStatic: keys.publicKey, session: a, timestamp: 1, now });
  const r = Connection.responder({ crypto, random, staticKey: keys, now });
  const got = { i: [] as Uint8Array[], r: [] as Uint8Array[] };
  const ping = Uint8Array.of(1, 2, 3);
  const pong = Uint8Array.of(4, 5, 6);
  // Bounded: every turn moves bytes or stops.
  for (let turn = 0, t = now; turn < 16; turn++) {
    if (turn === 2) a.write(ping);
    if (turn === 4) b.write(pong);
    if (turn === 6) t += 11_000; // a heartbeat due (PROTOCOL 4.5): PING, then PONG
    const moved =
      drive(i, r, t, got.i, () => {}) +
      drive(r, i, t, got.r, (o) => {
        if (o.type === 'hello') r.accept(b, t);
      });
    if (i.isClosed || r.isClosed) throw new Error(`closed: ${(i.closeError ?? r.closeError)?.message ?? 'unknown'}`);
    if (moved === 0 && turn > 6) break;
  }
  if (!i.isEstablished || !r.isEstablished) throw new Error('the handshake did not finish');
  if (!equal(join(got.r), ping) || !equal(join(got.i), pong)) throw new Error('records did not round-trip');
  i.close();
  r.close();
}

/** Polls `from` until idle, feeding what it writes to `to`; returns how many outputs there were. */
function drive(from: Connection, to: Connection, now: number, delivered: Uint8Array[], other: (o: Output) => void): number {
  let n = 0;
  for (let out = from.poll(now); out !== undefined && n < 64; out = from.poll(now), n++) {
    if (out.type === 'write') to.receive(out.bytes, now);
    else if (out.type === 'data') delivered.push(out.bytes);
    else other(out);
  }
  return n;
}

function join(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}
