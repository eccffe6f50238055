import type { Connection, Output } from '../protocol/connection.js';
import { ProtocolCode, type ProtocolError } from '../protocol/errors.js';
import { TCP_KEEPALIVE_DELAY } from '../protocol/limits.js';
import { transferred } from './memory.js';
import type { ByteStream, TransportName } from './stream.js';

/** How much encrypted data may wait in the socket before the link stops pulling more from the session. */
export const SOCKET_HIGH_WATER = 1024 * 1024;

export interface LinkEvents {
  /** Every output except `write` and `close`, which the link handles itself. */
  onOutput(output: Exclude<Output, { type: 'write' } | { type: 'close' }>, link: Link): void;
  /** The connection is over, with the reason (DW_CLOSED for an orderly close). */
  onClose(error: ProtocolError, link: Link): void;
}

/** The link a socket carries, for the socket listeners below, which every socket shares. */
const LINK = Symbol('dropwire.link');
type LinkedSocket = ByteStream & { [LINK]?: Link };

function onData(this: LinkedSocket, chunk: Buffer): void {
  this[LINK]?.received(chunk);
}

function onDrain(this: LinkedSocket): void {
  this[LINK]?.pump();
}

function onLost(this: LinkedSocket, err?: Error): void {
  this[LINK]?.lost(err instanceof Error ? err : undefined);
}

/** Bytes every link of this process received and sent (relay metrics read them; two additions per write). */
export const linkBytes = { received: 0, sent: 0 };
/** Socket reads, and pumps that wrote (one socket write each, the writes corked), of every link (for the bench). */
export const linkIo = { reads: 0, writes: 0 };

/**
 * The only glue between a socket and the pure `Connection`: bytes in, `poll()` until idle, a wake-up at
 * the connection's next deadline. Everything about the protocol is decided in the connection.
 *
 * Per link the cost is kept to what the socket itself needs: the socket listeners are functions shared by
 * every link, and deadlines wait in one heap per clock (`Deadlines`) rather than in a Node timer each.
 */
export class Link {
  /** The byte stream: a TCP socket, or a WebSocket behind an adapter (stream.ts). */
  readonly socket: ByteStream;
  /** How the peer reached us (or we the peer), for status and logs; the protocol does not care. */
  readonly transport: TransportName;
  connection: Connection;
  private readonly events: LinkEvents;
  private readonly now: () => number;
  private readonly deadlines: Deadlines;
  /** For `Deadlines` only: when the connection wants `poll()` again (undefined: never), the link's key in
   * the heap (at or before `deadline`) and its index there (-1: not in it). */
  deadline: number | undefined = undefined;
  dueAt = 0;
  heapIndex = -1;
  private pumping = false;
  private closed = false;

  constructor(socket: ByteStream, connection: Connection, events: LinkEvents, now: () => number = Date.now, transport: TransportName = 'tcp') {
    this.socket = socket;
    this.transport = transport;
    this.connection = connection;
    this.events = events;
    this.now = now;
    this.deadlines = deadlinesFor(now);
    socket.setNoDelay?.(true);
    // PROTOCOL 4.5: on raw TCP the agent's kernel probes a silent path (libuv: 10 probes 1 s apart), so its
    // heartbeats need an answer only now and then.
    if (transport === 'tcp' && connection.role === 'initiator') socket.setKeepAlive?.(true, TCP_KEEPALIVE_DELAY);
    (socket as LinkedSocket)[LINK] = this;
    socket.on('data', onData);
    socket.on('drain', onDrain);
    socket.on('error', onLost);
    socket.on('close', onLost);
    socket.on('end', onLost);
  }

  get remote(): string {
    return `${this.socket.remoteAddress}:${this.socket.remotePort}`;
  }

  /** Bytes from the socket. */
  received(chunk: Uint8Array): void {
    transferred(chunk.length);
    linkBytes.received += chunk.length;
    linkIo.reads++;
    this.connection.receive(chunk, this.now());
    this.pump();
  }

  /** Runs the connection until it has nothing to do; safe to call any time (e.g. after a session write). */
  pump(): void {
    if (this.pumping || this.closed) return;
    this.pumping = true;
    const socket = this.socket;
    const sentBefore = linkBytes.sent;
    socket.cork();
    try {
      for (;;) {
        const out = this.connection.poll(this.now(), socket.writableLength < SOCKET_HIGH_WATER);
        if (!out) break;
        if (out.type === 'write') {
          socket.write(out.bytes);
          transferred(out.bytes.length);
          linkBytes.sent += out.bytes.length;
        } else if (out.type === 'close') {
          this.finish(out.error);
          break;
        } else this.events.onOutput(out, this);
      }
    } finally {
      socket.uncork();
      this.pumping = false;
      if (linkBytes.sent !== sentBefore) linkIo.writes++;
    }
    if (!this.closed) this.deadlines.schedule(this, this.connection.nextDeadline());
  }

  /** Ends the connection from this side (sends CLOSE when established). */
  close(code: string = ProtocolCode.CLOSED, graceMs?: number): void {
    if (graceMs !== undefined) this.graceMs = graceMs;
    this.connection.close(code);
    this.pump();
  }

  /** How long the socket may take to deliver its last writes after the close (a hand-over: all of them). */
  private graceMs = 2_000;

  /** The socket ended or failed: nothing more can be sent. */
  lost(err?: Error): void {
    if (this.closed) return;
    this.connection.abort(ProtocolCode.CLOSED, err);
    this.pump();
    if (!this.closed) this.finish(this.connection.closeError!);
  }

  private finish(error: ProtocolError): void {
    if (this.closed) return;
    this.closed = true;
    this.deadlines.schedule(this, undefined);
    const socket = this.socket;
    socket.end();
    // Give the last writes (a CLOSE record, a refusal) a moment, then make sure the socket is gone.
    if (!socket.destroyed) {
      const t = setTimeout(() => socket.destroy(), this.graceMs);
      t.unref();
      socket.once('close', () => clearTimeout(t));
    }
    this.events.onClose(error, this);
  }
}

/**
 * The deadlines of every link on one clock, in a min-heap keyed by when each wants `poll()` again, under a
 * single Node timer set for the earliest. A deadline that moves later (the usual case: each heartbeat pushes
 * the idle deadline back) costs nothing: the link keeps its earlier place, and when that comes it is filed
 * again at its real deadline without being pumped. Such stale places within REFILE_AHEAD of a wake-up are
 * refiled in the same wake-up, so 20,000 idle links cost about one wake-up per REFILE_AHEAD, not one per
 * link. Only a deadline that moves earlier re-sorts the heap at once.
 */
const REFILE_AHEAD = 1000;

class Deadlines {
  private readonly heap: Link[] = [];
  private timer: NodeJS.Timeout | undefined;
  private timerAt = Infinity;
  private firing = false;
  private readonly now: () => number;

  constructor(now: () => number) {
    this.now = now;
  }

  /** Sets `link`'s deadline; undefined takes it out. */
  schedule(link: Link, at: number | undefined): void {
    link.deadline = at;
    if (at === undefined) {
      if (link.heapIndex >= 0) this.remove(link);
      return;
    }
    if (link.heapIndex < 0) {
      link.dueAt = at;
      link.heapIndex = this.heap.length;
      this.heap.push(link);
      this.up(link.heapIndex);
    } else if (at < link.dueAt) {
      link.dueAt = at;
      this.up(link.heapIndex);
    }
    this.arm();
  }

  private fire(): void {
    this.timer = undefined;
    this.timerAt = Infinity;
    const now = this.now();
    this.firing = true;
    try {
      // Bounded: each turn either pumps a link (which files it again after `now`, or takes it out) or
      // files a stale place at its real deadline; anything left waits for the next timer.
      for (let turns = this.heap.length * 2 + 16; turns > 0; turns--) {
        const link = this.heap[0];
        if (link === undefined || link.dueAt > now + REFILE_AHEAD) break;
        if (link.deadline === undefined || link.deadline <= now) {
          this.remove(link);
          link.pump();
        } else if (link.dueAt < link.deadline) {
          link.dueAt = link.deadline;
          this.down(0);
        } else break; // the earliest is exact and still to come
      }
    } finally {
      this.firing = false;
      this.arm();
    }
  }

  /** Sets the timer for the earliest deadline unless it is already set no later (an early wake-up is harmless). */
  private arm(): void {
    const first = this.heap[0];
    if (this.firing || first === undefined || first.dueAt >= this.timerAt) return;
    const at = first.dueAt;
    clearTimeout(this.timer);
    this.timerAt = at;
    this.timer = setTimeout(() => this.fire(), Math.max(0, at - this.now()));
    this.timer.unref();
  }

  private remove(link: Link): void {
    const i = link.heapIndex;
    const last = this.heap.pop()!;
    link.heapIndex = -1;
    if (last === link) return;
    this.heap[i] = last;
    last.heapIndex = i;
    this.down(i);
    this.up(last.heapIndex);
  }

  private up(i: number): void {
    const h = this.heap;
    const link = h[i]!;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      const p = h[parent]!;
      if (p.dueAt <= link.dueAt) break;
      h[i] = p;
      p.heapIndex = i;
      i = parent;
    }
    h[i] = link;
    link.heapIndex = i;
  }

  private down(i: number): void {
    const h = this.heap;
    const link = h[i]!;
    for (;;) {
      let child = 2 * i + 1;
      if (child >= h.length) break;
      if (child + 1 < h.length && h[child + 1]!.dueAt < h[child]!.dueAt) child++;
      const c = h[child]!;
      if (c.dueAt >= link.dueAt) break;
      h[i] = c;
      c.heapIndex = i;
      i = child;
    }
    h[i] = link;
    link.heapIndex = i;
  }
}

/** Weak: a clock made per link must not keep its heap alive after its links are gone. */
const deadlinesByClock = new WeakMap<() => number, Deadlines>();

function deadlinesFor(now: () => number): Deadlines {
  let d = deadlinesByClock.get(now);
  if (d === undefined) {
    d = new Deadlines(now);
    deadlinesByClock.set(now, d);
  }
  return d;
}
