import type { Connection } from '../protocol/connection.js';
import { fromHex } from '../protocol/bytes.js';
import type { ProtocolError } from '../protocol/errors.js';
import type { Headers, MessageType } from '../protocol/messages.js';
import type { Dialer } from '../transport/dialer.js';
import { Link } from '../transport/link.js';
import type { OpenedStream, TransportName } from '../transport/stream.js';
import type { Logger } from '../shared/log.js';

type Redirect = Headers[typeof MessageType.REDIRECT];

/** The longest an agent waits on a REDIRECT, whatever its deadline says. */
const MAX_WAIT_MS = 60_000;

/**
 * PROTOCOL 7.16 at the agent: on REDIRECT, dial the node named, ask HANDOVER in the handshake, and swap to the
 * new connection once it carries the session (make before break: the old one stays until then). Refuses
 * (REDIRECT_REFUSED, 7.17) when the agent is configured so, when a hand-over is under way, or when the deadline
 * has passed; gives up by itself at the deadline and stays where it is.
 */
export class RedirectFollower {
  private pending: { rid: string; abort: AbortController; timer: NodeJS.Timeout; link?: Link; ready?: boolean; oldClosed?: boolean } | undefined;

  private readonly o: {
    log: Logger;
    dialer: Dialer;
    /** False when the agent refuses redirects (`--refuse-redirects`, `"redirects": false`). */
    follow: () => boolean;
    /** True while the agent has state the relay node keeps for this session only (uploads, watches: 7.14-7.15). */
    busy?: () => boolean;
    /** Opens a byte stream to one relay address (the agent's transport settings). */
    open: (address: string, signal: AbortSignal) => Promise<OpenedStream>;
    /** A HANDOVER connection for the agent's session with this request id, over this transport. */
    connection: (requestId: Uint8Array, transport: TransportName) => Connection;
    refuse: (rid: string, code: string) => void;
    /** The address the agent is connected to now. */
    current: () => string;
    /** Told after each hand-over (bench counters). */
    handedOver?: (info: { from: string; to: string; rid: string; durationMs: number }) => void;
  };

  constructor(o: RedirectFollower['o']) {
    this.o = o;
  }

  get busy(): boolean {
    return this.pending !== undefined;
  }

  onRedirect(r: Redirect): void {
    const { log } = this.o;
    const wait = Math.min(MAX_WAIT_MS, r.deadline - Date.now());
    if (!this.o.follow()) {
      log.info({ rid: r.rid, to: r.to }, 'redirect refused: this agent is configured to stay (redirects: false)');
      return this.o.refuse(r.rid, 'DW_REDIRECT_REFUSED');
    }
    if (this.pending || this.o.busy?.()) {
      log.info({ rid: r.rid, to: r.to }, 'redirect refused: a hand-over, an upload or a watch is under way');
      return this.o.refuse(r.rid, 'DW_REDIRECT_BUSY');
    }
    if (wait <= 0) return this.o.refuse(r.rid, 'DW_REDIRECT_EXPIRED');
    const from = this.o.current();
    const started = Date.now();
    const abort = new AbortController();
    const timer = setTimeout(() => this.giveUp(r, 'DW_REDIRECT_TIMEOUT'), wait);
    const p: NonNullable<RedirectFollower['pending']> = { rid: r.rid, abort, timer };
    this.pending = p;
    const dialer = this.o.dialer;
    dialer.hold(true);
    log.info({ rid: r.rid, from, to: r.to }, 'redirect received; dialing the new relay node');
    this.o.open(r.to, abort.signal).then(
      (opened) => {
        if (this.pending !== p) {
          opened.stream.destroy();
          return;
        }
        let adopted = false;
        const link = new Link(
          opened.stream,
          this.o.connection(fromHex(r.rid), opened.transport),
          {
            onOutput: (out, l) => {
              if (out.type === 'handover-ready') {
                // Make before break: swap once the old connection has delivered all it carried and closed.
                p.ready = true;
                if (p.oldClosed || !dialer.link || dialer.link.connection.isClosed) this.swap(p);
                return;
              }
              if (!adopted && out.type === 'established') {
                adopted = true;
                clearTimeout(timer);
                this.pending = undefined;
                dialer.adopt(l);
                const info = { from, to: r.to, rid: r.rid, durationMs: Date.now() - started };
                log.info(info, 'handed over to another relay node');
                this.o.handedOver?.(info);
              }
              dialer.linkEvents.onOutput(out, l);
            },
            onClose: (err: ProtocolError, l) => {
              if (adopted) return dialer.linkEvents.onClose(err, l);
              if (this.pending === p) this.giveUp(r, typeof err.cause === 'string' ? err.cause : err.code);
            },
          },
          Date.now,
          opened.transport,
        );
        p.link = link;
        link.pump();
      },
      (err: Error) => {
        if (this.pending === p) this.giveUp(r, (err as { code?: string }).code ?? 'DW_RELAY_UNREACHABLE');
      },
    );
  }

  /** The agent's connection closed (PROTOCOL 7.16 step 6: the old node let go): swap if the new one is ready. */
  oldClosed(): void {
    const p = this.pending;
    if (!p) return;
    p.oldClosed = true;
    if (p.ready) this.swap(p);
  }

  private swap(p: NonNullable<RedirectFollower['pending']>): void {
    const link = p.link;
    if (!link || link.connection.isClosed) return;
    link.connection.swap(Date.now());
    link.pump();
  }

  /** The hand-over did not happen (refused, unreachable, timed out): stay on the current connection. */
  private giveUp(r: Redirect, code: string): void {
    const p = this.pending;
    if (!p || p.rid !== r.rid) return;
    this.pending = undefined;
    clearTimeout(p.timer);
    p.abort.abort();
    p.link?.close();
    this.o.log.warn({ rid: r.rid, to: r.to, code }, 'hand-over did not happen; staying on the current relay node');
    this.o.dialer.hold(false);
  }

  close(): void {
    if (!this.pending) return;
    clearTimeout(this.pending.timer);
    this.pending.abort.abort();
    this.pending.link?.close();
    this.pending = undefined;
  }
}
