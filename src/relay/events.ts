import { EventEmitter } from 'node:events';
import type { RelayEvent, TokenRecord } from './store/types.js';

/** Compiled scopes: every POST and every event shown to a stream or webhook asks, with a handful of scopes. */
const compiled = new Map<string, RegExp>();

/** `*` and `?` globs on device names, for token scopes. */
export function scopeAllows(scope: string, device: string): boolean {
  if (scope === '*') return true;
  let re = compiled.get(scope);
  if (!re) {
    re = new RegExp(`^${scope.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.')}$`);
    if (compiled.size >= 1_000) compiled.clear();
    compiled.set(scope, re);
  }
  return re.test(device);
}

/**
 * What a sender token sees of the event log (webhooks and GET /v1/events alike): events of the messages
 * it sent, and presence of the devices it may send to.
 */
export function visibleTo(token: Pick<TokenRecord, 'name' | 'to'>, e: RelayEvent): boolean {
  if (e.messageId !== undefined) return e.sender === token.name;
  return scopeAllows(token.to, e.device);
}

/** The JSON an event is delivered as (webhook body, SSE data). */
export function eventBody(e: RelayEvent): Record<string, unknown> {
  return { id: e.seq, type: e.type, at: new Date(e.at).toISOString(), device: e.device, ...e.data };
}

/** Wakes the readers of the event log (SSE streams, webhook dispatch) when something was appended. */
export class EventFeed extends EventEmitter {
  notify(): void {
    this.emit('appended');
  }
}
