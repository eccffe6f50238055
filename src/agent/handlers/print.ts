import { DropwireError } from '../../shared/errors.js';
import { safeName } from '../names.js';
import type { Action } from '../rules.js';
import { baseEnv, runProcess, type ProcessRun } from './exec.js';
import type { HandlerContext, Outcome } from './index.js';

/** `lp` only queues the job; a minute is generous even for a slow or remote CUPS server. */
export const PRINT_TIMEOUT_MS = 60_000;

/**
 * The Windows default when the agent has no `printCommand`: the file's associated application prints it.
 * The path and printer reach PowerShell through environment variables, never inside the script text, and
 * the script has no double quotes (Windows argument quoting and PowerShell disagree about them).
 */
export const DEFAULT_WINDOWS_PRINT_COMMAND: readonly string[] = [
  'powershell.exe',
  '-NoProfile',
  '-NonInteractive',
  '-Command',
  [
    'if ($env:DROPWIRE_PRINTER) {',
    'Start-Process -FilePath $env:DROPWIRE_FILE -Verb PrintTo -ArgumentList ([char]34 + $env:DROPWIRE_PRINTER + [char]34)',
    '} else { Start-Process -FilePath $env:DROPWIRE_FILE -Verb Print }',
  ].join(' '),
];

/** `request id is kitchen-123 (1 file(s))` -> `kitchen-123` (the C locale's wording; we set LC_ALL=C). */
export function parseJobId(output: string): string | undefined {
  return /request id is (\S+)/u.exec(output)?.[1];
}

/** The `lp` command line for an action; exported for tests and `rule test`. */
export function lpArgs(action: Extract<Action, { type: 'print' }>, file: string, title: string): string[] {
  const args: string[] = [];
  if (action.printer !== undefined) args.push('-d', action.printer);
  if (action.copies !== undefined) args.push('-n', String(action.copies));
  for (const [k, v] of Object.entries(action.options ?? {})) args.push('-o', `${k}=${v}`);
  args.push('-t', title, '--', file);
  return args;
}

const substitutePrint = (arg: string, vars: { file: string; printer: string; copies: string }): string =>
  arg.replace(/\{(file|printer|copies)\}/gu, (_m, k: keyof typeof vars) => vars[k]);

/** What `dropwire printers` and a print rule say when the host has no print system (`lp`, `lpstat` missing). */
export const noPrintSystem = (command: string): string => `${command} not found (install CUPS)`;

function outcomeOf(run: ProcessRun, detail: Record<string, unknown>, jobId?: string, command?: string): Outcome {
  const { spawnError, cancelled, pid: _pid, ...rest } = run;
  const full: Record<string, unknown> = { ...detail, ...rest, ...(jobId !== undefined ? { jobId } : {}) };
  if (cancelled) return { status: 'failed', code: 'DW_CANCELLED', detail: full };
  if (spawnError === 'ENOENT' && command !== undefined) {
    return { status: 'failed', code: 'DW_NO_PRINT_SYSTEM', detail: { ...full, error: noPrintSystem(command) } };
  }
  if (spawnError !== undefined) return { status: 'failed', code: 'DW_PRINT_FAILED', detail: { ...full, error: spawnError } };
  if (run.exitCode !== 0) return { status: 'failed', code: 'DW_PRINT_FAILED', detail: full };
  return { status: 'handled', detail: full };
}

export async function runPrint(action: Extract<Action, { type: 'print' }>, ctx: HandlerContext): Promise<Outcome> {
  const platform = ctx.platform ?? process.platform;
  const env = ctx.env ?? baseEnv();
  const copies = action.copies ?? 1;
  const detail: Record<string, unknown> = { printer: action.printer ?? '(default)', copies };
  const signal = ctx.signal ? { signal: ctx.signal } : {};
  if (ctx.signal?.aborted) return { status: 'failed', code: 'DW_CANCELLED', detail };

  if (platform !== 'win32') {
    const args = lpArgs(action, ctx.facts.file, safeName(ctx.facts.name));
    const run = await runProcess('lp', args, { env: { ...env, LC_ALL: 'C' }, timeoutMs: PRINT_TIMEOUT_MS, ...signal });
    return outcomeOf(run, detail, parseJobId(run.output), 'lp');
  }

  const template = ctx.printCommand ?? DEFAULT_WINDOWS_PRINT_COMMAND;
  const [command, ...rest] = template;
  if (command === undefined) {
    return { status: 'failed', code: 'DW_BAD_CONFIG', detail: { ...detail, error: 'printCommand is empty' } };
  }
  const vars = { file: ctx.facts.file, printer: action.printer ?? '', copies: String(copies) };
  const args = rest.map((a) => substitutePrint(a, vars));
  const childEnv = {
    ...env,
    DROPWIRE_FILE: ctx.facts.file,
    DROPWIRE_NAME: ctx.facts.name,
    DROPWIRE_FROM: ctx.facts.from,
    DROPWIRE_ID: ctx.facts.id,
    DROPWIRE_PRINTER: vars.printer,
    DROPWIRE_COPIES: vars.copies,
  };
  // A command that takes the number of copies runs once; any other runs once per copy.
  const runs = template.some((a) => a.includes('{copies}')) ? 1 : copies;
  let last: Outcome = { status: 'handled', detail };
  for (let i = 0; i < runs; i++) {
    last = outcomeOf(await runProcess(command, args, { env: childEnv, timeoutMs: PRINT_TIMEOUT_MS, ...signal }), detail);
    if (last.status === 'failed') break;
  }
  return last;
}

export interface Printer {
  name: string;
  isDefault: boolean;
  state: 'idle' | 'printing' | 'disabled' | 'unknown';
}

/** Parses `lpstat -e` (one destination per line) and `lpstat -d -p` in the C locale. */
export function parseLpstat(destinations: string, details: string): Printer[] {
  const defaultName = /^system default destination: (\S+)/mu.exec(details)?.[1];
  const states = new Map<string, Printer['state']>();
  for (const m of details.matchAll(/^printer (\S+) (?:is (idle)|now (printing)|(disabled))/gmu)) {
    states.set(m[1]!, m[2] ? 'idle' : m[3] ? 'printing' : 'disabled');
  }
  const names = destinations.split('\n').map((l) => l.trim()).filter((l) => l !== '');
  return names.map((name) => ({ name, isDefault: name === defaultName, state: states.get(name) ?? 'unknown' }));
}

/**
 * The printers this host can print to, for `dropwire printers`. Throws `DW_NO_PRINT_SYSTEM` when there is
 * no print system (no `lpstat`), `DW_PRINT_FAILED` when asking it fails.
 */
export async function listPrinters(
  opts: { env?: NodeJS.ProcessEnv; platform?: NodeJS.Platform; signal?: AbortSignal } = {},
): Promise<Printer[]> {
  const platform = opts.platform ?? process.platform;
  const env = { ...(opts.env ?? baseEnv()), LC_ALL: 'C' };
  const common = { env, timeoutMs: PRINT_TIMEOUT_MS, ...(opts.signal ? { signal: opts.signal } : {}) };
  const check = (run: ProcessRun, what: string): string => {
    if (run.spawnError === 'ENOENT') {
      const command = what.split(' ')[0]!;
      throw new DropwireError('DW_NO_PRINT_SYSTEM', platform === 'win32' ? `${command} not found: no print system on this host` : noPrintSystem(command));
    }
    if (run.exitCode !== 0) {
      const why = run.output.trim() || run.spawnError || `exit ${run.exitCode}`;
      throw new DropwireError('DW_PRINT_FAILED', `${what} failed: ${why}`);
    }
    return run.output;
  };
  if (platform === 'win32') {
    const out = check(
      await runProcess('powershell.exe', ['-NoProfile', '-NonInteractive', '-Command',
        'Get-CimInstance -ClassName Win32_Printer | ForEach-Object { $_.Name + [char]9 + $_.Default }'], common),
      'powershell Get-CimInstance Win32_Printer',
    );
    return out.split(/\r?\n/u).filter((l) => l.includes('\t')).map((l) => {
      const [name = '', def = ''] = l.split('\t');
      return { name: name.trim(), isDefault: def.trim() === 'True', state: 'unknown' as const };
    });
  }
  const destinations = await runProcess('lpstat', ['-e'], common);
  // With no queue at all, CUPS says so on stderr and exits 1; that is an empty list, not a failure.
  if (destinations.exitCode !== 0 && /No destinations added/iu.test(destinations.output)) return [];
  const names = check(destinations, 'lpstat -e');
  if (names.trim() === '') return [];
  const details = await runProcess('lpstat', ['-d', '-p'], common);
  return parseLpstat(names, details.exitCode === 0 ? details.output : '');
}
