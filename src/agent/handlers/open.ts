import { spawn } from 'node:child_process';
import path from 'node:path';
import type { Action } from '../rules.js';
import { baseEnv, definedOnly, OutputTail } from './exec.js';
import type { HandlerContext, Outcome } from './index.js';

/** How long the opener may take to return by default. It normally hands the file over and exits at once. */
export const DEFAULT_OPEN_TIMEOUT_MS = 30_000;

/**
 * The desktop's opener for a platform. The file is always its own argument; on Windows it reaches
 * PowerShell through DROPWIRE_FILE, never inside the script text. The spool path is absolute, so it can
 * never be read as an option.
 */
export function openerFor(platform: NodeJS.Platform, file: string): { command: string; args: string[] } {
  if (platform === 'win32') {
    return {
      command: 'powershell.exe',
      args: ['-NoProfile', '-NonInteractive', '-Command', 'Start-Process -FilePath $env:DROPWIRE_FILE'],
    };
  }
  if (platform === 'darwin') return { command: 'open', args: [file] };
  return { command: 'xdg-open', args: [file] };
}

/**
 * Opens the file with the desktop's default application. The agent must run in the user's graphical session;
 * on Linux without DISPLAY or WAYLAND_DISPLAY it fails at once with DW_NO_DESKTOP instead of hanging.
 *
 * We wait for the opener to exit, not for its output pipes to close: the application it starts may inherit
 * them and live for hours. The opener runs in its own process group so the application outlives the agent
 * (a Ctrl-C on the agent's terminal does not close the user's document); on timeout only the opener is killed.
 */
export async function runOpen(_action: Extract<Action, { type: 'open' }>, ctx: HandlerContext): Promise<Outcome> {
  const platform = ctx.platform ?? process.platform;
  const env = definedOnly(ctx.env ?? baseEnv());
  const file = path.resolve(ctx.facts.file);
  const timeoutMs = ctx.openTimeoutMs ?? DEFAULT_OPEN_TIMEOUT_MS;
  const { command, args } = openerFor(platform, file);
  const detail: Record<string, unknown> = { command, file };

  if (platform !== 'win32' && platform !== 'darwin' && !env['DISPLAY'] && !env['WAYLAND_DISPLAY']) {
    const error = 'neither DISPLAY nor WAYLAND_DISPLAY is set: the agent is not running in a desktop session';
    return { status: 'failed', code: 'DW_NO_DESKTOP', detail: { ...detail, error } };
  }
  if (ctx.signal?.aborted) return { status: 'failed', code: 'DW_CANCELLED', detail };

  const started = Date.now();
  const tail = new OutputTail();
  const child = spawn(command, args, {
    env: { ...env, DROPWIRE_FILE: file },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: platform !== 'win32',
    windowsHide: true,
  });
  child.stdout?.on('data', (c: Buffer) => tail.write(c));
  child.stderr?.on('data', (c: Buffer) => tail.write(c));

  type End =
    | { kind: 'exit'; code: number | null; signal: string | null }
    | { kind: 'error'; error: string }
    | { kind: 'timeout' | 'cancelled' };
  const end = await new Promise<End>((resolve) => {
    const finish = (e: End): void => {
      clearTimeout(timer);
      ctx.signal?.removeEventListener('abort', onAbort);
      resolve(e);
    };
    const onAbort = (): void => finish({ kind: 'cancelled' });
    const timer = setTimeout(() => finish({ kind: 'timeout' }), timeoutMs);
    ctx.signal?.addEventListener('abort', onAbort, { once: true });
    child.once('error', (err: NodeJS.ErrnoException) => finish({ kind: 'error', error: err.code ?? err.message }));
    child.once('exit', (code, signal) => finish({ kind: 'exit', code, signal }));
  });
  if (end.kind === 'timeout' || end.kind === 'cancelled') child.kill('SIGKILL');
  // Whatever the opened application still writes to the inherited pipes is none of our business.
  child.stdout?.destroy();
  child.stderr?.destroy();

  const full: Record<string, unknown> = { ...detail, durationMs: Date.now() - started, output: tail.text() };
  switch (end.kind) {
    case 'timeout':
      return { status: 'failed', code: 'DW_OPEN_TIMEOUT', detail: { ...full, timedOut: true } };
    case 'cancelled':
      return { status: 'failed', code: 'DW_CANCELLED', detail: full };
    case 'error':
      return { status: 'failed', code: 'DW_OPEN_FAILED', detail: { ...full, error: end.error } };
    case 'exit':
      if (end.code === 0) return { status: 'handled', detail: { ...full, exitCode: 0 } };
      return { status: 'failed', code: 'DW_OPEN_FAILED', detail: { ...full, exitCode: end.code, signal: end.signal } };
  }
}
