/**
 * Reads a V8 `.cpuprofile` (written by `node --cpu-prof`) and says where the time went: self time and
 * inclusive time per function, and a breakdown by kind of code. Samples can be limited to a window of the
 * monotonic clock (V8 profile timestamps are CLOCK_MONOTONIC microseconds on Linux, the clock of `hrNow`).
 */
import fs from 'node:fs';
import { SourceMap } from 'node:module';
import { fileURLToPath } from 'node:url';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
  columnNumber?: number;
}

const maps = new Map<string, SourceMap | undefined>();

/** `src/relay/hub.ts:123` for a frame in compiled code that has a source map next to it, else undefined. */
function original(cf: CallFrame): string | undefined {
  if (!cf.url.startsWith('file://') || !cf.url.endsWith('.js')) return undefined;
  let map = maps.get(cf.url);
  if (!maps.has(cf.url)) {
    try {
      const file = fileURLToPath(cf.url);
      map = new SourceMap(JSON.parse(fs.readFileSync(`${file}.map`, 'utf8')) as ConstructorParameters<typeof SourceMap>[0]);
      (map as SourceMap & { file?: string }).file = file;
    } catch {
      map = undefined;
    }
    maps.set(cf.url, map);
  }
  if (!map) return undefined;
  const e = map.findEntry(cf.lineNumber, cf.columnNumber ?? 0) as { originalSource?: string; originalLine?: number };
  if (e.originalSource === undefined || e.originalLine === undefined) return undefined;
  const m = /\/(src|bench)\/(.*)$/.exec(e.originalSource);
  return `${m ? `${m[1]}/${m[2]}` : e.originalSource}:${e.originalLine + 1}`;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}
interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export interface FunctionTime {
  fn: string;
  ms: number;
  pct: number;
}

export interface ProfileSummary {
  file: string;
  /** Sampled milliseconds in the window, idle excluded. */
  busyMs: number;
  windowMs: number;
  /** The window was applied (false: the whole profile, because the clocks did not line up). */
  windowed: boolean;
  self: FunctionTime[];
  inclusive: FunctionTime[];
  categories: FunctionTime[];
  /** By stage of a message's path (STAGES): every busy sample in exactly one. */
  stages: FunctionTime[];
}

/**
 * The stages of a message's way through the relay, each recognised by a function on the sample's stack;
 * the first that matches, in this order, takes the sample (socket writes happen inside a record read, for
 * example, and count as writes).
 */
const STAGES: readonly { name: string; match: RegExp }[] = [
  { name: 'store: group commit (SQL statements, COMMIT with fsync)', match: /^flushBatch .*store\/sqlite\/writer/ },
  { name: 'store: other calls (reads, queueing a write)', match: / src\/relay\/store\// },
  { name: 'records in: open, decode, hub handles RECEIVED / RESULT', match: /^(onRecord src\/protocol\/connection|onOutput src\/relay\/hub)/ },
  { name: 'records out: seal, frame, socket write (link pump)', match: /^pump src\/transport\/link/ },
  { name: 'HTTP: parse, route, body, 202 (node:http and the API)', match: /^(parserOn\w+ node:_http|route src\/relay\/http|postMessage src\/relay\/http|\w+ node:_http_)/ },
  { name: 'delivery: hub (picks the next message, writes FILE into the session)', match: / src\/relay\/hub/ },
];

function shortUrl(url: string): string {
  if (!url) return '';
  const m = /\/(src|bench|node_modules)\/(.*)$/.exec(url);
  if (m) return m[1] === 'node_modules' ? m[2]!.split('/').slice(0, m[2]!.startsWith('@') ? 2 : 1).join('/') : `${m[1]}/${m[2]}`;
  return url.replace(/^file:\/\//, '');
}

function label(cf: CallFrame): string {
  const name = cf.functionName || '(anonymous)';
  const mapped = original(cf);
  if (mapped) return `${name} ${mapped}`;
  const where = shortUrl(cf.url);
  return where ? `${name} ${where.replace(/^dist\//, '')}:${cf.lineNumber + 1}` : name;
}

/** What kind of code a frame is, for the breakdown. */
function category(cf: CallFrame): string {
  const u = cf.url;
  if (cf.functionName === '(garbage collector)') return 'garbage collector';
  if (cf.functionName === '(program)') return 'V8/native (program)';
  if (u.includes('/src/protocol/crypto') || u.includes('/src/protocol/noise')) return 'dropwire crypto (noise, backends)';
  if (u.includes('/src/protocol/')) return 'dropwire protocol (frames, session, messages)';
  if (u.includes('/src/transport/')) return 'dropwire transport (link, listener)';
  if (u.includes('/src/relay/store/')) return 'dropwire store (sqlite.ts)';
  if (u.includes('/src/relay/http')) return 'dropwire HTTP API';
  if (u.includes('/src/relay/')) return 'dropwire relay (hub, blobs)';
  if (u.includes('/node_modules/pino') || u.includes('/node_modules/sonic-boom')) return 'logging (pino)';
  if (u.includes('/node_modules/busboy')) return 'busboy';
  if (u.startsWith('node:internal/crypto') || u.includes('internal/crypto')) return 'node:crypto (JS side)';
  if (u.startsWith('node:_http') || u.includes('_http_')) return 'node:http';
  if (u.startsWith('node:net') || u.startsWith('node:internal/stream') || u.startsWith('node:internal/streams')) return 'node streams / net';
  if (u.startsWith('node:')) return 'node internals (other)';
  if (!u) return `native: ${cf.functionName || '(anonymous)'}`;
  return 'other JS';
}

export function summarizeProfile(file: string, window?: { from: number; to: number }, top = 12): ProfileSummary {
  const p = JSON.parse(fs.readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map<number, ProfileNode>();
  const parent = new Map<number, number>();
  for (const n of p.nodes) byId.set(n.id, n);
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);

  // Sample times, in ms on the monotonic clock.
  const times: number[] = [];
  let t = p.startTime;
  for (const d of p.timeDeltas) {
    t += d;
    times.push(t / 1000);
  }
  const profFrom = p.startTime / 1000;
  const profTo = p.endTime / 1000;
  let windowed = false;
  let from = profFrom;
  let to = profTo;
  if (window && window.from >= profFrom - 1000 && window.to <= profTo + 60_000) {
    windowed = true;
    from = window.from;
    to = window.to;
  }

  const self = new Map<string, number>();
  const incl = new Map<string, number>();
  const cats = new Map<string, number>();
  const stages = new Map<string, number>();
  let busy = 0;
  for (let i = 0; i < p.samples.length; i++) {
    const at = times[i]!;
    if (at < from || at > to) continue;
    const dt = (p.timeDeltas[i + 1] ?? p.timeDeltas[i] ?? 0) / 1000;
    const node = byId.get(p.samples[i]!);
    if (!node || node.callFrame.functionName === '(idle)') continue;
    busy += dt;
    const key = label(node.callFrame);
    self.set(key, (self.get(key) ?? 0) + dt);
    const cat = category(node.callFrame);
    cats.set(cat, (cats.get(cat) ?? 0) + dt);
    const seen = new Set<string>();
    for (let id: number | undefined = node.id; id !== undefined; id = parent.get(id)) {
      const cf = byId.get(id)!.callFrame;
      if (cf.functionName === '(root)') break;
      const k = label(cf);
      if (seen.has(k)) continue;
      seen.add(k);
      incl.set(k, (incl.get(k) ?? 0) + dt);
    }
    const frames = [...seen];
    const stage =
      node.callFrame.functionName === '(garbage collector)'
        ? 'garbage collector'
        : (STAGES.find((st) => frames.some((f) => st.match.test(f)))?.name ?? 'other (timers, microtasks, metrics, logging)');
    stages.set(stage, (stages.get(stage) ?? 0) + dt);
  }
  const rank = (m: Map<string, number>, filter: (k: string) => boolean = () => true): FunctionTime[] =>
    [...m.entries()]
      .filter(([k]) => filter(k))
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([fn, ms]) => ({ fn, ms: Math.round(ms), pct: busy > 0 ? (100 * ms) / busy : 0 }));
  return {
    file,
    busyMs: Math.round(busy),
    windowMs: Math.round(to - from),
    windowed,
    self: rank(self),
    // Inclusive time is telling for the project's own functions (what each path costs, callees included).
    inclusive: rank(incl, (k) => / src\//.test(k)),
    categories: rank(cats, () => true),
    stages: rank(stages, () => true),
  };
}
