import fs from 'node:fs';
import path from 'node:path';
import { DropwireError } from '../../shared/errors.js';
import { paths } from '../config.js';
import { compileGlob } from '../rules.js';

/** One outbox folder (config.json `outboxes`, `dropwire outbox add`). */
export interface OutboxSpec {
  dir: string;
  to: string;
  /** Only files whose name matches (default: all). */
  match?: string;
  /** Once final at the destination: moved into `sent/` (or `failed/`), or deleted when handled. */
  after: 'sent' | 'delete';
  seal?: boolean;
}

/** Reads and checks `outboxes` in config.json (DW_BAD_CONFIG names the entry); none when absent. */
export function loadOutboxes(home: string): OutboxSpec[] {
  const file = paths(home).config;
  let raw: { outboxes?: unknown };
  try {
    raw = JSON.parse(fs.readFileSync(file, 'utf8')) as { outboxes?: unknown };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw new DropwireError('DW_BAD_CONFIG', `${file}: not valid JSON (${(err as Error).message})`, { cause: err });
  }
  return validateOutboxes(raw.outboxes ?? [], file);
}

export function validateOutboxes(value: unknown, where = 'outboxes'): OutboxSpec[] {
  if (!Array.isArray(value)) throw new DropwireError('DW_BAD_CONFIG', `${where}: 'outboxes' must be a list`);
  const seen = new Set<string>();
  return value.map((v: unknown, i) => {
    const bad = (why: string) => new DropwireError('DW_BAD_CONFIG', `${where}: outboxes[${i}] ${why}`);
    if (typeof v !== 'object' || v === null) throw bad('must be an object');
    const o = v as Record<string, unknown>;
    if (typeof o.dir !== 'string' || !path.isAbsolute(o.dir)) throw bad("needs 'dir', an absolute folder path");
    if (seen.has(o.dir)) throw bad(`repeats the folder ${o.dir}`);
    seen.add(o.dir);
    if (typeof o.to !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(o.to)) throw bad("needs 'to', a device or site name");
    if (o.match !== undefined) {
      if (typeof o.match !== 'string' || o.match === '') throw bad("'match' must be a glob");
      compileGlob(o.match);
    }
    const after = o.after ?? 'sent';
    if (after !== 'sent' && after !== 'delete') throw bad("'after' must be 'sent' or 'delete'");
    if (o.seal !== undefined && typeof o.seal !== 'boolean') throw bad("'seal' must be true or false");
    return { dir: o.dir, to: o.to, ...(o.match ? { match: o.match as string } : {}), after, ...(o.seal ? { seal: true } : {}) };
  });
}
