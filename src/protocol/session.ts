import { ByteQueue } from './bytes.js';
import { ProtocolCode, ProtocolError } from './errors.js';
import { DEFAULT_SESSION_LIMITS, SESSION_ID_LENGTH, type SessionLimits } from './limits.js';

/** Anything that can be told the session moved on without it (PROTOCOL 5.3: one connection at a time). */
export interface Attachable {
  superseded(): void;
}

/**
 * The resumable part of a conversation (PROTOCOL 5): two byte streams, one per direction, that outlive
 * any one connection. Pure state: no sockets, no timers. A `Connection` attaches to it and pulls bytes to
 * send and pushes bytes received.
 *
 * Outbound, bytes [out.base, out.end) are kept for retransmission; `wire` is the next offset the current
 * connection sends. Inbound, `received` counts bytes delivered upward.
 */
export class Session {
  id: Uint8Array;
  readonly limits: SessionLimits;
  readonly out = new ByteQueue();
  wire = 0;
  acked = 0;
  received = 0;
  /** `received` as last told to the peer (ACK, PING, PONG or handshake). */
  ackSent = 0;
  firstUnackedAt: number | undefined;
  /** Times this session was attached to a connection; 0 until first established. */
  epoch = 0;
  /** Set when bytes not yet sent had to be dropped: the stream cannot continue (PROTOCOL 5.6). */
  overrun = false;
  closed = false;
  private wantDrain = false;
  private current: Attachable | undefined;

  constructor(options: { id?: Uint8Array; limits?: Partial<SessionLimits> } = {}) {
    this.id = options.id ?? new Uint8Array(SESSION_ID_LENGTH);
    this.limits = sessionLimits(options.limits);
  }

  /** Unacknowledged outbound bytes held (the replay buffer's size). */
  get buffered(): number {
    return this.out.length;
  }

  get established(): boolean {
    return this.epoch > 0;
  }

  /**
   * Queues bytes of this side's stream. The session keeps a reference (the caller must not change the
   * bytes afterwards). Returns false when the replay buffer is at or above its high-water mark: wait for
   * `drain`. Writing on regardless drops the oldest unacknowledged bytes once the buffer is full, and the
   * session is lost if the peer then needs them (PROTOCOL 5.6).
   */
  write(bytes: Uint8Array): boolean {
    if (this.closed) throw new ProtocolError(ProtocolCode.CLOSED, 'session is closed');
    this.out.push(bytes);
    if (this.out.length > this.limits.replayCapacity) {
      this.out.dropTo(this.out.end - this.limits.replayCapacity);
      if (this.wire < this.out.base) this.overrun = true;
    }
    if (this.out.length >= this.limits.highWater) {
      this.wantDrain = true;
      return false;
    }
    return true;
  }

  /** True when a peer that has delivered `peerReceived` bytes of our stream can continue it. */
  canResume(peerReceived: number): boolean {
    // The peer cannot hold more than was put on the wire, nor less than we still keep.
    return !this.overrun && !this.closed && peerReceived >= this.out.base && peerReceived <= this.wire;
  }

  /** PROTOCOL 5.4: the peer acknowledges having delivered `received` bytes of our stream. */
  acknowledge(received: number): void {
    if (received > this.wire) throw new ProtocolError(ProtocolCode.PROTOCOL, `ack ${received} beyond bytes sent ${this.wire}`);
    if (received > this.acked) {
      this.acked = received;
      this.out.dropTo(received);
    }
  }

  /** True once after the buffer fell to the low-water mark following a refused write. */
  takeDrain(): boolean {
    if (this.wantDrain && this.out.length <= this.limits.lowWater) {
      this.wantDrain = false;
      return true;
    }
    return false;
  }

  /** PROTOCOL 5.5: continue on a new connection, re-sending from what the peer says it has. */
  attach(connection: Attachable, peerReceived: number): void {
    if (!this.canResume(peerReceived)) throw new ProtocolError(ProtocolCode.SESSION_LOST, 'peer position outside the replay buffer');
    const old = this.current;
    this.current = connection;
    if (old && old !== connection) old.superseded();
    this.wire = peerReceived;
    this.acknowledge(peerReceived);
    this.epoch++;
  }

  isCurrent(connection: Attachable): boolean {
    return this.current === connection;
  }

  detach(connection: Attachable): void {
    if (this.current === connection) this.current = undefined;
  }

  /** Forgets both streams (a new session will start from zero). */
  reset(id: Uint8Array = new Uint8Array(SESSION_ID_LENGTH)): void {
    const old = this.current;
    this.current = undefined;
    if (old) old.superseded();
    this.id = id;
    this.out.dropTo(this.out.end);
    this.out.base = 0;
    this.out.end = 0;
    this.wire = 0;
    this.acked = 0;
    this.received = 0;
    this.ackSent = 0;
    this.firstUnackedAt = undefined;
    this.epoch = 0;
    this.overrun = false;
    this.wantDrain = false;
    this.closed = false;
  }

  /** Ends the session for good; its current connection is told to close. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    const old = this.current;
    this.current = undefined;
    if (old) old.superseded();
    this.out.dropTo(this.out.end);
  }
}

/** Sessions with the default limits (nearly all) share one frozen object rather than a copy each. */
const SHARED_LIMITS: SessionLimits = Object.freeze({ ...DEFAULT_SESSION_LIMITS });

function sessionLimits(limits: Partial<SessionLimits> | undefined): SessionLimits {
  const l = { ...DEFAULT_SESSION_LIMITS, ...limits };
  if (l.highWater > l.replayCapacity) l.highWater = l.replayCapacity;
  if (l.lowWater > l.highWater) l.lowWater = l.highWater;
  for (const k of Object.keys(l) as (keyof SessionLimits)[]) if (l[k] !== SHARED_LIMITS[k]) return l;
  return SHARED_LIMITS;
}
