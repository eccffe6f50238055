/**
 * Start-up time and memory of the single executable (`npm run release`) against `node bin/dropwire.js`
 * (issue 15). Two measurements, each for both:
 *
 *   1. `dropwire --version`, RUNS times, alternating: wall time from spawn to exit (median, p90), and the
 *      peak RSS of the process (`/usr/bin/time -f %M`, maximum resident set size).
 *   2. an agent: spawned against a relay on loopback until its "session started" log line (connected and
 *      handshaken), then its RSS (VmRSS) after 3 s idle and its peak (VmHWM).
 *
 * Run: `npm run build && node dist/bench/startup.js [--exe release/dropwire-linux-x64] [--runs 20]`; it
 * prints the figures and writes them into bench/RESULTS.md between its own markers (kept across
 * `npm run bench`, inside the hand-written part).
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { hrNow, percentile, sleep, waitFor } from './common.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), fs.existsSync(path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'package.json')) ? '..' : '../..');
const { values } = parseArgs({ options: { exe: { type: 'string' }, runs: { type: 'string' }, out: { type: 'string' } } });
const EXE = path.resolve(values.exe ?? path.join(ROOT, 'release', 'dropwire-linux-x64'));
const RUNS = Number(values.runs ?? 20);
const OUT = values.out ?? path.join(ROOT, 'bench', 'RESULTS.md');
const BIN = path.join(ROOT, 'bin', 'dropwire.js');

interface Variant {
  name: string;
  argv: (args: string[]) => string[];
}
const variants: Variant[] = [
  { name: 'single executable', argv: (a) => [EXE, ...a] },
  { name: 'node bin/dropwire.js', argv: (a) => [process.execPath, BIN, ...a] },
];

function versionRuns(v: Variant): { wallMs: number[]; maxRssKiB: number[] } {
  const wallMs: number[] = [];
  const maxRssKiB: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    const [cmd, ...args] = v.argv(['--version']);
    const t0 = hrNow();
    const r = spawnSync(cmd!, args, { stdio: 'ignore' });
    wallMs.push(hrNow() - t0);
    if (r.status !== 0) throw new Error(`${v.name} --version exited ${r.status}`);
    if (fs.existsSync('/usr/bin/time')) {
      const m = spawnSync('/usr/bin/time', ['-f', '%M', cmd!, ...args], { encoding: 'utf8' });
      const kib = Number(m.stderr.trim().split('\n').pop());
      if (Number.isFinite(kib)) maxRssKiB.push(kib);
    }
  }
  return { wallMs: wallMs.sort((a, b) => a - b), maxRssKiB: maxRssKiB.sort((a, b) => a - b) };
}

function procKiB(pid: number, field: 'VmRSS' | 'VmHWM'): number | undefined {
  try {
    const m = new RegExp(`${field}:\\s+(\\d+) kB`).exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

async function agentRun(v: Variant, relayData: string, dir: string, n: number): Promise<{ connectMs: number; rssKiB: number; hwmKiB: number }> {
  const home = path.join(dir, `agent-${n}`);
  const token = execFileSync(process.execPath, [BIN, 'relay', 'device', 'add', `bench-${n}`, '--data', relayData], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  execFileSync(process.execPath, [BIN, 'init', token, '--home', home], { stdio: 'ignore' });
  const [cmd, ...args] = v.argv(['agent', '--home', home]);
  const t0 = hrNow();
  const child = spawn(cmd!, args, { stdio: ['ignore', 'pipe', 'ignore'], env: { ...process.env, DROPWIRE_LOG: 'stdout' } });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  try {
    if (!(await waitFor(() => out.includes('"session started"'), 20_000, 2))) throw new Error(`${v.name}: agent did not connect`);
    const connectMs = hrNow() - t0;
    await sleep(3000);
    return { connectMs, rssKiB: procKiB(child.pid!, 'VmRSS') ?? NaN, hwmKiB: procKiB(child.pid!, 'VmHWM') ?? NaN };
  } finally {
    child.kill('SIGTERM');
    await new Promise((r) => child.once('exit', r));
  }
}

const fmt = (n: number, d = 1) => (Number.isFinite(n) ? n.toFixed(d) : '–');
const mib = (kib: number) => fmt(kib / 1024);

async function main(): Promise<void> {
  if (!fs.existsSync(EXE)) throw new Error(`no executable at ${EXE}: run npm run release -- --targets linux-x64 first (or pass --exe)`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dw-bench-startup-'));
  const relayData = path.join(dir, 'relay');
  const relay = spawn(process.execPath, [BIN, 'relay', 'start', '--data', relayData, '--listen', '127.0.0.1:0', '--http', '127.0.0.1:0'], { stdio: 'ignore' });
  try {
    if (!(await waitFor(() => fs.existsSync(path.join(relayData, 'relay.json')), 20_000))) throw new Error('relay did not start');
    const version = spawnSync(EXE, ['--version'], { encoding: 'utf8' }).stdout.trim();
    const rows: string[] = [];
    let n = 0;
    for (const v of variants) versionRuns(v); // warm the page cache for both before timing
    for (const v of variants) {
      const r = versionRuns(v);
      const agents = [];
      for (let i = 0; i < 3; i++) agents.push(await agentRun(v, relayData, dir, n++));
      const connect = agents.map((a) => a.connectMs).sort((a, b) => a - b);
      const rss = agents.map((a) => a.rssKiB).sort((a, b) => a - b);
      const hwm = agents.map((a) => a.hwmKiB).sort((a, b) => a - b);
      rows.push(
        `| ${v.name} | ${fmt(percentile(r.wallMs, 50))} | ${fmt(percentile(r.wallMs, 90))} | ${mib(percentile(r.maxRssKiB, 50))} | ${fmt(percentile(connect, 50))} | ${mib(percentile(rss, 50))} | ${mib(percentile(hwm, 50))} |`,
      );
    }
    const size = fs.statSync(EXE).size;
    const lines = [
      START,
      '## Start-up and memory: single executable vs node bin/dropwire.js (bench/startup.ts)',
      '',
      `Written by \`node dist/bench/startup.js\` on ${new Date().toISOString()}: ${version}, Node ${process.versions.node}, ${os.cpus().length} CPUs (${os.cpus()[0]?.model.trim() ?? '?'}), ${os.loadavg()[0]!.toFixed(2)} load at the end. Executable: ${(size / 1048576).toFixed(1)} MiB.`,
      '',
      `| variant | \`--version\` median ms | p90 ms | peak RSS MiB | agent spawn → session started ms (median of 3) | agent RSS after 3 s idle MiB | agent peak RSS MiB |`,
      '|:--|--:|--:|--:|--:|--:|--:|',
      ...rows,
      '',
      `\`--version\`: ${RUNS} runs each, alternating after one warm-up round; peak RSS from \`/usr/bin/time -f %M\`. The agent: a relay`,
      'on loopback (node), a freshly enrolled home per run, time from spawn to the "session started" log line; RSS from',
      '/proc/PID/status (VmRSS, VmHWM). Both run the same JavaScript on the same Node version; the executable holds it as one',
      'bundled script (about 1 MB) in the binary, compiled at start (no code cache: it would not be reproducible).',
      END,
    ];
    const block = lines.join('\n');
    console.log(block);
    let doc = fs.existsSync(OUT) ? fs.readFileSync(OUT, 'utf8') : '';
    const a = doc.indexOf(START);
    const b = doc.indexOf(END);
    if (a >= 0 && b > a) doc = doc.slice(0, a) + block + doc.slice(b + END.length);
    else if (doc.includes(ANALYSIS_END)) doc = doc.replace(ANALYSIS_END, `${block}\n\n${ANALYSIS_END}`);
    else doc += `\n${block}\n`;
    fs.writeFileSync(OUT, doc);
  } finally {
    relay.kill('SIGTERM');
    await new Promise((r) => relay.once('exit', r));
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

const START = '<!-- startup:start -->';
const END = '<!-- startup:end -->';
const ANALYSIS_END = '<!-- analysis:end -->';

await main();
