import { toDropwireError } from '../../shared/errors.js';
import type { Action, FileFacts } from '../rules.js';
import { baseEnv, runExec } from './exec.js';
import { runOpen } from './open.js';
import { runPrint } from './print.js';
import { runSave } from './save.js';

export { baseEnv } from './exec.js';
export { listPrinters, type Printer } from './print.js';

/**
 * What a handler did. `detail` is reported back to the sender as is: exitCode, signal, durationMs, output
 * (last 4 KiB of combined stdout+stderr), timedOut, jobId, printer, savedAs, ... depending on the action.
 */
export interface Outcome {
  status: 'handled' | 'failed';
  code?: string;
  detail: Record<string, unknown>;
}

export interface HandlerContext {
  facts: FileFacts;
  /** Aborting it kills a running command or opener (whole process tree) and stops a copy in progress. */
  signal?: AbortSignal;
  /** Base environment for child processes, the agent's secrets already removed. Default: `baseEnv()`. */
  env?: NodeJS.ProcessEnv;
  /** Default: `process.platform`. */
  platform?: NodeJS.Platform;
  /** Windows print command, `{file}` `{printer}` `{copies}` substituted per argument. */
  printCommand?: string[];
  /** How long the desktop opener (`xdg-open`, `open`, ...) may take to return. Default 30 s. */
  openTimeoutMs?: number;
}

/** Runs one action for one file. Never throws for a handler failure: returns `failed` with a coded `code`. */
export async function runAction(action: Action, ctx: HandlerContext): Promise<Outcome> {
  const context: HandlerContext = { ...ctx, env: ctx.env ?? baseEnv() };
  const started = Date.now();
  try {
    switch (action.type) {
      case 'save':
        return await runSave(action, context);
      case 'exec':
        return await runExec(action, context);
      case 'print':
        return await runPrint(action, context);
      case 'open':
        return await runOpen(action, context);
      default:
        return {
          status: 'failed',
          code: 'DW_BAD_CONFIG',
          detail: { error: `unknown action type ${JSON.stringify((action as { type?: unknown }).type)}` },
        };
    }
  } catch (err) {
    const e = toDropwireError(err, 'DW_HANDLER_FAILED');
    return { status: 'failed', code: e.code, detail: { error: e.message, durationMs: Date.now() - started } };
  }
}
