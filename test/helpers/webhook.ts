import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { onTestFinished } from 'vitest';

export interface Received {
  at: number;
  headers: http.IncomingHttpHeaders;
  raw: string;
  body: { id: number; type: string; at: string; device: string; message?: { id: string; status: string; detail?: Record<string, unknown> } };
}

/** A real HTTP server that records every webhook POST; it can be stopped and started again on its port. */
export class WebhookReceiver {
  readonly received: Received[] = [];
  port = 0;
  private server: http.Server | undefined;

  async start(): Promise<void> {
    this.server = http.createServer((req, res) => {
      let raw = '';
      req.on('data', (c: Buffer) => (raw += c.toString()));
      req.on('end', () => {
        this.received.push({ at: Date.now(), headers: req.headers, raw, body: JSON.parse(raw) as Received['body'] });
        res.writeHead(204).end();
      });
    });
    await new Promise<void>((r) => this.server!.listen(this.port, '127.0.0.1', r));
    this.port = (this.server.address() as AddressInfo).port;
    onTestFinished(() => this.stop());
  }

  async stop(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    if (!s) return;
    s.closeAllConnections();
    await new Promise<void>((r) => s.close(() => r()));
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}/hook`;
  }

  /** Events of `type`; for message events of one message, for device events of one device. */
  of(type: string, id?: string): Received[] {
    return this.received.filter(
      (r) => r.body.type === type && (id === undefined || (r.body.message ? r.body.message.id === id : (r.body.device as unknown as { name?: string })?.name === id || r.body.device === id)),
    );
  }
}
