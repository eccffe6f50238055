import { writeFileAtomic } from '../shared/files.js';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { DropwireError } from '../shared/errors.js';
import { underRoot, type Plan, type Step } from './plan.js';
import { showCommand } from './render.js';

export interface ApplyOptions {
  /** Print every step (files with their content) and do nothing. */
  dryRun?: boolean;
  /** Write files into this folder instead of `/`, and run no command (tests, packaging). */
  root?: string;
  out: (line: string) => void;
}

/** Shows (--dry-run), writes into a root (--root), or carries out a plan, step by step, in order. */
export function applyPlan(plan: Plan, o: ApplyOptions): { status: number } {
  const shell = plan.platform === 'win32' ? 'win32' : 'posix';
  const at = (p: string) => underRoot(p, o.root, plan.platform);
  const mode = (m: number) => m.toString(8).padStart(4, '0');
  o.out(`# dropwire service ${plan.title}`);
  if (o.dryRun) o.out('# dry run: nothing is written and nothing is run');
  else if (o.root) o.out(`# into ${o.root}; commands are shown, not run`);
  let status = 0;
  for (const step of plan.steps) {
    switch (step.kind) {
      case 'dir':
        o.out(`mkdir ${step.path}${plan.platform === 'win32' ? '' : ` (mode ${mode(step.mode)})`}`);
        if (!o.dryRun) {
          fs.mkdirSync(at(step.path), { recursive: true, mode: step.mode });
          if (plan.platform !== 'win32') fs.chmodSync(at(step.path), step.mode);
        }
        break;
      case 'file':
        if (o.dryRun) {
          const eof = heredocMarker(step.content);
          o.out(`write ${step.path}${plan.platform === 'win32' ? '' : ` (mode ${mode(step.mode)})`} <<${eof}`);
          o.out(step.content.replace(/\n$/, ''));
          o.out(eof);
        } else {
          o.out(`write ${step.path}${plan.platform === 'win32' ? '' : ` (mode ${mode(step.mode)})`}`);
          writeAtomic(at(step.path), step.content, step.mode);
        }
        break;
      case 'copy':
        o.out(`copy ${step.from} to ${step.path}`);
        if (!o.dryRun) {
          if (!fs.existsSync(step.from)) throw new DropwireError('DW_WINSW_MISSING', `WinSW is needed to run dropwire as a Windows service (it is on no package registry, so not bundled): download WinSW-x64.exe (WinSW 3) from https://github.com/winsw/winsw/releases and pass --winsw PATH`);
          fs.mkdirSync(path.dirname(at(step.path)), { recursive: true });
          fs.copyFileSync(step.from, at(step.path));
        }
        break;
      case 'remove':
        o.out(`remove ${step.path}`);
        if (!o.dryRun) fs.rmSync(at(step.path), { force: true });
        break;
      case 'rmdir':
        o.out(`rmdir ${step.path} (if empty)`);
        if (!o.dryRun) removeIfEmpty(at(step.path));
        break;
      case 'run':
        status = run(step, shell, o);
        break;
    }
  }
  return { status };
}

function run(step: Extract<Step, { kind: 'run' }>, shell: 'posix' | 'win32', o: ApplyOptions): number {
  const shown = showCommand(step.argv, shell);
  o.out(`run: ${shown}${step.why ? `   # ${step.why}` : ''}`);
  if (o.dryRun || o.root) return 0;
  const r = spawnSync(step.argv[0]!, step.argv.slice(1), { stdio: 'inherit' });
  const code = r.error ? 127 : (r.status ?? 1);
  if (code === 0 || step.mayFail) return code;
  const why = r.error ? (r.error as NodeJS.ErrnoException).code === 'ENOENT' ? `${step.argv[0]} is not installed` : r.error.message : `exit code ${code}`;
  throw Object.assign(new DropwireError('DW_SERVICE_COMMAND', `\`${shown}\` failed (${why})${step.why ? `: ${step.why}` : ''}`), { commandStatus: code });
}

function heredocMarker(content: string): string {
  let eof = 'EOF';
  while (content.split('\n').includes(eof)) eof += '_';
  return eof;
}

function removeIfEmpty(dir: string): void {
  try {
    fs.rmdirSync(dir);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'ENOENT' && code !== 'ENOTEMPTY' && code !== 'EEXIST') throw err;
  }
}

/** Temporary file, fsync, rename: a service manager never reads half a unit. */
export function writeAtomic(file: string, content: string, mode: number): void {
  writeFileAtomic(file, content, mode);
}
