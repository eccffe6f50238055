import fs from 'node:fs';
import tls from 'node:tls';
import { DropwireError } from '../shared/errors.js';
import type { Logger } from '../shared/log.js';

/** How often the certificate and key files are checked for changes. */
export const TLS_WATCH_INTERVAL_MS = 1_000;
/** A change is acted on once the files have been still this long (a renewal writes cert and key apart). */
export const TLS_SETTLE_MS = 300;

export interface TlsFilesOptions {
  certFile: string;
  keyFile: string;
  log: Logger;
}

/**
 * The HTTPS port's certificate and key, from files: read at start (a bad pair stops the relay with
 * DW_BAD_TLS), read again on `reload()` (SIGHUP) and when either file changes. A new pair is checked
 * with `tls.createSecureContext` before it replaces the old one, so a half-renewed pair leaves the old one
 * in force; connections already open keep the context they were made with.
 */
export class TlsFiles {
  private readonly o: TlsFilesOptions;
  private apply: ((pair: { cert: Buffer; key: Buffer }) => void) | undefined;
  private settle: NodeJS.Timeout | undefined;
  private watching = false;
  /** Reloads that took effect (for tests and the log). */
  reloads = 0;

  constructor(o: TlsFilesOptions) {
    this.o = o;
  }

  /** The current pair, checked; throws DW_BAD_TLS. */
  read(): { cert: Buffer; key: Buffer } {
    let pair: { cert: Buffer; key: Buffer };
    try {
      pair = { cert: fs.readFileSync(this.o.certFile), key: fs.readFileSync(this.o.keyFile) };
    } catch (err) {
      throw new DropwireError('DW_BAD_TLS', `cannot read the TLS certificate or key: ${(err as Error).message}`, { cause: err });
    }
    try {
      tls.createSecureContext(pair);
    } catch (err) {
      throw new DropwireError('DW_BAD_TLS', `${this.o.certFile} and ${this.o.keyFile} are not a usable certificate and key: ${(err as Error).message}`, { cause: err });
    }
    return pair;
  }

  /** Calls `apply` with each new pair from now on, and watches the files. */
  watch(apply: (pair: { cert: Buffer; key: Buffer }) => void): void {
    this.apply = apply;
    if (this.watching) return;
    this.watching = true;
    const changed = () => {
      clearTimeout(this.settle);
      this.settle = setTimeout(() => this.reload('file changed'), TLS_SETTLE_MS);
      this.settle.unref();
    };
    for (const f of [this.o.certFile, this.o.keyFile]) fs.watchFile(f, { interval: TLS_WATCH_INTERVAL_MS, persistent: false }, changed);
  }

  /** Reads the pair again; a bad one is logged and the current one stays. Returns whether it took effect. */
  reload(why = 'SIGHUP'): boolean {
    if (!this.apply) return false;
    try {
      this.apply(this.read());
      this.reloads++;
      this.o.log.info({ why, cert: this.o.certFile }, 'TLS certificate reloaded');
      return true;
    } catch (err) {
      this.o.log.error({ err, why }, 'TLS certificate not reloaded; the previous one stays in use');
      return false;
    }
  }

  close(): void {
    clearTimeout(this.settle);
    if (!this.watching) return;
    this.watching = false;
    for (const f of [this.o.certFile, this.o.keyFile]) fs.unwatchFile(f);
  }
}
