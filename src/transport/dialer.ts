import net from 'node:net';
import type { Connection } from '../protocol/connection.js';
import type { ProtocolError } from '../protocol/errors.js';
import { Link, type LinkEvents } from './link.js';
import type { OpenedStream, TransportName } from './stream.js';

export interface Backoff {
  /** First wait after a failure, in ms. */
  initial: number;
  max: number;
  factor: number;
  /** Fraction of each wait that is random (0.5: wait between 50% and 100%), so hosts do not reconnect in lockstep. */
  jitter: number;
}

export const DEFAULT_BACKOFF: Backoff = { initial: 200, max: 30_000, factor: 2, jitter: 0.5 };

export function backoffDelay(attempt: number, b: Backoff, random: () => number = Math.random): number {
  const base = Math.min(b.max, b.initial * b.factor ** Math.max(0, attempt));
  return Math.round(base * (1 - b.jitter + b.jitter * random()));
}

export interface DialerOptions {
  host: string;
  port: number;
  /**
   * Makes the connection for each attempt (a fresh handshake every time: PROTOCOL 3.8), knowing the
   * transport the stream took (its timers differ on raw TCP: PROTOCOL 4.5).
   */
  connection: (transport: TransportName) => Connection;
  events: LinkEvents & {
    /** An attempt failed or a link ended; `delay` is the wait before the next attempt. */
    onRetry?(error: Error, delay: number, attempt: number): void;
    /** A stream opened (before the handshake): which transport and address it took. */
    onOpen?(opened: OpenedStream, link: Link): void;
  };
  backoff?: Partial<Backoff>;
  connectTimeout?: number;
  signal?: AbortSignal;
  now?: () => number;
  /** Opens the byte stream; TCP by default (a WebSocket transport plugs in here). */
  open?: (host: string, port: number) => net.Socket;
  /** Opens the byte stream over any transport (reach.ts); when given, host, port and `open` are unused. */
  connect?: (signal: AbortSignal) => Promise<OpenedStream>;
}

/**
 * Keeps one link up: dial, run the connection, and after any loss dial again with exponential backoff and
 * jitter. The attempt counter resets once a connection is established.
 */
export class Dialer {
  private readonly o: DialerOptions;
  private readonly backoff: Backoff;
  private attempt = 0;
  /** While set (ms), every wait is about this long instead of the exponential backoff. */
  private slowMs = 0;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  /** While set, a lost link is not redialed (a hand-over to another relay node is under way). */
  private held = false;
  /** The `connect` under way, if any. */
  private dialing: AbortController | undefined;
  /** The events of every link this dialer makes (the link is passed along). */
  private readonly events: LinkEvents;
  link: Link | undefined;

  constructor(o: DialerOptions) {
    this.o = o;
    this.backoff = { ...DEFAULT_BACKOFF, ...o.backoff };
    this.events = {
      onOutput: (out, l) => {
        if (out.type === 'established') {
          this.attempt = 0;
          this.slowMs = 0;
        }
        this.o.events.onOutput(out, l);
      },
      onClose: (error: ProtocolError, l) => {
        // An older link that another took over from (a hand-over) ending is no reason to dial.
        const current = this.link === l || this.link === undefined;
        if (this.link === l) this.link = undefined;
        this.o.events.onClose(error, l);
        if (current) this.retry(error);
      },
    };
    o.signal?.addEventListener('abort', () => this.close(), { once: true });
  }

  start(): void {
    if (!this.closed && !this.link && !this.timer && !this.dialing) this.dial();
  }

  /** Drops the current link (if any) and dials again at once, e.g. after the session was lost. */
  redial(): void {
    if (this.closed) return;
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.link) this.link.close();
    else if (!this.dialing) this.dial();
  }

  /** The events a link made outside the dialer must carry to be adopted later (`adopt`). */
  get linkEvents(): LinkEvents {
    return this.events;
  }

  /** While on, a lost link is not redialed; off again, dials at once when no link is up. */
  hold(on: boolean): void {
    this.held = on;
    if (!on && !this.closed && !this.link && !this.dialing) {
      clearTimeout(this.timer);
      this.timer = undefined;
      this.dial();
    }
  }

  /**
   * `link`, made with `linkEvents` and established, is the dialer's link from now on (a hand-over to another
   * relay node): the link it replaces, already superseded, closes without a redial.
   */
  adopt(link: Link): void {
    const old = this.link;
    this.link = link;
    this.held = false;
    this.attempt = 0;
    clearTimeout(this.timer);
    this.timer = undefined;
    this.dialing?.abort();
    this.dialing = undefined;
    if (old && old !== link) old.pump();
  }

  /**
   * Until a connection is established again, waits about `ms` (with the usual jitter) between attempts:
   * for a refusal that only an operator can fix, where dialing every 30 s would only fill two logs.
   */
  slowDown(ms: number): void {
    this.slowMs = ms;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.timer);
    this.dialing?.abort();
    this.link?.close();
  }

  private dial(): void {
    this.timer = undefined;
    if (this.closed) return;
    if (this.o.connect) return this.dialWith(this.o.connect);
    const open = this.o.open ?? ((host, port) => net.connect({ host, port }));
    const socket = open(this.o.host, this.o.port);
    const timeout = setTimeout(() => socket.destroy(new Error('connect timeout')), this.o.connectTimeout ?? 10_000);
    const onError = (err: Error) => {
      clearTimeout(timeout);
      this.retry(err);
    };
    socket.once('error', onError);
    socket.once('connect', () => {
      clearTimeout(timeout);
      socket.off('error', onError);
      if (this.closed) {
        socket.destroy();
        return;
      }
      let connection: Connection;
      try {
        connection = this.o.connection('tcp');
      } catch (err) {
        // e.g. the journal cannot be written: give up this attempt, not the process.
        socket.destroy();
        this.retry(err as Error);
        return;
      }
      const link = new Link(socket, connection, this.events, this.o.now);
      this.link = link;
      link.pump();
    });
  }

  private dialWith(connect: (signal: AbortSignal) => Promise<OpenedStream>): void {
    const dialing = new AbortController();
    this.dialing = dialing;
    connect(dialing.signal).then(
      (opened) => {
        this.dialing = undefined;
        if (this.closed) {
          opened.stream.destroy();
          return;
        }
        let connection: Connection;
        try {
          connection = this.o.connection(opened.transport);
        } catch (err) {
          // e.g. the journal cannot be written: give up this attempt, not the process.
          opened.stream.destroy();
          this.retry(err as Error);
          return;
        }
        const link = new Link(opened.stream, connection, this.events, this.o.now, opened.transport);
        this.link = link;
        this.o.events.onOpen?.(opened, link);
        link.pump();
      },
      (err: Error) => {
        this.dialing = undefined;
        this.retry(err);
      },
    );
  }

  private retry(error: Error): void {
    if (this.closed || this.timer || this.held) return;
    const delay =
      this.slowMs > 0
        ? backoffDelay(0, { ...this.backoff, initial: this.slowMs, max: this.slowMs })
        : backoffDelay(this.attempt, this.backoff);
    this.attempt++;
    this.o.events.onRetry?.(error, delay, this.attempt);
    this.timer = setTimeout(() => this.dial(), delay);
  }
}
