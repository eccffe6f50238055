import fs from 'node:fs';
import { DropwireError } from '../shared/errors.js';
import { runningRelay } from './admin.js';
import { Blobs } from './blobs.js';
import { messageId } from './http.js';
import { cancelMessage, retryMessage, type MessageActionDeps } from './message-actions.js';
import { adminToken, relayPaths } from './relay.js';
import { openSqliteStore } from './store/sqlite.js';

export type MessageAction = 'cancel' | 'retry';

/**
 * `dropwire relay message cancel|retry ID` on the relay host: through the running relay's admin API (its
 * hub knows what is being streamed), or on the store directly when no relay runs on `dataDir`.
 */
export async function messageCommand(dataDir: string, action: MessageAction, id: string): Promise<Record<string, unknown>> {
  const paths = relayPaths(dataDir);
  if (!fs.existsSync(paths.db)) {
    throw new DropwireError('DW_NO_RELAY_DATA', `no relay data in ${dataDir} (looked for ${paths.db}); pass --data DIR of the relay`);
  }
  const info = runningRelay(dataDir);
  if (info) {
    const res = await fetch(`http://${info.http}/v1/admin/messages/${encodeURIComponent(id)}/${action}`, {
      method: 'POST',
      headers: { authorization: `Bearer ${adminToken(dataDir)}` },
      signal: AbortSignal.timeout(10_000),
    });
    const body = (await res.json()) as Record<string, unknown> & { error?: { code: string; message: string } };
    if (body.error) throw new DropwireError(body.error.code, body.error.message);
    return body;
  }
  const store = await openSqliteStore({ path: paths.db });
  try {
    const d: MessageActionDeps = { store, blobs: new Blobs(paths.blobs, { keepTmp: true }), now: Date.now, newId: messageId };
    const m = await store.getMessage(id);
    if (!m) throw new DropwireError('DW_NOT_FOUND', `no message '${id}'`);
    if (action === 'cancel') {
      const after = await cancelMessage(d, m, 'operator');
      return { id: after.id, status: after.status, to: after.to };
    }
    const { message, created } = await retryMessage(d, m);
    return { id: message.id, status: message.status, to: message.to, retryOf: m.id, created };
  } finally {
    await store.close();
  }
}
