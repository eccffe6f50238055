/**
 * A private CUPS scheduler for print tests: its own ServerRoot, spool, logs, cache and state in a temporary
 * folder, listening on 127.0.0.1 on a free port, never touching the machine's own CUPS. Clients reach it
 * with `CUPS_SERVER=127.0.0.1:PORT` (see `env`). Stopped by its PID.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { freePort } from './net.js';

const START_TIMEOUT_MS = 15_000;
const STOP_TIMEOUT_MS = 5_000;
const SBIN_DIRS = ['/usr/sbin', '/usr/local/sbin', '/sbin'];

/** Finds an executable on PATH or in the sbin folders (lpadmin and cupsd live there). */
export function findTool(name: string): string | undefined {
  const dirs = [...(process.env['PATH'] ?? '').split(path.delimiter), ...SBIN_DIRS].filter((d) => d !== '');
  for (const dir of dirs) {
    const file = path.join(dir, name);
    try {
      accessSync(file, constants.X_OK);
      return file;
    } catch {
      // keep looking
    }
  }
  return undefined;
}

/** Why a private CUPS cannot be started here, or `undefined` when it can. */
export function cupsUnavailableReason(): string | undefined {
  if (process.platform === 'win32') return 'CUPS does not exist on Windows';
  const missing = ['cupsd', 'lpadmin', 'lp', 'lpstat'].filter((t) => findTool(t) === undefined);
  if (missing.length > 0) return `${missing.join(', ')} not installed (apt-get install cups cups-client cups-bsd)`;
  return undefined;
}


export interface PrivateCups {
  /** `127.0.0.1:PORT` */
  readonly server: string;
  /** Environment for CUPS clients (`lp`, `lpstat`, `lpadmin`): CUPS_SERVER, PATH, LC_ALL=C. */
  readonly env: Record<string, string>;
  readonly dir: string;
  readonly pid: number;
  /** Adds an enabled raw queue printing to /dev/null. */
  addQueue(name: string): Promise<void>;
  /** Runs a CUPS client tool against this scheduler; rejects on a non-zero exit. */
  run(tool: string, args: string[]): Promise<string>;
  /** The scheduler's error log, for failure messages. */
  log(): Promise<string>;
  /** Idempotent. */
  stop(): Promise<void>;
}

function cupsdConf(port: number, dir: string): string {
  return `# dropwire test scheduler, ${dir}
Listen 127.0.0.1:${port}
LogLevel info
Browsing Off
BrowseLocalProtocols none
DefaultAuthType None
WebInterface No
MaxLogSize 0
<Location />
  Order allow,deny
  Allow all
</Location>
<Policy default>
  <Limit All>
    Order deny,allow
  </Limit>
</Policy>
`;
}

function cupsFilesConf(dir: string): string {
  const d = (sub: string): string => path.join(dir, sub);
  return `ServerRoot ${dir}
RequestRoot ${d('spool')}
CacheDir ${d('cache')}
StateDir ${d('state')}
TempDir ${d('tmp')}
ErrorLog ${d('log/error_log')}
AccessLog ${d('log/access_log')}
PageLog ${d('log/page_log')}
Printcap ${d('printcap')}
FileDevice Yes
User lp
Group lp
SystemGroup root
`;
}

export async function startCups(): Promise<PrivateCups> {
  const reason = cupsUnavailableReason();
  if (reason) throw new Error(`cannot start CUPS: ${reason}`);
  const cupsd = findTool('cupsd')!;
  const dir = await mkdtemp(path.join(os.tmpdir(), 'dw-cups-'));
  // cupsd drops to `lp` for filters and backends: they must be able to traverse the tree.
  await chmod(dir, 0o755);
  for (const sub of ['spool', 'cache', 'state', 'tmp', 'log', 'ppd', 'ssl']) await mkdir(path.join(dir, sub), { mode: 0o755 });
  const port = await freePort();
  const server = `127.0.0.1:${port}`;
  await writeFile(path.join(dir, 'cupsd.conf'), cupsdConf(port, dir));
  await writeFile(path.join(dir, 'cups-files.conf'), cupsFilesConf(dir));

  const toolPath = [...new Set([...SBIN_DIRS, ...(process.env['PATH'] ?? '').split(path.delimiter)])].join(path.delimiter);
  const env: Record<string, string> = { CUPS_SERVER: server, PATH: toolPath, LC_ALL: 'C', HOME: dir };

  let output = '';
  const child: ChildProcess = spawn(cupsd, ['-f', '-c', path.join(dir, 'cupsd.conf'), '-s', path.join(dir, 'cups-files.conf')], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout?.on('data', (c: Buffer) => (output += c.toString()));
  child.stderr?.on('data', (c: Buffer) => (output += c.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let stopped = false;

  const log = async (): Promise<string> => readFile(path.join(dir, 'log/error_log'), 'utf8').catch(() => '');
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
      process.kill(child.pid, 'SIGTERM');
      const timedOut = await Promise.race([exited.then(() => false), sleep(STOP_TIMEOUT_MS).then(() => true)]);
      if (timedOut) {
        process.kill(child.pid, 'SIGKILL');
        await exited;
      }
    }
    child.stdout?.destroy();
    child.stderr?.destroy();
    await rm(dir, { recursive: true, force: true });
  };
  const run = async (tool: string, args: string[]): Promise<string> => {
    const r = await execa(findTool(tool) ?? tool, args, { env, extendEnv: false, reject: false, all: true, timeout: 30_000 });
    if (r.exitCode !== 0) throw new Error(`${tool} ${args.join(' ')} failed (${r.exitCode ?? r.code}): ${r.all}`);
    return r.all ?? '';
  };

  try {
    // Ready when the scheduler answers; bounded.
    const deadline = Date.now() + START_TIMEOUT_MS;
    for (;;) {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`cupsd exited at start: ${output}`);
      const r = await execa(findTool('lpstat')!, ['-r'], { env, extendEnv: false, reject: false, all: true, timeout: 5_000 });
      if (r.exitCode === 0 && /scheduler is running/u.test(r.all ?? '')) break;
      if (Date.now() > deadline) throw new Error(`cupsd did not answer within ${START_TIMEOUT_MS} ms: ${output}\n${await log()}`);
      await sleep(100);
    }
  } catch (err) {
    await stop();
    throw err;
  }

  return {
    server,
    env,
    dir,
    pid: child.pid!,
    async addQueue(name: string) {
      await run('lpadmin', ['-p', name, '-E', '-v', 'file:///dev/null', '-m', 'raw']);
    },
    run,
    log,
    stop,
  };
}
