import { TCP_INITIATOR_TIMERS, type ConnectionTimers } from '../protocol/limits.js';

/**
 * The byte duplex a `Link` drives: the part of `net.Socket` it uses, so a TCP socket is one as it is and a
 * WebSocket (websocket.ts) plugs in through a small adapter. Events: 'data' (Uint8Array), 'drain',
 * 'error', 'end', 'close'.
 */
export interface ByteStream {
  /** Bytes accepted by `write` and not yet handed to the operating system. */
  readonly writableLength: number;
  readonly destroyed: boolean;
  readonly remoteAddress?: string | undefined;
  readonly remotePort?: number | undefined;
  /** Bytes written so far (for stats and tests). */
  readonly bytesWritten: number;
  write(bytes: Uint8Array): unknown;
  /** Between `cork` and `uncork`, writes are gathered and sent together. */
  cork(): void;
  uncork(): void;
  /** Ends the stream once written bytes are out. */
  end(): unknown;
  destroy(error?: Error): unknown;
  setNoDelay?(noDelay?: boolean): unknown;
  setKeepAlive?(enable?: boolean, initialDelay?: number): unknown;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- the shape of EventEmitter's own signature
  on(event: 'data' | 'drain' | 'error' | 'end' | 'close', listener: (...args: any[]) => void): unknown;
  once(event: 'close', listener: () => void): unknown;
}

/** How a link reached the relay, for `status` and logs. */
export type TransportName = 'tcp' | 'ws' | 'wss';

/**
 * PROTOCOL 4.5: an initiator's timers on `transport`. On raw TCP (where the link turns TCP keep-alive on)
 * the TCP ones, unless the caller set the heartbeat timers itself; through WebSocket (HTTP proxies and TLS
 * terminators see no TCP keep-alive) the defaults.
 */
export function initiatorTimers(transport: TransportName, given: Partial<ConnectionTimers> = {}): Partial<ConnectionTimers> {
  if (transport !== 'tcp' || given.pingInterval !== undefined || given.idleTimeout !== undefined) return given;
  return { ...TCP_INITIATOR_TIMERS, ...given };
}

/** What a dial produced: the stream, how it was reached and where. */
export interface OpenedStream {
  stream: ByteStream;
  transport: TransportName;
  /** The relay address as configured (HOST:PORT or the ws/wss URL). */
  address: string;
  /** The HTTP proxy the stream goes through, without credentials. */
  proxy?: string;
}
