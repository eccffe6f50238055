import { DropwireError } from '../shared/errors.js';

/** Every code the protocol core raises (PROTOCOL 10). */
export const ProtocolCode = {
  BAD_MAGIC: 'DW_BAD_MAGIC',
  FRAME_TOO_LARGE: 'DW_FRAME_TOO_LARGE',
  HANDSHAKE_FAILED: 'DW_HANDSHAKE_FAILED',
  HANDSHAKE_TIMEOUT: 'DW_HANDSHAKE_TIMEOUT',
  HANDSHAKE_REFUSED: 'DW_HANDSHAKE_REFUSED',
  BAD_HELLO: 'DW_BAD_HELLO',
  BAD_MAC: 'DW_BAD_MAC',
  BAD_RECORD: 'DW_BAD_RECORD',
  PROTOCOL: 'DW_PROTOCOL',
  IDLE_TIMEOUT: 'DW_IDLE_TIMEOUT',
  SESSION_LOST: 'DW_SESSION_LOST',
  SUPERSEDED: 'DW_SUPERSEDED',
  PEER_CLOSED: 'DW_PEER_CLOSED',
  CLOSED: 'DW_CLOSED',
  BAD_MESSAGE: 'DW_BAD_MESSAGE',
  MESSAGE_TOO_LARGE: 'DW_MESSAGE_TOO_LARGE',
} as const;
export type ProtocolCode = (typeof ProtocolCode)[keyof typeof ProtocolCode];

export class ProtocolError extends DropwireError {
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'ProtocolError';
  }
}
