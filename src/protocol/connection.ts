import { concat, equal } from './bytes.js';
import type { CryptoBackend, KeyPair } from './crypto.js';
import { ProtocolCode, ProtocolError } from './errors.js';
import { encodeFrame, encodeFrameParts, FrameDecoder } from './frame.js';
import {
  decodeClientHello,
  decodeServerHello,
  encodeClientHello,
  encodeServerHello,
  HelloKind,
  HelloResult,
  type ClientHello,
} from './hello.js';
import {
  DEFAULT_TIMERS,
  MAGIC,
  MAX_DATA_PAYLOAD,
  MAX_FRAME,
  MAX_HANDSHAKE_MESSAGE,
  PROLOGUE,
  SESSION_ID_LENGTH,
  type ConnectionTimers,
} from './limits.js';
import { CipherState, HandshakeState } from './noise.js';
import { COUNTER_LENGTH, decodeRecordParts, encodeCounter, encodeRecord, RecordType } from './records.js';
import type { Session } from './session.js';

/** What a connection asks of the code that drives it (PROTOCOL 8: the poll interface). */
export type Output =
  /** Write these bytes to the socket, in order. */
  | { type: 'write'; bytes: Uint8Array }
  /** The next bytes of the peer's stream, delivered exactly once and in order across reconnects. */
  | { type: 'data'; bytes: Uint8Array }
  /** Responder only: decide with `accept()` or `refuse()`; the handshake waits (its deadline still runs). */
  | { type: 'hello'; remoteStatic: Uint8Array; hello: ClientHello }
  /** The connection carries the session; `resumed` false means both streams started from zero. */
  | { type: 'established'; sessionId: Uint8Array; resumed: boolean; remoteStatic: Uint8Array }
  /** The session's earlier streams are gone: what was in flight must be recovered at message level. */
  | { type: 'lost'; code: string }
  /** The replay buffer fell to its low-water mark: writing may go on. */
  | { type: 'drain' }
  /** Responder, after a HANDOVER (PROTOCOL 7.16 step 8): the initiator's count; this connection sends from it. */
  | { type: 'position'; received: number }
  /** Initiator, HANDOVER: the new node resumed the session; call `swap()` once the old connection has closed. */
  | { type: 'handover-ready' }
  /** Close the socket after the writes already returned; nothing more comes from this connection. */
  | { type: 'close'; error: ProtocolError };

export interface ConnectionOptions {
  crypto: CryptoBackend;
  random: (n: number) => Uint8Array;
  staticKey: KeyPair;
  now: number;
  timers?: Partial<ConnectionTimers>;
  /** Test vectors and fuzzing only: a fixed ephemeral key. */
  ephemeral?: KeyPair;
}

export interface InitiatorOptions extends ConnectionOptions {
  /** The relay's public key, pinned at enrollment (IK pre-message `<- s`). */
  remoteStatic: Uint8Array;
  session: Session;
  /** Strictly increasing per device key; the responder refuses a repeat (PROTOCOL 3.7). */
  timestamp: number;
  enroll?: { name: string; secret: string };
  /** Follow a REDIRECT (PROTOCOL 7.16): take the established session to another node with this request id. */
  handover?: Uint8Array;
}

type State = 'magic' | 'handshake' | 'deciding' | 'established' | 'closed';

/**
 * One TCP (or WebSocket) connection: magic, Noise IK handshake, then encrypted records that carry a
 * `Session`'s streams. Feed it bytes with `receive()`, then call `poll()` until it returns undefined,
 * and call `poll()` again at `nextDeadline()`.
 */
export class Connection {
  readonly role: 'initiator' | 'responder';
  private state: State;
  private readonly crypto: CryptoBackend;
  private readonly timers: ConnectionTimers;
  private readonly frames = new FrameDecoder(MAX_HANDSHAKE_MESSAGE);
  private readonly outputs: Output[] = [];
  /** Dropped once the keys are split: an idle connection keeps only its two cipher states. */
  private hs: HandshakeState | undefined;
  private send: CipherState | undefined;
  private recv: CipherState | undefined;
  private session: Session | undefined;
  private hello: ClientHello | undefined;
  private magicSeen = 0;
  private readonly startedAt: number;
  private lastReceived: number;
  private lastSent: number;
  /** When DATA went out with none unacknowledged before it; undefined while all is acknowledged (4.5). */
  private owedSince: number | undefined;
  private pongDue = false;
  private closeAfterWrite: ProtocolError | undefined;
  /** Initiator: this connection asked HANDOVER. Responder: no DATA until the initiator's first count (7.16). */
  private handover = false;
  private awaitingCount = false;
  /** Initiator, HANDOVER: the answer read, waiting for `swap()`. */
  private swapTo: { received: number } | undefined;
  remoteStatic: Uint8Array | undefined;

  private constructor(role: 'initiator' | 'responder', o: ConnectionOptions, handshake: HandshakeState) {
    this.role = role;
    this.crypto = o.crypto;
    this.timers = connectionTimers(o.timers);
    this.hs = handshake;
    this.startedAt = this.lastReceived = this.lastSent = o.now;
    this.state = role === 'responder' ? 'magic' : 'handshake';
  }

  /** PROTOCOL 3.3: the agent's side. Queues the magic and handshake message 1 at once. */
  static initiator(o: InitiatorOptions): Connection {
    const hs = HandshakeState.initiator({
      crypto: o.crypto,
      prologue: PROLOGUE,
      s: o.staticKey,
      rs: o.remoteStatic,
      random: o.random,
      ...(o.ephemeral ? { e: o.ephemeral } : {}),
    });
    const c = new Connection('initiator', o, hs);
    c.session = o.session;
    c.remoteStatic = o.remoteStatic;
    const s = o.session;
    const resume = s.established && !s.closed;
    c.handover = resume && o.handover !== undefined;
    const hello: ClientHello = {
      kind: c.handover ? HelloKind.HANDOVER : resume ? HelloKind.RESUME : o.enroll ? HelloKind.ENROLL : HelloKind.NEW,
      timestamp: o.timestamp,
      sessionId: resume ? s.id : new Uint8Array(SESSION_ID_LENGTH),
      received: resume ? s.received : 0,
      ...(o.enroll && !resume ? { enroll: o.enroll } : {}),
      ...(c.handover ? { requestId: o.handover! } : {}),
    };
    const msg1 = hs.writeMessage(encodeClientHello(hello)); // -> e, es, s, ss
    c.emitWrite(concat([MAGIC, encodeFrame(msg1)]), o.now);
    return c;
  }

  /** PROTOCOL 3.3: the relay's side, one per accepted socket. */
  static responder(o: ConnectionOptions): Connection {
    const hs = HandshakeState.responder({
      crypto: o.crypto,
      prologue: PROLOGUE,
      s: o.staticKey,
      random: o.random,
      ...(o.ephemeral ? { e: o.ephemeral } : {}),
    });
    return new Connection('responder', o, hs);
  }

  get isClosed(): boolean {
    return this.state === 'closed';
  }

  get isEstablished(): boolean {
    return this.state === 'established';
  }

  receive(bytes: Uint8Array, now: number): void {
    if (this.state === 'closed' || bytes.length === 0) return;
    this.lastReceived = now;
    if (this.state === 'magic') {
      let i = 0;
      while (i < bytes.length && this.magicSeen < MAGIC.length) {
        if (bytes[i] !== MAGIC[this.magicSeen]) {
          this.fail(new ProtocolError(ProtocolCode.BAD_MAGIC, 'not a dropwire peer (bad magic)'));
          return;
        }
        i++;
        this.magicSeen++;
      }
      if (this.magicSeen < MAGIC.length) return;
      this.state = 'handshake';
      bytes = bytes.subarray(i);
    }
    this.frames.push(bytes);
  }

  /** The next thing to do, or undefined when there is nothing until more bytes or `nextDeadline()`. */
  poll(now: number, allowData = true): Output | undefined {
    for (;;) {
      const queued = this.outputs.shift();
      if (queued) return queued;
      if (this.state === 'closed') return undefined;
      if (!this.step(now, allowData)) return this.outputs.shift();
    }
  }

  /** When `poll()` must be called again even if no bytes arrive. */
  nextDeadline(): number | undefined {
    if (this.state === 'closed') return undefined;
    if (this.state !== 'established') return this.startedAt + this.timers.handshakeTimeout;
    let t = this.idleDeadline();
    if (this.role === 'initiator') t = Math.min(t, this.lastSent + this.timers.pingInterval);
    const s = this.session!;
    if (s.firstUnackedAt !== undefined) t = Math.min(t, s.firstUnackedAt + s.limits.ackDelay);
    return t;
  }

  /** Responder, after a `hello` output: carry `session` on this connection (PROTOCOL 3.5). */
  accept(session: Session, now: number): void {
    if (this.state !== 'deciding' || !this.hello) throw new ProtocolError(ProtocolCode.PROTOCOL, 'accept() without a pending hello');
    const h = this.hello;
    if (h.kind === HelloKind.HANDOVER) return this.acceptHandover(session, h, now);
    const resumed = session.established && h.kind === HelloKind.RESUME && equal(session.id, h.sessionId);
    const result = resumed ? HelloResult.RESUMED : h.kind === HelloKind.RESUME ? HelloResult.LOST : HelloResult.NEW;
    const peerReceived = resumed ? h.received : 0;
    if (!resumed && session.established) throw new ProtocolError(ProtocolCode.PROTOCOL, 'a new session must not be established already');
    // Checked before anything is written: the caller must pass a session that can continue (or a new one).
    if (!session.canResume(peerReceived)) throw new ProtocolError(ProtocolCode.PROTOCOL, 'accept() with a session that cannot resume from the peer position');
    const msg2 = this.handshake.writeMessage(encodeServerHello({ result, sessionId: session.id, received: session.received })); // <- e, ee, se
    this.emitWrite(encodeFrame(msg2), now);
    this.session = session;
    this.hello = undefined;
    session.attach(this, peerReceived);
    session.ackSent = session.received;
    this.establish(now, resumed);
  }

  /**
   * PROTOCOL 7.16 step 7: a HANDOVER carries the session handed over by another node. Its result is RESUMED
   * with this side's count; where the initiator's stream goes on is known only from its first counter record
   * (step 8), so no DATA goes out before it.
   */
  private acceptHandover(session: Session, h: ClientHello, now: number): void {
    if (!session.established || session.closed || !equal(session.id, h.sessionId)) throw new ProtocolError(ProtocolCode.PROTOCOL, 'a HANDOVER must be accepted with the session it names');
    const msg2 = this.handshake.writeMessage(encodeServerHello({ result: HelloResult.RESUMED, sessionId: session.id, received: session.received }));
    this.emitWrite(encodeFrame(msg2), now);
    this.session = session;
    this.hello = undefined;
    session.attach(this, session.out.base);
    session.ackSent = session.received;
    this.awaitingCount = true;
    this.establish(now, true);
  }

  /** Responder, after a `hello` output: answer with a refusal code and close (PROTOCOL 3.5). */
  refuse(code: string, now: number): void {
    if (this.state !== 'deciding') throw new ProtocolError(ProtocolCode.PROTOCOL, 'refuse() without a pending hello');
    const msg2 = this.handshake.writeMessage(
      encodeServerHello({ result: HelloResult.REFUSED, sessionId: new Uint8Array(SESSION_ID_LENGTH), received: 0, code }),
    );
    this.emitWrite(encodeFrame(msg2), now);
    this.fail(new ProtocolError(ProtocolCode.HANDSHAKE_REFUSED, `refused: ${code}`, { cause: code }));
  }

  /** Orderly close: tells the peer why (CLOSE record) when the handshake is done. */
  close(code: string = ProtocolCode.CLOSED): void {
    if (this.state === 'closed') return;
    if (this.state === 'established') this.sendRecord([encodeRecord({ type: RecordType.CLOSE, code })], this.lastSent);
    this.fail(new ProtocolError(code, 'closed'));
  }

  /** The transport lost the socket (reset, EOF, error): no CLOSE record can be sent. */
  abort(code: string = ProtocolCode.CLOSED, cause?: unknown): void {
    this.fail(new ProtocolError(code, 'connection lost', { cause }));
  }

  /** Called by the session when another connection took it over. */
  superseded(): void {
    if (this.state !== 'closed') this.fail(new ProtocolError(ProtocolCode.SUPERSEDED, 'session continued on another connection'));
  }

  // --- internals -------------------------------------------------------------------------------

  /** Does one unit of work; false when there was none. */
  private step(now: number, allowData: boolean): boolean {
    try {
      if (this.state !== 'established') {
        if (now >= this.startedAt + this.timers.handshakeTimeout) {
          throw new ProtocolError(ProtocolCode.HANDSHAKE_TIMEOUT, `handshake not finished within ${this.timers.handshakeTimeout} ms`);
        }
        if (this.state === 'handshake') return this.handshakeStep(now);
        if (this.state === 'deciding' && this.frames.buffered > MAX_HANDSHAKE_MESSAGE) {
          throw new ProtocolError(ProtocolCode.PROTOCOL, 'data before the handshake finished');
        }
        return false;
      }
      return this.establishedStep(now, allowData);
    } catch (err) {
      this.fail(asProtocolError(err));
      return true;
    }
  }

  private handshakeStep(now: number): boolean {
    const frame = this.frames.next();
    if (!frame) return false;
    if (this.role === 'responder') {
      let payload: Uint8Array;
      try {
        payload = this.handshake.readMessage(frame); // -> e, es, s, ss
      } catch (err) {
        throw new ProtocolError(ProtocolCode.HANDSHAKE_FAILED, 'msg 1: could not be read', { cause: err });
      }
      const hello = decodeClientHello(payload);
      this.hello = hello;
      this.remoteStatic = this.handshake.remoteStatic;
      this.state = 'deciding';
      this.outputs.push({ type: 'hello', remoteStatic: this.remoteStatic!, hello });
      return true;
    }
    let payload: Uint8Array;
    try {
      payload = this.handshake.readMessage(frame); // <- e, ee, se
    } catch (err) {
      throw new ProtocolError(ProtocolCode.HANDSHAKE_FAILED, 'msg 2: could not be read', { cause: err });
    }
    const h = decodeServerHello(payload);
    const s = this.session!;
    if (h.result === HelloResult.REFUSED) {
      throw new ProtocolError(ProtocolCode.HANDSHAKE_REFUSED, `relay refused: ${h.code}`, { cause: h.code });
    }
    if (this.handover) return this.handedOver(h.result, h.sessionId, h.received, now);
    if (h.result === HelloResult.RESUMED) {
      if (!s.established || !equal(h.sessionId, s.id)) throw new ProtocolError(ProtocolCode.PROTOCOL, 'msg 2: resumed a session not asked for');
      if (h.received > s.out.end) throw new ProtocolError(ProtocolCode.PROTOCOL, 'msg 2: peer claims bytes never sent');
      if (!s.canResume(h.received)) {
        // PROTOCOL 5.6: we no longer hold what the peer needs; tell it, start over on a new connection.
        this.splitKeys();
        this.state = 'established';
        this.session = undefined;
        s.reset();
        this.outputs.push({ type: 'lost', code: ProtocolCode.SESSION_LOST });
        this.close(ProtocolCode.SESSION_LOST);
        return true;
      }
      if (h.received > s.wire) throw new ProtocolError(ProtocolCode.PROTOCOL, 'msg 2: peer claims bytes never sent');
      s.attach(this, h.received);
      s.ackSent = s.received;
      this.establish(now, true);
      return true;
    }
    if (s.established) {
      s.reset(h.sessionId);
      this.outputs.push({ type: 'lost', code: ProtocolCode.SESSION_LOST });
    } else {
      s.id = h.sessionId;
    }
    if (h.received !== 0) throw new ProtocolError(ProtocolCode.PROTOCOL, 'msg 2: new session with a non-zero count');
    s.attach(this, 0);
    this.establish(now, false);
    return true;
  }

  /**
   * PROTOCOL 7.16 steps 7-8, initiator: the new node RESUMED the session. It supersedes the old connection
   * (nothing more is taken from it), and the first record is this side's count, final from here on. Any other
   * answer leaves the session untouched on the old connection.
   */
  private handedOver(result: HelloResult, sessionId: Uint8Array, received: number, now: number): boolean {
    const s = this.session!;
    if (result !== HelloResult.RESUMED || !s.established || s.closed || !equal(sessionId, s.id)) throw new ProtocolError(ProtocolCode.PROTOCOL, 'msg 2: a hand-over must resume the session');
    if (received > s.wire || !s.canResume(received)) throw new ProtocolError(ProtocolCode.PROTOCOL, 'msg 2: hand-over count outside what was sent');
    this.swapTo = { received };
    this.outputs.push({ type: 'handover-ready' });
    return true;
  }

  /**
   * Initiator, after `handover-ready`, once the old connection has closed (everything it carried is
   * delivered): this connection carries the session from here, and its first record is this side's count.
   */
  swap(now: number): void {
    const to = this.swapTo;
    if (!to || this.state !== 'handshake') throw new ProtocolError(ProtocolCode.PROTOCOL, 'swap() without a hand-over ready');
    this.swapTo = undefined;
    const s = this.session!;
    try {
      if (!s.established || s.closed || !s.canResume(to.received)) throw new ProtocolError(ProtocolCode.SESSION_LOST, 'the session changed before the swap');
      s.attach(this, to.received);
      s.ackSent = s.received;
      this.establish(now, true);
      this.sendCounter(RecordType.ACK, now);
    } catch (err) {
      this.fail(asProtocolError(err));
    }
  }

  private splitKeys(): void {
    const { send, recv } = this.handshake.split();
    this.hs = undefined;
    this.send = send;
    this.recv = recv;
    this.frames.maxBody = MAX_FRAME;
  }

  private establish(now: number, resumed: boolean): void {
    this.splitKeys();
    this.state = 'established';
    this.lastReceived = now;
    const s = this.session!;
    this.outputs.push({ type: 'established', sessionId: s.id, resumed, remoteStatic: this.remoteStatic! });
  }

  private establishedStep(now: number, allowData: boolean): boolean {
    const s = this.session!;
    if (!s.isCurrent(this)) {
      this.fail(new ProtocolError(ProtocolCode.SUPERSEDED, 'session continued on another connection'));
      return true;
    }
    if (s.overrun) {
      this.outputs.push({ type: 'lost', code: ProtocolCode.SESSION_LOST });
      this.close(ProtocolCode.SESSION_LOST); // CLOSE record first: the peer must drop the session too
      s.close();
      return true;
    }
    if (now >= this.idleDeadline()) {
      const owed = this.owedSince !== undefined && now < this.lastReceived + this.timers.idleTimeout;
      throw new ProtocolError(ProtocolCode.IDLE_TIMEOUT, owed ? `DATA unacknowledged, nothing received for ${this.timers.ackTimeout} ms` : `nothing received for ${this.timers.idleTimeout} ms`);
    }
    // Inbound first: one record per step.
    const frame = this.frames.nextParts();
    if (frame) {
      this.onRecord(frame, now);
      return true;
    }
    if (this.pongDue) {
      this.pongDue = false;
      this.sendCounter(RecordType.PONG, now);
      return true;
    }
    if (s.firstUnackedAt !== undefined && (s.received - s.ackSent >= s.limits.ackEvery || now >= s.firstUnackedAt + s.limits.ackDelay)) {
      this.sendCounter(RecordType.ACK, now);
      return true;
    }
    if (allowData && !this.awaitingCount && s.wire < s.out.end) {
      // The type byte, then views of the replay buffer: sealed from where the bytes are, never copied.
      const plain = [DATA_TYPE];
      s.wire += s.out.readInto(s.wire, MAX_DATA_PAYLOAD, plain);
      this.sendRecord(plain, now);
      this.owedSince ??= now;
      return true;
    }
    if (this.role === 'initiator' && now >= this.lastSent + this.timers.pingInterval) {
      // PROTOCOL 4.5: a PING only when an answer is needed before the idle deadline; else an ACK, unanswered.
      const t = this.timers;
      this.sendCounter(now - this.lastReceived >= t.idleTimeout - 2 * t.pingInterval ? RecordType.PING : RecordType.ACK, now);
      return true;
    }
    if (s.takeDrain()) {
      this.outputs.push({ type: 'drain' });
      return true;
    }
    return false;
  }

  private onRecord(frame: Uint8Array[], now: number): void {
    recordCounts.opened++;
    let plain: Uint8Array[];
    try {
      plain = this.recv!.decryptParts(EMPTY, frame);
    } catch (err) {
      throw new ProtocolError(ProtocolCode.BAD_MAC, 'record failed authentication', { cause: err });
    }
    const r = decodeRecordParts(plain);
    const s = this.session!;
    switch (r.type) {
      case RecordType.DATA:
        if (s.firstUnackedAt === undefined) s.firstUnackedAt = now;
        if ('bytes' in r) this.deliver(s, r.bytes);
        else for (const bytes of r.parts) this.deliver(s, bytes);
        return;
      case RecordType.PING:
        this.pongDue = true;
        this.counted(s, r.received);
        return;
      case RecordType.ACK:
      case RecordType.PONG:
        this.counted(s, r.received);
        return;
      case RecordType.CLOSE:
        if (r.code === ProtocolCode.SESSION_LOST) {
          s.close();
          this.outputs.push({ type: 'lost', code: r.code });
        }
        this.fail(new ProtocolError(ProtocolCode.PEER_CLOSED, `peer closed: ${r.code}`, { cause: r.code }));
        return;
    }
  }

  private counted(s: Session, received: number): void {
    if (this.awaitingCount) {
      // PROTOCOL 7.16 step 8: the first count after a HANDOVER says where this connection sends from.
      if (received < s.out.base || received > s.out.end) throw new ProtocolError(ProtocolCode.PROTOCOL, `hand-over count ${received} outside ${s.out.base}..${s.out.end}`);
      this.awaitingCount = false;
      s.wire = received;
      this.outputs.push({ type: 'position', received });
    }
    s.acknowledge(received);
    if (s.acked >= s.wire) this.owedSince = undefined;
  }

  /** PROTOCOL 4.5: `idleTimeout` after the last byte received, sooner while sent DATA awaits its ACK. */
  private idleDeadline(): number {
    const idle = this.lastReceived + this.timers.idleTimeout;
    if (this.owedSince === undefined) return idle;
    return Math.min(idle, Math.max(this.lastReceived, this.owedSince) + this.timers.ackTimeout);
  }

  private deliver(s: Session, bytes: Uint8Array): void {
    s.received += bytes.length;
    this.outputs.push({ type: 'data', bytes });
  }

  private sendCounter(type: typeof RecordType.ACK | typeof RecordType.PING | typeof RecordType.PONG, now: number): void {
    const s = this.session!;
    // The scratch plaintext is sealed before sendRecord returns, so one serves every connection.
    encodeCounter(COUNTER_SCRATCH[0]!, type, s.received);
    this.sendRecord(COUNTER_SCRATCH, now);
    s.ackSent = s.received;
    s.firstUnackedAt = undefined;
  }

  /** Seals one record and queues its frame as one write (small records) or a few (PROTOCOL 2.1, 4.1). */
  private sendRecord(plain: readonly Uint8Array[], now: number): void {
    recordCounts.sealed++;
    for (const bytes of encodeFrameParts(this.send!.encryptParts(EMPTY, plain))) this.emitWrite(bytes, now);
  }

  private emitWrite(bytes: Uint8Array, now: number): void {
    this.lastSent = now;
    this.outputs.push({ type: 'write', bytes });
  }

  private fail(error: ProtocolError): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.session?.detach(this);
    this.frames.drain();
    this.closeAfterWrite = error;
    this.outputs.push({ type: 'close', error });
  }

  private get handshake(): HandshakeState {
    if (!this.hs) throw new ProtocolError(ProtocolCode.PROTOCOL, 'the handshake is over');
    return this.hs;
  }

  /** The error this connection closed with, if it did. */
  get closeError(): ProtocolError | undefined {
    return this.closeAfterWrite;
  }
}

/** Transport records sealed and opened by every connection of this process (for benchmarks). */
export const recordCounts = { sealed: 0, opened: 0 };

const EMPTY = new Uint8Array(0);
const DATA_TYPE = Uint8Array.of(RecordType.DATA);
const COUNTER_SCRATCH = [new Uint8Array(COUNTER_LENGTH)];

/** Connections with the default timers (nearly all) share one object rather than a copy each. */
const SHARED_TIMERS: ConnectionTimers = Object.freeze({ ...DEFAULT_TIMERS });

function connectionTimers(timers: Partial<ConnectionTimers> | undefined): ConnectionTimers {
  const merged = { ...DEFAULT_TIMERS, ...timers };
  for (const k of Object.keys(merged) as (keyof ConnectionTimers)[]) if (merged[k] !== SHARED_TIMERS[k]) return merged;
  return SHARED_TIMERS;
}

function asProtocolError(err: unknown): ProtocolError {
  if (err instanceof ProtocolError) return err;
  const code = typeof (err as { code?: unknown })?.code === 'string' ? (err as { code: string }).code : ProtocolCode.PROTOCOL;
  return new ProtocolError(code.startsWith('DW_') ? code : ProtocolCode.PROTOCOL, err instanceof Error ? err.message : String(err), { cause: err });
}
