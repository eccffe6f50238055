/**
 * The sender API's refusals and the limits every upload path checks (single POST in http.ts, batches in
 * batch.ts): one error type, answered as `{ error: { code, message } }` with its status and headers.
 */
import { DropwireError } from '../shared/errors.js';

/** A file name is 1 to this many bytes, without NUL. */
export const MAX_FILENAME_BYTES = 1024;
/** `deadline` when the sender gives none, in seconds. */
export const DEFAULT_DEADLINE_S = 120;
/** The most a `deadline` or `ttl` may say, in seconds (ten years). */
export const MAX_SECONDS = 10 * 365 * 86400;

export class HttpError extends DropwireError {
  readonly status: number;
  readonly headers: Record<string, string>;
  constructor(status: number, code: string, message: string, headers: Record<string, string> = {}) {
    super(code, message);
    this.status = status;
    this.headers = headers;
  }
}
