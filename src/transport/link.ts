import type { Socket } from 'node:net';
import type { Connection, Output } from '../protocol/connection.js';
import { ProtocolCode, type ProtocolError } from '../protocol/errors.js';
import { transferred } from './memory.js';

/** How much encrypted data may wait in the socket before the link stops pulling more from the session. */
export const SOCKET_HIGH_WATER = 1024 * 1024;

export interface LinkEvents {
  /** Every output except `write` and `close`, which the link handles itself. */
  onOutput(output: Exclude<Output, { type: 'write' } | { type: 'close' }>, link: Link): void;
  /** The connection is over, with the reason (DW_CLOSED for an orderly close). */
  onClose(error: ProtocolError, link: Link): void;
}

/**
 * The only glue between a socket and the pure `Connection`: bytes in, `poll()` until idle, a timer at
 * the connection's next deadline. Everything about the protocol is decided in the connection.
 */
export class Link {
  readonly socket: Socket;
  connection: Connection;
  private readonly events: LinkEvents;
  private readonly now: () => number;
  private timer: NodeJS.Timeout | undefined;
  private pumping = false;
  private closed = false;

  constructor(socket: Socket, connection: Connection, events: LinkEvents, now: () => number = Date.now) {
    this.socket = socket;
    this.connection = connection;
    this.events = events;
    this.now = now;
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => {
      transferred(chunk.length);
      this.connection.receive(chunk, this.now());
      this.pump();
    });
    socket.on('drain', () => this.pump());
    socket.on('error', (err) => this.lost(err));
    socket.on('close', () => this.lost());
    socket.on('end', () => this.lost());
  }

  get remote(): string {
    return `${this.socket.remoteAddress}:${this.socket.remotePort}`;
  }

  /** Runs the connection until it has nothing to do; safe to call any time (e.g. after a session write). */
  pump(): void {
    if (this.pumping || this.closed) return;
    this.pumping = true;
    const socket = this.socket;
    socket.cork();
    try {
      for (;;) {
        const out = this.connection.poll(this.now(), socket.writableLength < SOCKET_HIGH_WATER);
        if (!out) break;
        if (out.type === 'write') {
          socket.write(out.bytes);
          transferred(out.bytes.length);
        }
        else if (out.type === 'close') {
          this.finish(out.error);
          break;
        } else this.events.onOutput(out, this);
      }
    } finally {
      socket.uncork();
      this.pumping = false;
    }
    if (!this.closed) this.schedule();
  }

  /** Ends the connection from this side (sends CLOSE when established). */
  close(code: string = ProtocolCode.CLOSED): void {
    this.connection.close(code);
    this.pump();
  }

  private schedule(): void {
    clearTimeout(this.timer);
    const at = this.connection.nextDeadline();
    if (at === undefined) return;
    this.timer = setTimeout(() => this.pump(), Math.max(0, at - this.now()));
    this.timer.unref?.();
  }

  private lost(err?: Error): void {
    if (this.closed) return;
    this.connection.abort(ProtocolCode.CLOSED, err);
    this.pump();
    if (!this.closed) this.finish(this.connection.closeError!);
  }

  private finish(error: ProtocolError): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.timer);
    this.socket.end();
    // Give the last writes (a CLOSE record, a refusal) a moment, then make sure the socket is gone.
    const t = setTimeout(() => this.socket.destroy(), 2_000);
    t.unref();
    this.socket.once('close', () => clearTimeout(t));
    this.events.onClose(error, this);
  }
}
