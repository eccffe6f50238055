import { pino, type Logger } from 'pino';

export type { Logger };

/**
 * JSON-lines logs (pino). `destination` is a file path or 1 for stdout; level from DROPWIRE_LOG_LEVEL.
 * Every message's life is logged with `id` so `dropwire logs --id` can follow one message.
 */
export function createLogger(name: string, destination: string | 1 = 1, level = process.env.DROPWIRE_LOG_LEVEL ?? 'info'): Logger {
  const dest = pino.destination({ dest: destination, sync: true, mkdir: true });
  return pino({ name, level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime }, dest);
}

/** A logger that drops everything (tests, libraries used without a log). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
