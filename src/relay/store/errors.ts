/** The errors every store backend raises, each with a code from `StoreErrorCode`. */
import { DropwireError } from '../../shared/errors.js';
import { StoreErrorCode } from './types.js';

export function failed(stage: string, err: unknown): DropwireError {
  const why = err instanceof Error ? err.message : String(err);
  return new DropwireError(StoreErrorCode.FAILED, `${stage}: ${why}`, { cause: err });
}

export function invalid(message: string, cause?: unknown): DropwireError {
  return new DropwireError(StoreErrorCode.INVALID, message, { cause });
}

export function closedError(): DropwireError {
  return new DropwireError(StoreErrorCode.CLOSED, 'store is closed');
}

/** The store's server cannot be reached (or did not confirm a write); retry later. */
export function downError(stage: string, cause?: unknown): DropwireError {
  const why = cause instanceof Error ? `: ${cause.message}` : '';
  return new DropwireError(StoreErrorCode.DOWN, `${stage}: store unavailable${why}`, { cause });
}

/** JSON text for a detail/result object, checked before it joins a write. */
export function jsonOrNull(value: Record<string, unknown> | undefined, what: string): string | null {
  if (value === undefined) return null;
  try {
    return JSON.stringify(value);
  } catch (err) {
    throw invalid(`${what} is not JSON-serialisable`, err);
  }
}
