/**
 * A request body small enough to be kept inline in the store (Content-Length ≤ INLINE_MAX), read without
 * the streaming machinery large bodies need: the chunks are collected by one listener and hashed once.
 * Most messages are this size; per message it saves an async iterator, a promise race per chunk and a
 * hash object.
 */
import { hash } from 'node:crypto';
import type http from 'node:http';
import type { ReceivedBody } from './body-storage.js';

/** Reads `req`'s whole body (a small Content-Length); rejects with `signal`'s reason on abort. */
export function receiveSmallBody(req: http.IncomingMessage, signal: AbortSignal): Promise<ReceivedBody> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason);
    const parts: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer) => {
      parts.push(chunk);
      size += chunk.length;
    };
    const onEnd = () => {
      done();
      // node:http ends the body at Content-Length: fewer bytes means the client went away (signal aborts).
      // A copy of its own: the chunks are views of the socket's read buffers, which must not be kept.
      const body = new Uint8Array(size);
      let at = 0;
      for (const p of parts) {
        body.set(p, at);
        at += p.length;
      }
      resolve({ size, sha256: hash('sha256', body, 'hex'), body });
    };
    const onAbort = () => {
      done();
      reject(signal.reason);
    };
    const done = () => {
      req.off('data', onData);
      req.off('end', onEnd);
      signal.removeEventListener('abort', onAbort);
    };
    req.on('data', onData);
    req.on('end', onEnd);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}
