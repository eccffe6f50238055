/**
 * Enqueue throughput of the SQLite store: group commit against one commit (one fsync) per write; and the
 * store's whole share of one message (enqueue, then `sent`, `received`, `handled`) in CPU per message: each
 * change awaited on its own, and as the hub makes them (`sent` and `received` lazy, written with `handled`).
 * Every run is bounded by a row count and a time budget. `node dist/bench/store.js [dir]` — pass a
 * folder on the disk you want to measure (the default is the OS temp folder).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import { openSqliteStore } from '../src/relay/store/sqlite.js';

export interface StoreBenchCase {
  name: string;
  /** Group commit cap; 1 = a transaction per write. */
  maxBatch: number;
  /** Enqueues in flight at once (concurrent HTTP requests, say). */
  concurrency: number;
  rows: number;
  /** Stop early after this long; the rate is computed over what was written. */
  budgetMs: number;
  /** Each row is a message's whole life in the store: enqueue, then `sent`, `received` and `handled`. */
  lifecycle?: boolean;
  /**
   * With `lifecycle`: `sent` and `received` are lazy writes, not awaited on their own (as the hub issues
   * them), and `handled` follows at once (a quick handler): the store writes the three in one go.
   */
  lazy?: boolean;
}

export interface StoreBenchResult {
  name: string;
  maxBatch: number;
  concurrency: number;
  rows: number;
  seconds: number;
  rowsPerSec: number;
  commits: number;
  rowsPerCommit: number;
  p50Ms: number;
  p99Ms: number;
  /** CPU time of this process (user + system, the fsyncs' kernel work included) per row. */
  cpuUsPerRow: number;
}

export const BODY_BYTES = 1024;

export const DEFAULT_CASES: readonly StoreBenchCase[] = [
  { name: 'group commit, 256 in flight', maxBatch: 500, concurrency: 256, rows: 50_000, budgetMs: 10_000 },
  { name: 'batch size 1, 256 in flight', maxBatch: 1, concurrency: 256, rows: 50_000, budgetMs: 10_000 },
  { name: 'group commit, 1 in flight', maxBatch: 500, concurrency: 1, rows: 5_000, budgetMs: 5_000 },
  { name: "a message's life (4 writes), 256 in flight", maxBatch: 500, concurrency: 256, rows: 30_000, budgetMs: 10_000, lifecycle: true },
  { name: "a message's life (4 writes), 16 in flight", maxBatch: 500, concurrency: 16, rows: 10_000, budgetMs: 10_000, lifecycle: true },
  { name: "a message's life, sent/received lazy, 256 in flight", maxBatch: 500, concurrency: 256, rows: 30_000, budgetMs: 10_000, lifecycle: true, lazy: true },
  { name: "a message's life, sent/received lazy, 16 in flight", maxBatch: 500, concurrency: 16, rows: 10_000, budgetMs: 10_000, lifecycle: true, lazy: true },
];

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

async function runCase(dir: string, c: StoreBenchCase, body: Uint8Array): Promise<StoreBenchResult> {
  const store = await openSqliteStore({ path: join(dir, `${c.maxBatch}-${c.concurrency}${c.lifecycle ? '-life' : ''}${c.lazy ? '-lazy' : ''}.db`), maxBatch: c.maxBatch });
  const latencies = new Float64Array(c.rows);
  let issued = 0;
  let done = 0;
  const cpu0 = process.cpuUsage();
  const start = performance.now();
  const deadline = start + c.budgetMs;
  const worker = async (): Promise<void> => {
    while (issued < c.rows && performance.now() < deadline) {
      const n = issued++;
      const t0 = performance.now();
      const id = `bench-${n}`;
      await store.enqueue({
        id,
        to: `device-${n % 16}`,
        from: 'bench',
        filename: `order-${n}.xml`,
        size: body.byteLength,
        sha256: '0'.repeat(64),
        body,
        createdAt: Date.now(),
      });
      if (c.lifecycle && c.lazy) {
        const sent = store.setStatus([{ id, status: 'sent', at: Date.now() }], { lazy: true });
        const received = store.setStatus([{ id, status: 'received', at: Date.now() }], { lazy: true });
        const result = { exitCode: 0, savedAs: `order-${n}.xml` };
        await Promise.all([sent, received, store.setStatus([{ id, status: 'handled', at: Date.now(), detail: result, result }])]);
      } else if (c.lifecycle) {
        await store.setStatus([{ id, status: 'sent', at: Date.now() }]);
        await store.setStatus([{ id, status: 'received', at: Date.now() }]);
        const result = { exitCode: 0, savedAs: `order-${n}.xml` };
        await store.setStatus([{ id, status: 'handled', at: Date.now(), detail: result, result }]);
      }
      latencies[done++] = performance.now() - t0;
    }
  };
  await Promise.all(Array.from({ length: c.concurrency }, worker));
  const seconds = (performance.now() - start) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const { commits } = store.stats();
  await store.close();
  const sorted = latencies.subarray(0, done).sort();
  return {
    name: c.name,
    maxBatch: c.maxBatch,
    concurrency: c.concurrency,
    rows: done,
    seconds: Number(seconds.toFixed(2)),
    rowsPerSec: Math.round(done / seconds),
    commits,
    rowsPerCommit: Number((done / Math.max(1, commits)).toFixed(1)),
    p50Ms: Number(percentile(sorted, 50).toFixed(2)),
    p99Ms: Number(percentile(sorted, 99).toFixed(2)),
    cpuUsPerRow: Number(((cpu.user + cpu.system) / Math.max(1, done)).toFixed(1)),
  };
}

export async function runStoreBench(
  options: { dir?: string; cases?: readonly StoreBenchCase[] } = {},
): Promise<StoreBenchResult[]> {
  const dir = mkdtempSync(join(options.dir ?? tmpdir(), 'dropwire-bench-store-'));
  const body = new Uint8Array(BODY_BYTES).map((_, i) => (i * 31) & 0xff);
  try {
    const results: StoreBenchResult[] = [];
    for (const c of options.cases ?? DEFAULT_CASES) results.push(await runCase(dir, c, body));
    return results;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const results = await runStoreBench({ dir: process.argv[2] });
  console.table(results);
  const group = results.find((r) => r.maxBatch > 1 && r.concurrency > 1);
  const single = results.find((r) => r.maxBatch === 1);
  if (group && single) console.log(`group commit: ${(group.rowsPerSec / single.rowsPerSec).toFixed(1)}x batch size 1`);
}
