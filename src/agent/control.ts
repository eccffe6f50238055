import { createHash } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { DropwireError } from '../shared/errors.js';
import type { Logger } from '../shared/log.js';

/**
 * The agent's local control channel: `dropwire status` asks the running agent over a unix socket in the
 * agent home (mode 0600: only the agent's user, and root, may connect) or, on Windows, a named pipe
 * (whose default DACL gives write access only to its creator, SYSTEM and administrators).
 * One JSON line in (`{"op":"status"}`), one JSON line out, then the connection closes.
 */

export const CONTROL_MAX_REQUEST = 4096;
export const CONTROL_MAX_ANSWER = 1024 * 1024;
export const CONTROL_TIMEOUT_MS = 3000;
/** sun_path is 108 bytes on Linux, 104 on macOS; a longer home falls back to a hashed name in the temp folder. */
const MAX_SOCKET_PATH = 100;

export class AgentNotRunning extends DropwireError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('DW_AGENT_NOT_RUNNING', message, options);
    this.name = 'AgentNotRunning';
  }
}

/** `reload`: read config.json now and answer with the rules in force (`dropwire rule …` waits for it). */
export type ControlRequest = { op: 'status' } | { op: 'online'; device: string } | { op: 'reload' } | SendRequest;
/** `dropwire send` through the running agent: progress lines stream back, the last line is the answer. */
export interface SendRequest {
  op: 'send';
  files: string[];
  to: string;
  seal?: boolean;
  /** Seconds to wait for each message's final status (0: do not wait). */
  wait?: number;
}

export interface ControlHandlers {
  status: () => Record<string, unknown>;
  online?: (device: string) => Promise<Record<string, unknown>>;
  /** Applies config.json; answers `{ rules, version }` (see `rulesVersion`) or throws DW_BAD_CONFIG. */
  reload?: () => Record<string, unknown>;
  /** Sends files over the agent's session; `emit` streams progress lines before the answer. */
  send?: (req: SendRequest, emit: (line: Record<string, unknown>) => void) => Promise<Record<string, unknown>>;
}
export type ControlAnswer = { ok: true; status: Record<string, unknown> } | { ok: false; error: { code: string; message: string } };

/** Where the agent with this home listens. */
export function controlPath(home: string, platform: NodeJS.Platform = process.platform): string {
  const hash = createHash('sha256').update(platform === 'win32' ? home.toLowerCase() : home).digest('hex').slice(0, 16);
  if (platform === 'win32') return `\\\\.\\pipe\\dropwire-agent-${hash}`;
  const inHome = path.join(home, 'agent.sock');
  return Buffer.byteLength(inHome) <= MAX_SOCKET_PATH ? inHome : path.join(os.tmpdir(), `dropwire-${hash}.sock`);
}

export class ControlServer {
  readonly path: string;
  private readonly server: net.Server;
  private closed = false;

  private constructor(p: string, server: net.Server) {
    this.path = p;
    this.server = server;
  }

  /**
   * Listens for `dropwire status`. Throws DW_AGENT_RUNNING when another agent already answers on this
   * home's socket; a stale socket file (an agent that was killed) is removed first.
   */
  static async listen(o: ControlHandlers & { home: string; log: Logger }): Promise<ControlServer> {
    const p = controlPath(o.home);
    if (await answers(p)) throw new DropwireError('DW_AGENT_RUNNING', `another agent is already running with the folder ${o.home} (it answers on ${p})`);
    if (process.platform !== 'win32') fs.rmSync(p, { force: true });
    const server = net.createServer({ allowHalfOpen: false }, (sock) => serve(sock, o, o.log));
    // The socket is created with the process umask: make it 0600 from the first moment, not after a chmod.
    const umask = process.platform === 'win32' ? undefined : process.umask(0o177);
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen({ path: p, readableAll: false, writableAll: false }, () => {
          server.off('error', reject);
          resolve();
        });
      });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EADDRINUSE') throw new DropwireError('DW_AGENT_RUNNING', `another agent is already running with the folder ${o.home}`, { cause: err });
      throw new DropwireError('DW_CONTROL', `cannot open the control socket ${p}: ${(err as Error).message}`, { cause: err });
    } finally {
      if (umask !== undefined) process.umask(umask);
    }
    if (process.platform !== 'win32') fs.chmodSync(p, 0o600);
    server.on('error', (err) => o.log.warn({ err }, 'control socket error'));
    o.log.debug({ path: p }, 'control socket listening');
    return new ControlServer(p, server);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    if (process.platform !== 'win32') fs.rmSync(this.path, { force: true });
  }
}

function serve(sock: net.Socket, h: ControlHandlers, log: Logger): void {
  const { status, online, reload, send } = h;
  let buf = '';
  sock.setEncoding('utf8');
  sock.setTimeout(CONTROL_TIMEOUT_MS, () => sock.destroy());
  sock.on('error', () => sock.destroy());
  const answer = (a: ControlAnswer) => sock.end(JSON.stringify(a) + '\n');
  sock.on('data', (chunk: string) => {
    buf += chunk;
    if (buf.length > CONTROL_MAX_REQUEST) return answer({ ok: false, error: { code: 'DW_BAD_REQUEST', message: 'request too long' } });
    const nl = buf.indexOf('\n');
    if (nl < 0) return;
    let req: Partial<ControlRequest>;
    try {
      req = JSON.parse(buf.slice(0, nl)) as Partial<ControlRequest>;
    } catch {
      return answer({ ok: false, error: { code: 'DW_BAD_REQUEST', message: 'not JSON' } });
    }
    if (req.op === 'online' && online && typeof req.device === 'string' && req.device.length > 0 && req.device.length <= 64) {
      online(req.device).then(
        (st) => answer({ ok: true, status: st }),
        (err: unknown) => answer({ ok: false, error: { code: (err as { code?: string }).code ?? 'DW_INTERNAL', message: (err as Error).message } }),
      );
      return;
    }
    if (req.op === 'send' && send && Array.isArray(req.files) && req.files.every((f) => typeof f === 'string') && typeof req.to === 'string') {
      sock.setTimeout(0); // a large file takes as long as it takes; the client's going away ends nothing
      send(req as SendRequest, (line) => {
        if (!sock.destroyed) sock.write(JSON.stringify({ progress: line }) + '\n');
      }).then(
        (st) => answer({ ok: true, status: st }),
        (err: unknown) => answer({ ok: false, error: { code: (err as { code?: string }).code ?? 'DW_INTERNAL', message: (err as Error).message } }),
      );
      return;
    }
    const op = req.op === 'status' ? status : req.op === 'reload' ? reload : undefined;
    if (!op) return answer({ ok: false, error: { code: 'DW_BAD_REQUEST', message: `unknown op ${JSON.stringify(req.op)}` } });
    try {
      answer({ ok: true, status: op() });
    } catch (err) {
      log.warn({ err, op: req.op }, 'control request failed');
      answer({ ok: false, error: { code: (err as { code?: string }).code ?? 'DW_INTERNAL', message: (err as Error).message } });
    }
  });
}

/**
 * Asks the agent and reads its answer line by line: `onLine` gets each progress line; resolves with the
 * final answer. No timeout: a send lasts as long as the file takes.
 */
export function streamAgent(home: string, req: ControlRequest, onLine: (line: Record<string, unknown>) => void): Promise<Record<string, unknown>> {
  const p = controlPath(home);
  return new Promise((resolve, reject) => {
    const sock = net.connect(p);
    let buf = '';
    let last: ControlAnswer | undefined;
    sock.setEncoding('utf8');
    sock.once('connect', () => sock.write(JSON.stringify(req) + '\n'));
    sock.on('data', (chunk: string) => {
      buf += chunk;
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        let parsed: Record<string, unknown>;
        try {
          parsed = JSON.parse(line) as Record<string, unknown>;
        } catch {
          continue;
        }
        if (parsed.progress !== undefined) onLine(parsed.progress as Record<string, unknown>);
        else last = parsed as unknown as ControlAnswer;
      }
    });
    sock.once('close', () => {
      if (!last) return reject(new DropwireError('DW_CONTROL', `the agent on ${p} ended the connection without an answer`));
      if (!last.ok) return reject(new DropwireError(last.error.code, last.error.message));
      resolve(last.status);
    });
    sock.once('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') reject(new AgentNotRunning(`no agent is running with the folder ${home}`, { cause: err }));
      else reject(new DropwireError('DW_CONTROL', `cannot reach the agent on ${p}: ${err.message}`, { cause: err }));
    });
  });
}

/** True when an agent with this home is running (its control socket accepts connections). */
export function agentAnswers(home: string): Promise<boolean> {
  return answers(controlPath(home));
}

/** True when something accepts connections on `p` (a live agent); false for no file or a stale one. */
function answers(p: string): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = net.connect(p);
    sock.once('connect', () => {
      sock.destroy();
      resolve(true);
    });
    sock.once('error', () => resolve(false));
  });
}

/**
 * Asks the agent with this home. DW_AGENT_NOT_RUNNING when nothing listens; DW_CONTROL_DENIED when the
 * socket belongs to another user; DW_CONTROL on a timeout or a bad answer.
 */
export function askAgent(home: string, req: ControlRequest = { op: 'status' }, timeoutMs = CONTROL_TIMEOUT_MS): Promise<Record<string, unknown>> {
  const p = controlPath(home);
  return new Promise((resolve, reject) => {
    const sock = net.connect(p);
    let buf = '';
    let done = false;
    const finish = (err: Error | undefined, value?: Record<string, unknown>) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.destroy();
      if (err) reject(err);
      else resolve(value!);
    };
    const timer = setTimeout(() => finish(new DropwireError('DW_CONTROL', `the agent did not answer on ${p} within ${timeoutMs} ms`)), timeoutMs);
    sock.setEncoding('utf8');
    sock.once('connect', () => sock.write(JSON.stringify(req) + '\n'));
    sock.on('data', (chunk: string) => {
      buf += chunk;
      if (buf.length > CONTROL_MAX_ANSWER) finish(new DropwireError('DW_CONTROL', 'answer too long'));
    });
    sock.once('end', () => {
      let a: ControlAnswer;
      try {
        a = JSON.parse(buf) as ControlAnswer;
      } catch {
        return finish(new DropwireError('DW_CONTROL', `not an answer from an agent on ${p}`));
      }
      if (!a.ok) return finish(new DropwireError(a.error.code, a.error.message));
      finish(undefined, a.status);
    });
    sock.once('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') finish(new AgentNotRunning(`no agent is running with the folder ${home} (nothing listens on ${p})`, { cause: err }));
      else if (err.code === 'EACCES' || err.code === 'EPERM') finish(new DropwireError('DW_CONTROL_DENIED', `${p} belongs to the agent's user: run this as that user (or root)`, { cause: err }));
      else finish(new DropwireError('DW_CONTROL', `cannot reach the agent on ${p}: ${err.message}`, { cause: err }));
    });
  });
}
