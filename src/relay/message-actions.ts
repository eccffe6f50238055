import { DropwireError } from '../shared/errors.js';
import type { Logger } from '../shared/log.js';
import type { BodyStorage } from './body-storage.js';
import type { EventFeed } from './events.js';
import type { Hub, StatusEvent } from './hub.js';
import type { HistoryEntry, MessageRecord, MessageStatus, Store } from './store/types.js';

/**
 * A sender's (or the operator's) second thoughts about one message: cancel it before the host has it, or
 * queue a failed one again as a new message linked to the old. Used by the HTTP API, its admin side, and
 * the CLI when no relay runs on the data folder.
 */

/** Statuses a message can be retried from. */
export const RETRYABLE: ReadonlySet<MessageStatus> = new Set(['failed', 'rejected', 'expired']);
/**
 * Idempotency keys the relay gives retries: one retry per message, however often it is asked for (a second
 * ask answers the first retry). Senders may not use keys with this prefix.
 */
export const RESERVED_KEY_PREFIX = 'dropwire:';
const retryKey = (id: string) => `${RESERVED_KEY_PREFIX}retry:${id}`;

export interface MessageActionDeps {
  store: Store;
  blobs: BodyStorage;
  /** The live hub, when the relay runs in this process; without it only `queued` messages can be cancelled. */
  hub?: Hub;
  feed?: EventFeed;
  log?: Logger;
  now: () => number;
  newId: (now: number) => string;
}

const tooLate = (m: Pick<MessageRecord, 'id'>, why: string) => new DropwireError('DW_TOO_LATE', `message ${m.id} can no longer be cancelled: ${why}`);

/**
 * Cancels a message that has not reached the host. The hub first stops it for good (`Hub.stop`): granted
 * only while the agent cannot hold the whole file, so a cancelled message never reaches a handler.
 * Cancelling a cancelled message answers it again.
 */
export async function cancelMessage(d: MessageActionDeps, m: MessageRecord, by: string): Promise<MessageRecord> {
  if (m.status === 'cancelled') return m;
  if (m.status !== 'queued' && m.status !== 'sent') throw tooLate(m, `it is already ${m.status}`);
  const granted = d.hub ? d.hub.stop(m) : m.status === 'queued';
  if (!granted) throw tooLate(m, 'all of it was sent to the host, which may hold it');
  const at = d.now();
  const detail = { reason: `cancelled by ${by}` };
  const [applied] = await d.store.setStatus([{ id: m.id, status: 'cancelled', at, detail }]);
  const after = (await d.store.getMessage(m.id)) ?? m;
  if (!applied && after.status !== 'cancelled') throw tooLate(m, `it is already ${after.status}`);
  if (applied) {
    d.feed?.notify();
    d.log?.info({ id: m.id, to: m.to, by }, 'message cancelled');
    d.hub?.emit('status', { id: m.id, to: m.to, from: m.from, status: 'cancelled', at, detail } satisfies StatusEvent);
  }
  return after;
}

/** A retried large body is copied in pieces of this size. */
const COPY_CHUNK = 1024 * 1024;

/** Queues a failed, rejected or expired message again as a new message (`retryOf` the old one). */
export async function retryMessage(d: MessageActionDeps, old: MessageRecord): Promise<{ message: MessageRecord; created: boolean; body?: Uint8Array }> {
  if (!RETRYABLE.has(old.status)) {
    throw new DropwireError('DW_NOT_RETRYABLE', `only failed, rejected or expired messages can be retried; ${old.id} is ${old.status}`);
  }
  if (!(await d.store.getDevice(old.to))) throw new DropwireError('DW_UNKNOWN_DEVICE', `no device named '${old.to}'`);
  const now = d.now();
  const id = d.newId(now);
  let body: Uint8Array | undefined;
  let bodyPath: string | undefined;
  if (old.inline) {
    body = await d.store.readInlineBody(old.id);
    if (!body) throw new DropwireError('DW_BODY_MISSING', `the body of ${old.id} is no longer stored`);
  } else {
    // A copy through the storage itself (disk or Redis), checked against the hash the message carries.
    const copy = await d.blobs.receive(d.blobs.read(old.bodyPath!, 0, old.size, COPY_CHUNK), id, old.size);
    if (copy.bodyPath === undefined || copy.sha256 !== old.sha256) {
      if (copy.bodyPath !== undefined) await d.blobs.remove(copy.bodyPath);
      throw new DropwireError('DW_BODY_MISSING', `the body of ${old.id} is no longer stored whole`);
    }
    bodyPath = copy.bodyPath;
  }
  const { message, created } = await d.store.enqueue({
    id,
    to: old.to,
    from: old.from,
    filename: old.filename,
    size: old.size,
    sha256: old.sha256,
    ...(body ? { body } : { bodyPath: bodyPath! }),
    idempotencyKey: retryKey(old.id),
    retryOf: old.id,
    createdAt: now,
    // The same time budgets as the first attempt had, counted from now.
    ...(old.deadlineAt !== undefined ? { deadlineAt: now + (old.deadlineAt - old.createdAt) } : {}),
    ...(old.expiresAt !== undefined ? { expiresAt: now + (old.expiresAt - old.createdAt) } : {}),
  });
  if (!created && bodyPath) await d.blobs.remove(bodyPath);
  if (created) {
    d.log?.info({ id, retryOf: old.id, to: old.to }, 'message queued again');
    d.hub?.notify(old.to, message, body);
    d.feed?.notify();
  }
  return { message, created, ...(body ? { body } : {}) };
}

/** The links between retries, read from the history (PROTOCOL-free: store history details). */
export function retryLinks(history: HistoryEntry[]): { retryOf?: string; retriedAs?: string } {
  let retryOf: string | undefined;
  let retriedAs: string | undefined;
  for (const h of history) {
    if (typeof h.detail?.retryOf === 'string') retryOf ??= h.detail.retryOf;
    if (typeof h.detail?.retriedAs === 'string') retriedAs = h.detail.retriedAs;
  }
  return { ...(retryOf ? { retryOf } : {}), ...(retriedAs ? { retriedAs } : {}) };
}
