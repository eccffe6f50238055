/**
 * A dropwire relay in its own process, so the bench can read its RSS and CPU from /proc. Started by
 * bench/run.js with fork(); the options come as one JSON argument. Pushes `ready` with the relay's
 * addresses, counts the status changes the hub applies (after their commit), and answers `stats`.
 * SIGTERM (or the `close` request) closes the relay the way `dropwire relay start` does on a signal.
 */
import { Relay } from '../src/relay/relay.js';
import type { StatusEvent } from '../src/relay/hub.js';
import { createLogger } from '../src/shared/log.js';
import { recordCounts } from '../src/protocol/connection.js';
import { linkIo } from '../src/transport/link.js';
import { hrNow, serveParent } from './common.js';

export interface RelayChildOptions {
  dataDir: string;
  listenPort: number;
  httpPort: number;
  logFile: string;
  logLevel: string;
}

async function main(): Promise<void> {
  const o = JSON.parse(process.argv[2] ?? '{}') as RelayChildOptions;
  const log = createLogger('relay', o.logFile, o.logLevel);
  const relay = await Relay.start({
    dataDir: o.dataDir,
    listen: { host: '127.0.0.1', port: o.listenPort },
    http: { host: '127.0.0.1', port: o.httpPort },
    log,
  });
  const storeCalls = process.env.BENCH_TRACE_STORE === '0' ? {} : traceStore(relay.store as unknown as Record<string, unknown>);
  const counts: Record<string, number> = {};
  const lastAt: Record<string, number> = {};
  relay.hub.on('status', (e: StatusEvent) => {
    counts[e.status] = (counts[e.status] ?? 0) + 1;
    lastAt[e.status] = hrNow();
  });
  let elu = performance.eventLoopUtilization();
  let closing: Promise<void> | undefined;
  const close = () => (closing ??= relay.close().then(() => undefined));
  const { emit } = serveParent({
    stats: () => ({
      counts,
      lastAt,
      online: relay.hub.onlineCount(),
      memory: process.memoryUsage(),
      store: relay.store.stats(),
      storeCalls,
      io: { ...linkIo, records: { ...recordCounts } },
      /** Share of the time since `resetCounts` the event loop was not waiting for I/O (blocking calls count as busy). */
      eventLoopUtilization: performance.eventLoopUtilization(elu).utilization,
    }),
    resetCounts: () => {
      for (const k of Object.keys(counts)) delete counts[k];
      for (const k of Object.keys(lastAt)) delete lastAt[k];
      for (const k of Object.keys(storeCalls)) delete storeCalls[k];
      linkIo.reads = 0;
      linkIo.writes = 0;
      recordCounts.sealed = 0;
      recordCounts.opened = 0;
      elu = performance.eventLoopUtilization();
      return true;
    },
    gc: () => {
      const gc = (globalThis as { gc?: () => void }).gc;
      gc?.();
      return { collected: gc !== undefined, memory: process.memoryUsage() };
    },
    close: async () => {
      await close();
      setTimeout(() => process.exit(0), 10);
      return true;
    },
  });
  process.on('SIGTERM', () => {
    void close().then(() => process.exit(0));
  });
  emit({ event: 'ready', info: relay.info, at: hrNow() });
}

/**
 * Counts the store's calls and the time each holds the event loop (the synchronous part: a read's query,
 * a write's queueing; `flushBatch` is the group commit itself, COMMIT and its fsync included). The methods
 * are wrapped on the instance the hub and the HTTP API already hold; nothing else changes. Off with
 * BENCH_TRACE_STORE=0 (the profiling pass).
 */
function traceStore(store: Record<string, unknown>): Record<string, { calls: number; ms: number; cpuMs?: number }> {
  const calls: Record<string, { calls: number; ms: number; cpuMs?: number }> = {};
  const names = ['getDevice', 'getDeviceByKey', 'getTokenByHash', 'getMessage', 'getHistory', 'readInlineBody', 'pending', 'countPending', 'enqueue', 'setStatus', 'touchDevice', 'flushBatch'];
  for (const name of names) {
    const fn = store[name];
    if (typeof fn !== 'function') continue;
    // The commit also gets its CPU time (wall minus CPU is time blocked in fsync). Only there: getrusage()
    // costs microseconds, too much for every call.
    const cpu = name === 'flushBatch';
    store[name] = function (this: unknown, ...args: unknown[]) {
      const t0 = performance.now();
      const c0 = cpu ? process.cpuUsage() : undefined;
      try {
        return (fn as (...a: unknown[]) => unknown).apply(this, args);
      } finally {
        const c = (calls[name] ??= { calls: 0, ms: 0 });
        c.calls++;
        c.ms += performance.now() - t0;
        if (c0) {
          const used = process.cpuUsage(c0);
          c.cpuMs = (c.cpuMs ?? 0) + (used.user + used.system) / 1000;
        }
      }
    };
  }
  return calls;
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
