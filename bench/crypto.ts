/**
 * Crypto micro-benchmark: record seal+open throughput per backend and record size, complete IK
 * handshakes per second per backend, and node:crypto AES-256-GCM at the same sizes for the cipher-suite
 * decision. Every loop is bounded by time and by count.
 *
 *   npx tsc -p tsconfig.build.json && node dist/bench/crypto.js [--duration=MS]
 *
 * A later bench runner imports `runCryptoBench()`.
 */
import { createCipheriv, createDecipheriv, createSecretKey, randomBytes } from 'node:crypto';
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import { pathToFileURL } from 'node:url';
import { TAGLEN, type CryptoBackend } from '../src/protocol/crypto.js';
import { nobleCrypto } from '../src/protocol/crypto-noble.js';
import { nodeCrypto } from '../src/protocol/crypto-node.js';
import { HandshakeState, MAX_TRANSPORT_PLAINTEXT } from '../src/protocol/noise.js';

export interface Row {
  /** What was measured: 'chacha20-poly1305 seal+open', 'aes-256-gcm seal+open', 'IK handshake', ... */
  name: string;
  backend: 'node' | 'noble';
  /** Plaintext bytes per record; null for handshakes. */
  size: number | null;
  iterations: number;
  seconds: number;
  opsPerSec: number;
  /** Plaintext megabytes (10^6 bytes) sealed and opened per second; null for handshakes. */
  mbPerSec: number | null;
}

export interface CryptoBenchOptions {
  /** Measuring time per row, after a warm-up of a fifth of it. */
  durationMs?: number;
  /** Hard cap on iterations per row. */
  maxIterations?: number;
}

/** Record sizes: a small control message, 1 KiB, a typical chunk, and the largest record. */
export const RECORD_SIZES = [64, 1024, 16 * 1024, MAX_TRANSPORT_PLAINTEXT] as const;

const EMPTY = new Uint8Array(0);

function measure(fn: () => void, durationMs: number, maxIterations: number): { iterations: number; seconds: number } {
  const warmUntil = performance.now() + durationMs / 5;
  for (let i = 0; i < maxIterations && performance.now() < warmUntil; i++) fn();
  let iterations = 0;
  const start = performance.now();
  const stop = start + durationMs;
  let now = start;
  // Check the clock every `batch` calls so that timing small calls costs little; batches grow to ~1 ms.
  let batch = 1;
  while (now < stop && iterations < maxIterations) {
    const n = Math.min(batch, maxIterations - iterations);
    for (let i = 0; i < n; i++) fn();
    iterations += n;
    const after = performance.now();
    if (after - now < 1) batch *= 2;
    now = after;
  }
  return { iterations, seconds: (now - start) / 1000 };
}

function row(
  name: string,
  backend: Row['backend'],
  size: number | null,
  m: { iterations: number; seconds: number },
): Row {
  const opsPerSec = m.iterations / m.seconds;
  return {
    name,
    backend,
    size,
    iterations: m.iterations,
    seconds: m.seconds,
    opsPerSec,
    mbPerSec: size === null ? null : (opsPerSec * size) / 1e6,
  };
}

/** One record sealed then opened with a backend, as a Noise CipherState would (nonce counts up). */
function chachaSealOpen(crypto: CryptoBackend, size: number): () => void {
  const key = randomBytes(32);
  const plaintext = randomBytes(size);
  let nonce = 0;
  return () => {
    const ct = crypto.encrypt(key, nonce, EMPTY, plaintext);
    crypto.decrypt(key, nonce, EMPTY, ct);
    nonce++;
  };
}

/**
 * The same with node:crypto AES-256-GCM and the same nonce layout, for comparison; the key is a KeyObject
 * made once, as the node backend's key cache does for ChaCha20-Poly1305.
 */
function aesGcmSealOpen(size: number): () => void {
  const key = createSecretKey(randomBytes(32));
  const plaintext = randomBytes(size);
  const iv = Buffer.alloc(12);
  let nonce = 0;
  return () => {
    iv.writeUInt32LE(nonce >>> 0, 4);
    const cipher = createCipheriv('aes-256-gcm', key, iv, { authTagLength: TAGLEN });
    const ct = new Uint8Array(size + TAGLEN);
    ct.set(cipher.update(plaintext), 0);
    cipher.final();
    ct.set(cipher.getAuthTag(), size);
    const decipher = createDecipheriv('aes-256-gcm', key, iv, { authTagLength: TAGLEN });
    decipher.setAuthTag(ct.subarray(size));
    decipher.update(ct.subarray(0, size));
    decipher.final();
    nonce++;
  };
}

const random = (n: number): Uint8Array => randomBytes(n);

/** Both halves of a complete IK handshake, with fresh ephemerals, up to split(). */
function fullHandshake(crypto: CryptoBackend): () => void {
  const a = crypto.keyPairFromPrivate(randomBytes(32));
  const b = crypto.keyPairFromPrivate(randomBytes(32));
  const prologue = new TextEncoder().encode('dropwire/bench');
  const payload = new Uint8Array(64);
  return () => {
    const i = HandshakeState.initiator({ crypto, prologue, s: a, rs: b.publicKey, random });
    const r = HandshakeState.responder({ crypto, prologue, s: b, random });
    r.readMessage(i.writeMessage(payload));
    i.readMessage(r.writeMessage(payload));
    i.split();
    r.split();
  };
}

/** The responder's half only (read msg 1, write msg 2, split): what a relay pays per connection. */
function responderHalf(crypto: CryptoBackend): () => void {
  const a = crypto.keyPairFromPrivate(randomBytes(32));
  const b = crypto.keyPairFromPrivate(randomBytes(32));
  const prologue = new TextEncoder().encode('dropwire/bench');
  const payload = new Uint8Array(64);
  // IK's message 1 is accepted again by a fresh responder, so one recorded message serves every iteration.
  const msg1 = HandshakeState.initiator({ crypto, prologue, s: a, rs: b.publicKey, random }).writeMessage(payload);
  return () => {
    const r = HandshakeState.responder({ crypto, prologue, s: b, random });
    r.readMessage(msg1);
    r.writeMessage(payload);
    r.split();
  };
}

export async function runCryptoBench(options: CryptoBenchOptions = {}): Promise<Row[]> {
  const durationMs = options.durationMs ?? 500;
  const maxIterations = options.maxIterations ?? 10_000_000;
  const rows: Row[] = [];
  const backends: readonly CryptoBackend[] = [nodeCrypto, nobleCrypto];
  for (const size of RECORD_SIZES) {
    for (const crypto of backends) {
      const m = measure(chachaSealOpen(crypto, size), durationMs, maxIterations);
      rows.push(row('chacha20-poly1305 seal+open', crypto.name, size, m));
      await yieldToLoop();
    }
    rows.push(row('aes-256-gcm seal+open', 'node', size, measure(aesGcmSealOpen(size), durationMs, maxIterations)));
    await yieldToLoop();
  }
  for (const crypto of backends) {
    const full = measure(fullHandshake(crypto), durationMs, maxIterations);
    rows.push(row('IK handshake, both sides', crypto.name, null, full));
    await yieldToLoop();
    const half = measure(responderHalf(crypto), durationMs, maxIterations);
    rows.push(row('IK handshake, responder half', crypto.name, null, half));
    await yieldToLoop();
  }
  return rows;
}

function formatTable(rows: readonly Row[]): string {
  const header = ['what', 'backend', 'size B', 'ops/s', 'MB/s'];
  const body = rows.map((r) => [
    r.name,
    r.backend,
    r.size === null ? '' : String(r.size),
    r.opsPerSec.toFixed(0),
    r.mbPerSec === null ? '' : r.mbPerSec.toFixed(1),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((line) => line[i]!.length)));
  const fmt = (cells: string[]) =>
    cells.map((c, i) => (i < 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  return [fmt(header), widths.map((w) => '-'.repeat(w)).join('  '), ...body.map(fmt)].join('\n');
}

async function main(): Promise<void> {
  const arg = process.argv.find((a) => a.startsWith('--duration='));
  const durationMs = arg === undefined ? undefined : Number(arg.slice('--duration='.length));
  const rows = await runCryptoBench(durationMs === undefined ? {} : { durationMs });
  console.log(`node ${process.version}, ${process.arch}; one op = one record sealed and opened, or one handshake`);
  console.log(formatTable(rows));
  for (const size of RECORD_SIZES) {
    const chacha = rows.find((r) => r.name.startsWith('chacha') && r.backend === 'node' && r.size === size);
    const aes = rows.find((r) => r.name.startsWith('aes') && r.size === size);
    if (chacha !== undefined && aes !== undefined) {
      const ratio = (aes.opsPerSec / chacha.opsPerSec).toFixed(2);
      console.log(`${String(size).padStart(5)} B: AES-256-GCM / ChaCha20-Poly1305 (node) = ${ratio}x`);
    }
  }
}

const entry = process.argv[1];
if (entry !== undefined && import.meta.url === pathToFileURL(entry).href) {
  main().catch((err: unknown) => {
    console.error(err);
    process.exitCode = 1;
  });
}
