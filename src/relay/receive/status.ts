import type { EventFeed } from '../events.js';
import type { Hub, StatusEvent } from '../hub.js';
import type { MessageRecord, MessageStatus, Store } from '../store/types.js';

/**
 * A status change of a message for a site (pushed or pulled): stored with its history and event, told to the
 * event feed and to the hub's listeners (WATCH, GET ?wait), as an agent's report would be.
 */
export async function setSiteStatus(d: { store: Store; hub: Hub; feed: EventFeed; now: () => number }, m: MessageRecord, status: MessageStatus, result?: Record<string, unknown>): Promise<boolean> {
  const at = d.now();
  const [applied] = await d.store.setStatus([{ id: m.id, status, at, ...(result ? { detail: result, result } : {}) }]);
  if (applied) {
    d.feed.notify();
    d.hub.emit('status', { id: m.id, to: m.to, from: m.from, status, at, ...(result ? { detail: result } : {}) } satisfies StatusEvent);
  }
  return applied === true;
}

/** Headers that describe a file for a site, pushed or pulled (README "Sites that receive"). */
export function fileHeaders(m: MessageRecord): Record<string, string> {
  return {
    'content-type': 'application/octet-stream',
    'dropwire-id': m.id,
    'dropwire-from': m.from,
    'dropwire-filename': encodeURIComponent(m.filename),
    'dropwire-sha256': m.sha256,
    'dropwire-size': String(m.size),
  };
}
