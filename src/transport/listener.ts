import net from 'node:net';
import type { Connection } from '../protocol/connection.js';
import { Link, type LinkEvents } from './link.js';
import { BurstCompactor } from './memory.js';
import type { ByteStream, TransportName } from './stream.js';

export interface ListenerOptions {
  host: string;
  port: number;
  /** A responder connection for each accepted socket. */
  connection: () => Connection;
  events: LinkEvents;
  /** Sockets beyond this many are refused at once (resource limit). */
  maxConnections?: number;
  /** Sockets from one IP address beyond this many are closed at once, before any handshake work. */
  maxConnectionsPerIp?: number;
  /** Told of sockets refused by `maxConnectionsPerIp` (logging): at most once a second, with how many since. */
  onRefused?: (remote: string, open: number, refused: number) => void;
  /** Give the heap back after a burst of connections (see `BurstCompactor`); default true. */
  compactAfterBurst?: boolean;
}

/** Accepts sockets and runs a responder `Connection` on each. */
export class Listener {
  readonly server: net.Server;
  readonly links = new Set<Link>();
  private readonly o: ListenerOptions;
  /** One events object for every link (the link is passed along): nothing per socket. */
  private readonly events: LinkEvents;
  private readonly burst: BurstCompactor | undefined;
  /** Open sockets by remote address (only kept with `maxConnectionsPerIp`). */
  private readonly perIp = new Map<string, number>();
  private refused = 0;
  private refusedReportAt = 0;

  constructor(o: ListenerOptions) {
    this.o = o;
    this.events = {
      onOutput: (out, l) => this.o.events.onOutput(out, l),
      onClose: (err, l) => {
        this.links.delete(l);
        this.o.events.onClose(err, l);
      },
    };
    this.burst = o.compactAfterBurst === false ? undefined : new BurstCompactor();
    this.server = net.createServer({ noDelay: true }, (socket) => this.accept(socket));
    if (o.maxConnections) this.server.maxConnections = o.maxConnections;
  }

  listen(): Promise<{ host: string; port: number }> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.o.port, this.o.host, () => {
        this.server.off('error', reject);
        const a = this.server.address() as net.AddressInfo;
        resolve({ host: a.address, port: a.port });
      });
    });
  }

  /** Stops accepting and ends every link. Idempotent. */
  async close(): Promise<void> {
    this.burst?.close();
    if (!this.server.listening) return;
    const done = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const l of this.links) {
      l.close();
      l.socket.destroy();
    }
    await done;
  }

  private accept(socket: net.Socket): void {
    const max = this.o.maxConnectionsPerIp;
    if (max) {
      const ip = socket.remoteAddress ?? '';
      const open = this.perIp.get(ip) ?? 0;
      if (open >= max) {
        socket.destroy();
        this.refused++;
        const now = Date.now();
        if (now - this.refusedReportAt >= 1_000) {
          this.refusedReportAt = now;
          this.o.onRefused?.(ip, open, this.refused);
          this.refused = 0;
        }
        return;
      }
      this.perIp.set(ip, open + 1);
      socket.once('close', () => {
        const left = (this.perIp.get(ip) ?? 1) - 1;
        if (left > 0) this.perIp.set(ip, left);
        else this.perIp.delete(ip);
      });
    }
    this.adopt(socket, 'tcp');
  }

  /**
   * Runs a responder on a stream accepted elsewhere (a WebSocket from the HTTP port): the same links,
   * events and limits as TCP sockets, so the hub never learns the difference.
   */
  adopt(stream: ByteStream, transport: TransportName): void {
    if (this.o.maxConnections && this.links.size >= this.o.maxConnections) {
      stream.destroy();
      return;
    }
    // The link listens for 'error' from here on (its close reports it), so no extra listener is needed.
    const link = new Link(stream, this.o.connection(), this.events, undefined, transport);
    this.links.add(link);
    this.burst?.connected();
    link.pump();
  }
}
