import { EventEmitter } from 'node:events';
import type http from 'node:http';
import type net from 'node:net';
import { WebSocket, WebSocketServer, type RawData } from 'ws';
import { DropwireError } from '../shared/errors.js';
import type { ByteStream } from './stream.js';

/** PROTOCOL 11.1: the path agents open on the relay's HTTP port. */
export const CONNECT_PATH = '/v1/connect';
/** PROTOCOL 11.2: no binary message is larger; a receiver closes with 1009 beyond (bounds what `ws` buffers). */
export const MAX_WS_MESSAGE = 1024 * 1024;
/** PROTOCOL 11.3: the close code for a text message (RFC 6455 7.4.1); `ws` closes with 1009 for one too big. */
export const WS_UNSUPPORTED_DATA = 1003;

/** 'drain' is emitted once the bytes waiting below the WebSocket fall under this after a write left some. */
export const WS_DRAIN_BELOW = 256 * 1024;

/** Options both sides give `ws`: no compression (records are encrypted, so they do not compress). */
const WS_OPTIONS = { perMessageDeflate: false, maxPayload: MAX_WS_MESSAGE } as const;

/** The stream a WebSocket feeds, for the listeners below, which every WebSocket shares (no closures per connection). */
const STREAM = Symbol('dropwire.stream');
type StreamedWebSocket = WebSocket & { [STREAM]?: WebSocketStream };

function onMessage(this: StreamedWebSocket, data: RawData, isBinary: boolean): void {
  this[STREAM]?.received(data as Buffer, isBinary);
}

function onError(this: StreamedWebSocket, err: Error): void {
  this[STREAM]?.emit('error', err);
}

function onClose(this: StreamedWebSocket): void {
  this[STREAM]?.closed();
}

/**
 * A WebSocket as a `ByteStream` (PROTOCOL 11.2): each `write` becomes one binary message and each binary
 * message received is handed on as 'data'; message boundaries mean nothing. Writes between `cork` and
 * `uncork` leave in one message, so a pump's batch of records costs one frame header, not one per record.
 * 'drain' follows once `bufferedAmount` has fallen below WS_DRAIN_BELOW, so the link refills the socket
 * before it runs dry.
 */
export class WebSocketStream extends EventEmitter implements ByteStream {
  readonly ws: WebSocket;
  readonly remoteAddress: string | undefined;
  readonly remotePort: number | undefined;
  bytesWritten = 0;
  private corked = 0;
  private pending: Uint8Array[] = [];
  private pendingBytes = 0;
  private waitingDrain = false;
  private ended = false;
  private gone = false;

  constructor(ws: WebSocket, remote: { remoteAddress?: string | undefined; remotePort?: number | undefined } = {}) {
    super();
    this.ws = ws;
    this.remoteAddress = remote.remoteAddress;
    this.remotePort = remote.remotePort;
    ws.binaryType = 'nodebuffer';
    (ws as StreamedWebSocket)[STREAM] = this;
    ws.on('message', onMessage);
    ws.on('error', onError);
    ws.on('close', onClose);
  }

  /** A WebSocket message (from the shared listeners above). */
  received(data: Buffer, isBinary: boolean): void {
    if (!isBinary) {
      // PROTOCOL 11.3: text is not part of the stream.
      this.ws.close(WS_UNSUPPORTED_DATA, 'binary messages only');
      this.emit('error', new DropwireError('DW_BAD_WEBSOCKET', 'a text WebSocket message arrived; only binary messages carry the stream'));
      return;
    }
    this.emit('data', data);
  }

  /** The WebSocket closed (from the shared listeners above). */
  closed(): void {
    this.gone = true;
    this.emit('close');
  }

  get writableLength(): number {
    return this.ws.bufferedAmount + this.pendingBytes;
  }

  get destroyed(): boolean {
    return this.gone || this.ws.readyState === WebSocket.CLOSED;
  }

  write(bytes: Uint8Array): boolean {
    if (this.ended || this.ws.readyState !== WebSocket.OPEN) return false;
    if (this.corked > 0) {
      this.pending.push(bytes);
      this.pendingBytes += bytes.length;
      return true;
    }
    this.send(bytes);
    return true;
  }

  cork(): void {
    this.corked++;
  }

  uncork(): void {
    if (this.corked === 0 || --this.corked > 0 || this.pending.length === 0) return;
    const parts = this.pending;
    this.pending = [];
    this.pendingBytes = 0;
    // One message per batch, split where it would pass MAX_WS_MESSAGE (records are far smaller).
    let group: Uint8Array[] = [];
    let size = 0;
    for (const p of parts) {
      if (size > 0 && size + p.length > MAX_WS_MESSAGE) {
        this.send(group.length === 1 ? group[0]! : Buffer.concat(group, size));
        group = [];
        size = 0;
      }
      group.push(p);
      size += p.length;
    }
    this.send(group.length === 1 ? group[0]! : Buffer.concat(group, size));
  }

  end(): void {
    if (this.ended) return;
    this.uncorkAll();
    this.ended = true;
    if (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING) this.ws.close(1000);
  }

  destroy(): void {
    this.ended = true;
    this.pending = [];
    this.pendingBytes = 0;
    this.ws.terminate();
  }

  private uncorkAll(): void {
    while (this.corked > 0) this.uncork();
  }

  private send(bytes: Uint8Array): void {
    let rest = bytes;
    while (rest.length > MAX_WS_MESSAGE) {
      this.sendMessage(rest.subarray(0, MAX_WS_MESSAGE));
      rest = rest.subarray(MAX_WS_MESSAGE);
    }
    this.sendMessage(rest);
  }

  private sendMessage(bytes: Uint8Array): void {
    this.bytesWritten += bytes.length;
    this.ws.send(bytes, { binary: true }, () => this.sent());
    // Always armed: a write the kernel took at once leaves bufferedAmount small before the link saw it.
    this.waitingDrain = true;
  }

  /** A message reached the socket: wake the writer once the backlog is gone. */
  private sent(): void {
    if (!this.waitingDrain || this.ws.bufferedAmount >= WS_DRAIN_BELOW) return;
    this.waitingDrain = false;
    this.emit('drain');
  }
}

/**
 * The relay side: takes HTTP upgrades to CONNECT_PATH and hands each accepted WebSocket on as a stream.
 * Everything else that asks to upgrade gets 404 (PROTOCOL 11.1).
 */
export class WebSocketAcceptor {
  private readonly server = new WebSocketServer({ noServer: true, clientTracking: false, ...WS_OPTIONS });
  private readonly onStream: (stream: WebSocketStream, req: http.IncomingMessage) => void;
  private closed = false;

  constructor(onStream: (stream: WebSocketStream, req: http.IncomingMessage) => void) {
    this.onStream = onStream;
  }

  /** For `http.Server`'s 'upgrade' event. */
  upgrade(req: http.IncomingMessage, socket: net.Socket, head: Buffer): void {
    const path = (req.url ?? '').split('?')[0];
    if (this.closed || path !== CONNECT_PATH) {
      const status = this.closed ? '503 Service Unavailable' : '404 Not Found';
      socket.end(`HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
      return;
    }
    socket.on('error', () => socket.destroy()); // until ws takes the socket over
    this.server.handleUpgrade(req, socket, head, (ws) => {
      this.onStream(new WebSocketStream(ws, { remoteAddress: socket.remoteAddress, remotePort: socket.remotePort }), req);
    });
  }

  close(): void {
    this.closed = true;
    this.server.close();
  }
}

export interface WebSocketDialOptions {
  /** Trust anchors for wss (PEM); undefined: Node's defaults (with NODE_EXTRA_CA_CERTS). */
  ca?: string[] | undefined;
  /** Makes the connection to the server (through a proxy tunnel); default: ws dials the URL's host itself. */
  createConnection?: (() => net.Socket) | undefined;
  timeoutMs: number;
  signal?: AbortSignal | undefined;
}

/** Opens a WebSocket to `url` and resolves once the upgrade succeeded. */
export function openWebSocket(url: string, o: WebSocketDialOptions): Promise<WebSocketStream> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, {
      ...WS_OPTIONS,
      handshakeTimeout: o.timeoutMs,
      followRedirects: false,
      ...(o.ca ? { ca: o.ca } : {}),
      ...(o.createConnection ? { createConnection: o.createConnection } : {}),
    });
    let remote: net.Socket | undefined;
    ws.once('upgrade', (res: http.IncomingMessage) => (remote = res.socket));
    const onAbort = () => ws.terminate();
    o.signal?.addEventListener('abort', onAbort, { once: true });
    const fail = (err: Error) => {
      o.signal?.removeEventListener('abort', onAbort);
      ws.removeAllListeners();
      ws.on('error', () => {});
      ws.terminate();
      reject(err);
    };
    ws.once('unexpected-response', (_req: http.ClientRequest, res: http.IncomingMessage) => {
      res.resume();
      fail(new DropwireError('DW_BAD_WEBSOCKET', `${url} answered HTTP ${res.statusCode} instead of a WebSocket upgrade`));
    });
    ws.once('error', (err: Error) => fail(err));
    ws.once('close', () => fail(new Error('closed before the upgrade')));
    ws.once('open', () => {
      o.signal?.removeEventListener('abort', onAbort);
      ws.removeAllListeners();
      resolve(new WebSocketStream(ws, { remoteAddress: remote?.remoteAddress, remotePort: remote?.remotePort }));
    });
  });
}
