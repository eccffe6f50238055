import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { Logger } from '../shared/log.js';
import { linkBytes } from '../transport/link.js';
import type { Hub, StatusEvent } from './hub.js';
import { FINAL_STATUSES, type Store, type WebhookAttempt } from './store/types.js';

/**
 * The relay's Prometheus metrics (README "Metrics"). Counting rides on what already happens: the hub's
 * `status`, `session` and `refused` events, the links' byte totals, and a timer around the two store writes
 * of the delivery path. Gauges that need the store (`queued`) are read only when scraped.
 */
export interface MetricsOptions {
  hub: Hub;
  store: Store;
  log: Logger;
  /** This node's name in a cluster (a `node` label on every series). */
  node?: string;
}

/** The random tail of a message id (http.ts `messageId`): the head is its creation time, base 36 ms. */
const ID_RANDOM_DIGITS = 16;

/** When a message was published, read from its id (no store read); undefined for an id of another shape. */
export function publishedAt(id: string): number | undefined {
  if (id.length <= ID_RANDOM_DIGITS) return undefined;
  const t = parseInt(id.slice(0, -ID_RANDOM_DIGITS), 36);
  return Number.isSafeInteger(t) ? t : undefined;
}

const LINT_REFUSED = ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total'];

export class RelayMetrics {
  readonly registry = new Registry();
  private readonly o: MetricsOptions;
  private readonly detach: Array<() => void> = [];

  constructor(o: MetricsOptions) {
    this.o = o;
    const r = this.registry;
    if (o.node) r.setDefaultLabels({ node: o.node });
    collectDefaultMetrics({ register: r });
    // Gauges whose names end in _total (promtool's lint refuses them); nodejs_active_handles and
    // nodejs_active_requests, by type, say the same.
    for (const name of LINT_REFUSED) r.removeSingleMetric(name);

    const final = new Counter({ name: 'dropwire_messages_total', help: 'Messages that reached a final status, by status.', labelNames: ['status'] as const, registers: [r] });
    // Children bound once: counting on the delivery path hashes no label object.
    const finalBy = new Map([...FINAL_STATUSES].map((s) => [s, final.labels({ status: s })] as const));
    for (const c of finalBy.values()) c.inc(0);
    const latency = new Histogram({
      name: 'dropwire_message_handled_seconds',
      help: 'Time from publish (POST) to the host reporting the message handled.',
      buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800],
      registers: [r],
    });
    const onStatus = (e: StatusEvent) => {
      // A cluster node also re-tells final statuses applied by other nodes (to wake its long polls), with
      // no sender: those are counted by the node that applied them, so the nodes' sums add up.
      const counter = finalBy.get(e.status);
      if (!counter || e.from === '') return;
      counter.inc();
      if (e.status !== 'handled') return;
      const t0 = publishedAt(e.id);
      if (t0 !== undefined && e.at >= t0) latency.observe((e.at - t0) / 1000);
    };
    const sessions = new Counter({ name: 'dropwire_sessions_total', help: 'Agent sessions established, new or resumed.', labelNames: ['kind'] as const, registers: [r] });
    sessions.inc({ kind: 'new' }, 0);
    sessions.inc({ kind: 'resumed' }, 0);
    const onSession = (e: { resumed: boolean }) => sessions.inc({ kind: e.resumed ? 'resumed' : 'new' });
    const refusals = new Counter({ name: 'dropwire_handshake_refusals_total', help: 'Agent handshakes refused, by code.', labelNames: ['code'] as const, registers: [r] });
    const onRefused = (code: string) => refusals.inc({ code });
    o.hub.on('status', onStatus);
    o.hub.on('session', onSession);
    o.hub.on('refused', onRefused);
    this.detach.push(() => {
      o.hub.off('status', onStatus);
      o.hub.off('session', onSession);
      o.hub.off('refused', onRefused);
    });

    new Gauge({
      name: 'dropwire_messages_queued',
      help: 'Messages waiting for delivery (queued or sent, not yet received by the host).',
      registers: [r],
      async collect() {
        const devices = await o.store.listDevices();
        const counts = await Promise.all(devices.map((d) => o.store.countPending(d.name)));
        this.set(counts.reduce((a, b) => a + b, 0));
      },
    });
    new Gauge({ name: 'dropwire_devices_online', help: 'Devices with a live session on this relay (node).', registers: [r], collect() {
      this.set(o.hub.onlineCount());
    } });
    new Counter({ name: 'dropwire_link_received_bytes_total', help: 'Bytes received from agents (all links of this process).', registers: [r], collect() {
      this.reset();
      this.inc(linkBytes.received);
    } });
    new Counter({ name: 'dropwire_link_sent_bytes_total', help: 'Bytes sent to agents (all links of this process).', registers: [r], collect() {
      this.reset();
      this.inc(linkBytes.sent);
    } });

    const commit = new Histogram({
      name: 'dropwire_store_write_seconds',
      help: 'Time a durable store write takes until committed (group commit included), by operation.',
      labelNames: ['op'] as const,
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers: [r],
    });
    const deliveries = new Counter({ name: 'dropwire_webhook_deliveries_total', help: 'Webhook events delivered (2xx).', registers: [r] });
    const failures = new Counter({ name: 'dropwire_webhook_failures_total', help: 'Webhook attempts that failed, and whether the event was given up.', labelNames: ['abandoned'] as const, registers: [r] });
    failures.inc({ abandoned: 'false' }, 0);
    failures.inc({ abandoned: 'true' }, 0);
    this.timeStore(commit, (a) => {
      if (a.ok) deliveries.inc();
      else failures.inc({ abandoned: a.abandoned ? 'true' : 'false' });
    });
  }

  /** Times the store's writes on the delivery path and counts webhook attempts, by wrapping those methods. */
  private timeStore(commit: Histogram<'op'>, onAttempt: (a: WebhookAttempt) => void): void {
    const store = this.o.store;
    const byOp = { enqueue: commit.labels({ op: 'enqueue' }), set_status: commit.labels({ op: 'set_status' }) };
    const enqueue = store.enqueue;
    const setStatus = store.setStatus;
    const record = store.recordWebhookAttempt;
    const timed =
      <A extends unknown[], R>(op: keyof typeof byOp, fn: (...a: A) => Promise<R>) =>
      (...a: A): Promise<R> => {
        const t0 = performance.now();
        const p = fn.apply(store, a);
        const h = byOp[op];
        p.then(
          () => h.observe((performance.now() - t0) / 1000),
          () => {},
        );
        return p;
      };
    store.enqueue = timed('enqueue', enqueue);
    store.setStatus = timed('set_status', setStatus);
    store.recordWebhookAttempt = (a) => record.call(store, a).then(() => onAttempt(a));
    this.detach.push(() => {
      store.enqueue = enqueue;
      store.setStatus = setStatus;
      store.recordWebhookAttempt = record;
    });
  }

  /** The exposition text (Prometheus text format 0.0.4). */
  async text(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }

  /** Answers GET /metrics (the caller has checked who asks). */
  async serve(res: http.ServerResponse): Promise<void> {
    const { contentType, body } = await this.text();
    res.writeHead(200, { 'content-type': contentType, 'cache-control': 'no-store', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  }

  close(): void {
    for (const d of this.detach.splice(0)) d();
    this.registry.clear();
  }
}

/** `relay start --metrics HOST:PORT`: /metrics alone, without a token, on an address of its own. */
export class MetricsServer {
  private readonly server: http.Server;
  constructor(metrics: RelayMetrics, log: Logger) {
    this.server = http.createServer((req, res) => {
      const path = (req.url ?? '/').split('?')[0];
      if (path !== '/metrics') {
        res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ error: { code: 'DW_NOT_FOUND', message: 'only /metrics is served here' } }) + '\n');
        return;
      }
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405, { allow: 'GET', 'content-type': 'application/json' }).end(JSON.stringify({ error: { code: 'DW_METHOD_NOT_ALLOWED', message: 'use GET' } }) + '\n');
        return;
      }
      metrics.serve(res).catch((err: unknown) => {
        log.error({ err }, 'metrics scrape failed');
        if (!res.headersSent) res.writeHead(500, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: { code: 'DW_INTERNAL', message: 'metrics unavailable' } }) + '\n');
      });
    });
  }

  listen(host: string, port: number): Promise<{ host: string; port: number }> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        const a = this.server.address() as AddressInfo;
        resolve({ host: a.address, port: a.port });
      });
    });
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }
}
