/** Every limit of the wire protocol, named once (PROTOCOL 9). Sizes in bytes, times in milliseconds. */

/** PROTOCOL 1.2: what the initiator sends before anything else. */
export const MAGIC = Uint8Array.of(0x44, 0x57, 0x00, 0x01); // "DW" 0x00 version 1
export const PROTOCOL_VERSION = 1;
/** PROTOCOL 3.1: Noise prologue, binds the version into the handshake hash. */
export const PROLOGUE = new TextEncoder().encode('dropwire/1');

/** PROTOCOL 2.1: a frame body is at most this long (the u16 length prefix cannot say more). */
export const MAX_FRAME = 65535;
/** PROTOCOL 3.2: handshake messages are much smaller than frames; anything larger is refused. */
export const MAX_HANDSHAKE_MESSAGE = 1024;
export const TAG_LENGTH = 16;
/** PROTOCOL 4.1: plaintext of one record. */
export const MAX_RECORD_PLAINTEXT = MAX_FRAME - TAG_LENGTH;
/** PROTOCOL 4.2: payload of one DATA record (type byte excluded). */
export const MAX_DATA_PAYLOAD = MAX_RECORD_PLAINTEXT - 1;

export const SESSION_ID_LENGTH = 16;
export const MAX_ENROLL_FIELD = 255;

/** PROTOCOL 6: application message limits. */
export const MAX_MESSAGE_HEADER = 16 * 1024;
export const MAX_MESSAGE_BODY = 1024 * 1024;

export interface SessionLimits {
  /** Unacknowledged outbound bytes kept for retransmission; beyond it the oldest are dropped (PROTOCOL 5.6). */
  replayCapacity: number;
  /** `write()` returns false at or above this many unacknowledged bytes. */
  highWater: number;
  /** `drain` is emitted when unacknowledged bytes fall to this after a refused write. */
  lowWater: number;
  /** Send an ACK once this many bytes were delivered upward since the last one. */
  ackEvery: number;
  /** ...or once this long has passed since the first unacknowledged byte. */
  ackDelay: number;
}

export interface ConnectionTimers {
  /** PROTOCOL 3.6: the handshake must finish within this time of the connection's start. */
  handshakeTimeout: number;
  /**
   * PROTOCOL 4.5: the initiator sends a heartbeat when nothing was sent for this long: a PING when it has
   * received nothing for `idleTimeout - 2 * pingInterval` (an answer is needed before the idle deadline),
   * else an ACK, which the peer does not answer.
   */
  pingInterval: number;
  /** PROTOCOL 4.5: close when nothing was received for this long. */
  idleTimeout: number;
  /**
   * PROTOCOL 4.5: while DATA this side sent is unacknowledged, also close when nothing was received for this
   * long since it was sent (the peer acknowledges within `ackDelay`): it bounds a long `idleTimeout`.
   */
  ackTimeout: number;
}

export const DEFAULT_SESSION_LIMITS: SessionLimits = {
  replayCapacity: 8 * 1024 * 1024,
  highWater: 4 * 1024 * 1024,
  lowWater: 1024 * 1024,
  ackEvery: 128 * 1024,
  ackDelay: 50,
};

export const DEFAULT_TIMERS: ConnectionTimers = {
  handshakeTimeout: 10_000,
  pingInterval: 10_000,
  idleTimeout: 25_000,
  ackTimeout: 25_000,
};

/**
 * PROTOCOL 4.5: an initiator's timers on a raw TCP connection with TCP keep-alive on its socket
 * (`TCP_KEEPALIVE_DELAY`): a heartbeat every 20 s keeps the responder's 25 s idle deadline away, and only
 * every third one is a PING (silent for 60 s = 100 − 2 × 20): the kernel's keep-alive probes tell a dead
 * host or path within 20 s, so a PONG is only needed to tell a relay process that hangs. While DATA is
 * unacknowledged (no keep-alive probes then), `ackTimeout` (25 s) applies.
 */
export const TCP_INITIATOR_TIMERS: Pick<ConnectionTimers, 'pingInterval' | 'idleTimeout'> = {
  pingInterval: 20_000,
  idleTimeout: 100_000,
};

/** PROTOCOL 4.5: seconds of silence before the kernel's first keep-alive probe (then 10 probes 1 s apart). */
export const TCP_KEEPALIVE_DELAY = 10_000;

/** PROTOCOL 7.14: bytes of an upload an agent may send beyond the relay's last SEND_ACK `have`. */
export const SEND_WINDOW = 4 * 1024 * 1024;
