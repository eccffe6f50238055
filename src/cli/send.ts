import fs from 'node:fs';
import path from 'node:path';
import { DropwireError } from '../shared/errors.js';
import type { FileOutcome } from '../agent/send-job.js';
import { ProgressBar, PROGRESS_MIN_BYTES } from './progress.js';

/** Exit codes of `dropwire send` (README): 0 stored (or, with --wait, handled). */
export const SendExit = { OK: 0, ERROR: 1, FAILED: 4, REJECTED: 5, NOT_HANDLED: 6, TIMEOUT: 7 } as const;
/** `--wait` alone waits this long for each file's final status. */
export const DEFAULT_WAIT_S = 300;

export interface SendOptions {
  to: string;
  wait?: number | true;
  json?: boolean;
  seal?: boolean;
  home?: string;
}

/**
 * `dropwire send FILE… --to NAME`: through the running agent's control socket, or, when none runs, over a
 * session of its own with the device key. Prints each message id (or a JSON object per file).
 */
export async function runSend(files: string[], o: SendOptions): Promise<void> {
  const { resolveAgentHome } = await import('../service/locations.js');
  const home = resolveAgentHome(o.home);
  const abs = files.map((f) => path.resolve(f));
  for (const f of abs) {
    const st = fs.statSync(f, { throwIfNoEntry: false });
    if (!st?.isFile()) throw new DropwireError('DW_FILE_NOT_FOUND', `${f} is not a file that can be read`);
  }
  const wait = o.wait === true ? DEFAULT_WAIT_S : (o.wait ?? 0);
  const req = { files: abs, to: o.to, ...(o.seal ? { seal: true } : {}), ...(wait > 0 ? { wait } : {}) };
  const tty = !o.json && process.stderr.isTTY === true;
  const bars = new Map<string, ProgressBar>();
  const onLine = (l: Record<string, unknown>) => {
    if (!tty) return;
    const file = l.file as string;
    if (l.event === 'progress' && (l.size as number) >= PROGRESS_MIN_BYTES) {
      let bar = bars.get(file);
      if (!bar) bars.set(file, (bar = new ProgressBar(process.stderr, path.basename(file), l.size as number)));
      bar.update(l.acked as number);
    } else if (l.event === 'sent' || l.event === 'error') bars.get(file)?.finish();
  };
  const { agentAnswers, streamAgent, CONTROL_MAX_REQUEST } = await import('../agent/control.js');
  let results: FileOutcome[];
  if (await agentAnswers(home)) {
    // Requests to the control socket are small (CONTROL_MAX_REQUEST): many files go in several requests.
    results = [];
    for (const files of batches(abs, CONTROL_MAX_REQUEST - 512)) {
      const r = (await streamAgent(home, { op: 'send', ...req, files }, onLine)) as unknown as { results: FileOutcome[] };
      results.push(...r.results);
    }
  } else {
    // No agent here: a session of our own (it receives nothing; files for this host wait for the agent).
    const { DirectSession } = await import('../agent/direct.js');
    const { runSendJob } = await import('../agent/send-job.js');
    const direct = new DirectSession(home);
    try {
      await direct.connect();
      ({ results } = await runSendJob({ sender: direct.sender, presence: (d) => direct.presence(d), identity: { name: direct.name, home } }, req, onLine));
    } finally {
      await direct.close();
    }
  }
  for (const b of bars.values()) b.finish();
  let exit: number = SendExit.OK;
  for (const r of results) {
    if (o.json) console.log(JSON.stringify(r));
    else if (r.error) process.stderr.write(`dropwire: ${r.file}: ${r.error.code}: ${r.error.message}\n`);
    else if (wait > 0) console.log(`${r.id}\t${r.status}${r.final ? '' : ' (not final yet)'}\t${r.filename}${r.result && r.status !== 'handled' ? `\t${JSON.stringify(r.result)}` : ''}`);
    else console.log(r.id);
    exit = Math.max(exit, exitOf(r, wait > 0));
  }
  if (exit !== SendExit.OK) process.exitCode = exit;
}

/** Consecutive groups of paths whose JSON stays under `max` bytes (at least one path each). */
function batches(files: string[], max: number): string[][] {
  const out: string[][] = [];
  let cur: string[] = [];
  let size = 0;
  for (const f of files) {
    const n = Buffer.byteLength(JSON.stringify(f)) + 1;
    if (cur.length > 0 && size + n > max) {
      out.push(cur);
      cur = [];
      size = 0;
    }
    cur.push(f);
    size += n;
  }
  if (cur.length > 0) out.push(cur);
  return out;
}

function exitOf(r: FileOutcome, waited: boolean): number {
  if (r.error) return SendExit.ERROR;
  if (!waited) return SendExit.OK;
  if (!r.final) return SendExit.TIMEOUT;
  if (r.status === 'handled') return SendExit.OK;
  if (r.status === 'failed') return SendExit.FAILED;
  if (r.status === 'rejected') return SendExit.REJECTED;
  return SendExit.NOT_HANDLED;
}
