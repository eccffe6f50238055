import fs from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { DropwireError } from '../shared/errors.js';
import { writeFileAtomic } from '../shared/files.js';
import { candidates, parseRelayList, type RelayAddress, type TransportMode } from './address.js';
import { connectTunnel, proxyFor, redact } from './proxy.js';
import type { OpenedStream } from './stream.js';
import { openWebSocket } from './websocket.js';

/** In `auto` mode, a TCP dial that has not connected after this long gives way to the next address (WSS). */
export const FALLBACK_AFTER_MS = 3_000;
export const CONNECT_TIMEOUT_MS = 10_000;

export interface ReachOptions {
  /** The relay addresses (HOST:PORT, ws:// or wss:// URLs), as configured. */
  relays: readonly string[];
  mode?: TransportMode;
  /** `--proxy URL`; otherwise HTTPS_PROXY / HTTP_PROXY and NO_PROXY from `env`. */
  proxy?: string | undefined;
  /** PEM file of a private CA trusted for wss (beside Node's roots and NODE_EXTRA_CA_CERTS). */
  caFile?: string | undefined;
  /** Where the address that worked is remembered (tried first next time); undefined: not remembered. */
  memoryFile?: string | undefined;
  env?: NodeJS.ProcessEnv;
  connectTimeoutMs?: number;
  fallbackAfterMs?: number;
  random?: () => number;
  /** Told when a dial fails and the next address is tried (for the log). */
  onFallback?: (from: RelayAddress, to: RelayAddress, error: DropwireError) => void;
}

/** How a stream reached the relay, as `status` shows it: tcp, ws, wss, or "wss via proxy". */
export function describeRoute(o: Pick<OpenedStream, 'transport' | 'proxy'>): string {
  return o.proxy ? `${o.transport} via proxy` : o.transport;
}

/**
 * Opens byte streams to the relay over whichever transport works (PROTOCOL 11.5): the candidates in
 * order, each until one connects. A candidate that connects but whose link then fails before the
 * handshake completes is passed over next time (`failed`); the one that worked is remembered (`worked`).
 */
export class RelayReach {
  private readonly o: ReachOptions;
  readonly list: RelayAddress[];
  readonly mode: TransportMode;
  private readonly ca: string[] | undefined;
  private order: RelayAddress[];
  /** Where the next pass starts in `order`. */
  private start = 0;

  constructor(o: ReachOptions) {
    this.o = o;
    this.list = parseRelayList(o.relays);
    this.mode = o.mode ?? 'auto';
    this.ca = o.caFile ? loadCa(o.caFile) : undefined;
    this.order = candidates(this.list, this.mode, { preferred: this.remembered(), ...(o.random ? { random: o.random } : {}) });
  }

  /** The addresses in the order the next pass tries them. */
  get plan(): RelayAddress[] {
    return [...this.order.slice(this.start), ...this.order.slice(0, this.start)];
  }

  /** One pass over the candidates; resolves with the first stream that opens, else rejects with why. */
  async open(signal?: AbortSignal): Promise<OpenedStream> {
    const plan = this.plan;
    let chosen: DropwireError | undefined;
    const reasons: string[] = [];
    for (const [i, a] of plan.entries()) {
      if (signal?.aborted) break;
      const next = plan[i + 1];
      const fallbackSoon = this.mode === 'auto' && a.kind === 'tcp' && next !== undefined && next.kind !== 'tcp';
      const timeoutMs = fallbackSoon ? (this.o.fallbackAfterMs ?? FALLBACK_AFTER_MS) : (this.o.connectTimeoutMs ?? CONNECT_TIMEOUT_MS);
      try {
        const opened = await this.openOne(a, timeoutMs, signal);
        this.start = this.order.indexOf(a);
        return opened;
      } catch (err) {
        const e = explain(err, a, timeoutMs);
        reasons.push(e.message);
        // A refusal by the proxy or an untrusted certificate says more than "unreachable".
        if (!chosen || (chosen.code === 'DW_RELAY_UNREACHABLE' && e.code !== 'DW_RELAY_UNREACHABLE')) chosen = e;
        if (next) this.o.onFallback?.(a, next, e);
      }
    }
    if (plan.length === 1 && chosen) throw chosen;
    throw new DropwireError(chosen?.code ?? 'DW_RELAY_UNREACHABLE', reasons.join('; ') || 'cancelled before any relay address was tried', { cause: chosen });
  }

  /** The link over `address` failed before its handshake completed: start the next pass after it. */
  failed(address: string): void {
    const i = this.order.findIndex((a) => a.text === address);
    if (i >= 0 && i === this.start) this.start = (i + 1) % this.order.length;
  }

  /** The handshake over `address` completed: try it first from now on, also after a restart. */
  worked(address: string): void {
    const i = this.order.findIndex((a) => a.text === address);
    if (i >= 0) this.start = i;
    const file = this.o.memoryFile;
    if (!file || this.remembered() === address) return;
    try {
      writeFileAtomic(file, JSON.stringify({ address, at: new Date().toISOString() }) + '\n', 0o600);
    } catch {
      // Only a preference: a read-only folder costs a slower first dial next time, nothing else.
    }
  }

  private remembered(): string | undefined {
    if (!this.o.memoryFile) return undefined;
    try {
      const o = JSON.parse(fs.readFileSync(this.o.memoryFile, 'utf8')) as { address?: unknown };
      return typeof o.address === 'string' ? o.address : undefined;
    } catch {
      return undefined;
    }
  }

  private async openOne(a: RelayAddress, timeoutMs: number, signal?: AbortSignal): Promise<OpenedStream> {
    if (a.kind === 'tcp') return { stream: await openTcp(a.host, a.port, timeoutMs, signal), transport: 'tcp', address: a.text };
    const url = new URL(a.url);
    const proxy = proxyFor(url, this.o.proxy, this.o.env ?? process.env);
    let createConnection: (() => net.Socket) | undefined;
    if (proxy) {
      const tunnel = await connectTunnel(proxy, a.host, a.port, { timeoutMs, ca: this.ca, signal });
      createConnection =
        a.kind === 'wss'
          ? () => tls.connect({ socket: tunnel, host: a.host, ...(net.isIP(a.host) ? {} : { servername: a.host }), ...(this.ca ? { ca: this.ca } : {}) })
          : () => tunnel;
    }
    const stream = await openWebSocket(a.url, { ca: this.ca, createConnection, timeoutMs, signal });
    return { stream, transport: a.kind, address: a.text, ...(proxy ? { proxy: redact(proxy) } : {}) };
  }
}

function openTcp(host: string, port: number, timeoutMs: number, signal?: AbortSignal): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port });
    const done = (err?: Error) => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      socket.off('error', done);
      if (err) {
        socket.destroy();
        reject(err);
      } else resolve(socket);
    };
    const timer = setTimeout(() => done(Object.assign(new Error(`no TCP connection within ${timeoutMs} ms`), { code: 'ETIMEDOUT' })), timeoutMs);
    const onAbort = () => done(new Error('cancelled'));
    signal?.addEventListener('abort', onAbort, { once: true });
    socket.once('error', done);
    socket.once('connect', () => done());
  });
}

/** Node's roots (with NODE_EXTRA_CA_CERTS) plus the PEM certificates in `file`. */
export function loadCa(file: string): string[] {
  let pem: string;
  try {
    pem = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new DropwireError('DW_BAD_CA', `cannot read the CA file ${file}: ${(err as Error).message}`, { cause: err });
  }
  if (!pem.includes('-----BEGIN CERTIFICATE-----')) throw new DropwireError('DW_BAD_CA', `${file} holds no PEM certificate`);
  return [...tls.getCACertificates('default'), pem];
}

const TLS_TRUST_CODES = new Set(['UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'SELF_SIGNED_CERT_IN_CHAIN', 'DEPTH_ZERO_SELF_SIGNED_CERT', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'CERT_HAS_EXPIRED', 'ERR_TLS_CERT_ALTNAME_INVALID']);

function explain(err: unknown, a: RelayAddress, timeoutMs: number): DropwireError {
  if (err instanceof DropwireError) return err;
  const code = (err as { code?: string }).code ?? '';
  const message = (err as Error).message ?? String(err);
  if (TLS_TRUST_CODES.has(code)) {
    return new DropwireError('DW_TLS_UNTRUSTED', `the certificate of ${a.text} is not trusted (${code}): give the CA with --ca FILE or NODE_EXTRA_CA_CERTS`, { cause: err });
  }
  if (code === 'ETIMEDOUT') return new DropwireError('DW_RELAY_UNREACHABLE', `cannot reach the relay at ${a.text}: no connection within ${timeoutMs} ms`, { cause: err });
  return new DropwireError('DW_RELAY_UNREACHABLE', `cannot reach the relay at ${a.text}: ${message}`, { cause: err });
}
