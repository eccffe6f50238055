/**
 * The one error base of dropwire. Every error that crosses a module boundary extends it and carries a
 * stable `code` (documented in docs/PROTOCOL.md and the README); callers and tests match on the code,
 * never on the message text.
 */
export class DropwireError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = 'DropwireError';
  }
}

export function isDropwireError(err: unknown, code?: string): err is DropwireError {
  return err instanceof DropwireError && (code === undefined || err.code === code);
}

/** Turns anything thrown into a DropwireError, keeping the original as `cause`. */
export function toDropwireError(err: unknown, code = 'DW_INTERNAL'): DropwireError {
  if (err instanceof DropwireError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new DropwireError(code, message, { cause: err });
}
