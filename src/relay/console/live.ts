import type http from 'node:http';
import type { EventFeed } from '../events.js';
import type { Store } from '../store/types.js';

const KEEPALIVE_MS = 15_000;
const BATCH = 500;

/**
 * The console's own event stream (cookie-authenticated, unlike GET /v1/events): every event of the relay,
 * told as its type, device and message id only; the page fetches what it shows. It reads the event log
 * only while a console has it open: nobody connected, no listener on the feed, no work.
 */
export async function consoleEvents(
  req: http.IncomingMessage,
  res: http.ServerResponse,
  o: { store: Store; feed: EventFeed; stillValid: () => Promise<boolean> },
): Promise<void> {
  // Last-Event-ID when the browser reconnects; else `after`, the last event the page was rendered with.
  const lastId = req.headers['last-event-id'];
  const from = (Array.isArray(lastId) ? lastId[0] : lastId) ?? new URL(req.url ?? '/', 'http://relay').searchParams.get('after') ?? undefined;
  let cursor = from !== undefined && /^\d{1,15}$/.test(from) ? Number(from) : await o.store.lastEventSeq();
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store', connection: 'keep-alive', 'x-accel-buffering': 'no' });
  res.write('retry: 2000\n: dropwire console events\n\n');
  let open = true;
  let wake: (() => void) | undefined;
  let appended = false;
  const onAppended = () => {
    appended = true;
    wake?.();
  };
  o.feed.on('appended', onAppended);
  // Every keepalive also checks that the session still holds (its admin token may have been removed).
  const keepalive = setInterval(() => {
    res.write(': keepalive\n\n');
    o.stillValid().then(
      (ok) => {
        if (!ok) res.destroy();
      },
      () => {},
    );
  }, KEEPALIVE_MS);
  res.on('close', () => {
    open = false;
    wake?.();
  });
  try {
    while (open) {
      appended = false;
      const batch = await o.store.eventsAfter(cursor, BATCH);
      for (const e of batch) {
        cursor = e.seq;
        res.write(`id: ${e.seq}\nevent: ${e.type}\ndata: ${JSON.stringify({ device: e.device, ...(e.messageId ? { id: e.messageId } : {}) })}\n\n`);
      }
      if (batch.length === BATCH) continue;
      if (appended) {
        appended = false; // something came while reading: read again before waiting
        continue;
      }
      await new Promise<void>((resolve) => {
        wake = resolve;
        setTimeout(resolve, KEEPALIVE_MS).unref();
      });
      wake = undefined;
    }
  } catch {
    res.destroy(); // the store is away: the browser reconnects (retry) and resumes from Last-Event-ID
  } finally {
    clearInterval(keepalive);
    o.feed.off('appended', onAppended);
    res.end();
  }
}
