/**
 * Real servers for the reach tests, on loopback, each in a temp dir with its own config, pid file and logs,
 * stopped by PID when the test ends: a test CA and server certificates (openssl), nginx as a TLS-terminating
 * reverse proxy, squid and tinyproxy as CONNECT proxies with basic authentication.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { onTestFinished } from 'vitest';
import { alive } from './process.js';
import { freePort } from './net.js';

export { freePort };

export const NGINX = '/usr/sbin/nginx';
export const SQUID = '/usr/sbin/squid';
export const TINYPROXY = '/usr/bin/tinyproxy';
export const SQUID_NCSA = '/usr/lib/squid/basic_ncsa_auth';

export function hasBinary(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

export function hasOpenssl(): boolean {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}


export async function waitListening(port: number, ms = 15_000, host = '127.0.0.1'): Promise<void> {
  const end = Date.now() + ms;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect({ host, port }, () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > end) throw new Error(`nothing listens on ${host}:${port} after ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export interface TestCa {
  dir: string;
  caCert: string;
  caKey: string;
}

/** A test CA (EC P-256), valid two days. */
export function makeCa(dir: string): TestCa {
  const caKey = path.join(dir, 'ca.key');
  const caCert = path.join(dir, 'ca.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', caKey, '-out', caCert, '-days', '2', '-subj', '/CN=dropwire test CA',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'], { stdio: 'ignore' });
  return { dir, caCert, caKey };
}

/** A server certificate for 127.0.0.1 and localhost signed by `ca`; `name` picks the files and the CN. */
export function serverCert(ca: TestCa, name = 'server'): { cert: string; key: string } {
  const key = path.join(ca.dir, `${name}.key`);
  const csr = path.join(ca.dir, `${name}.csr`);
  const cert = path.join(ca.dir, `${name}.pem`);
  const ext = path.join(ca.dir, `${name}.ext`);
  fs.writeFileSync(ext, 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature\n');
  execFileSync('openssl', ['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', csr, '-subj', `/CN=${name}`], { stdio: 'ignore' });
  execFileSync('openssl', ['x509', '-req', '-in', csr, '-CA', ca.caCert, '-CAkey', ca.caKey, '-set_serial', `0x${Date.now().toString(16)}${Math.floor(Math.random() * 1e6).toString(16)}`, '-out', cert, '-days', '2', '-extfile', ext], { stdio: 'ignore' });
  return { cert, key };
}

export interface Daemon {
  pid: number;
  port: number;
  child: ChildProcess;
  log: () => string;
  stop(): Promise<void>;
}

/** Runs `file args` in the foreground; stopped by PID (SIGTERM, then SIGKILL) when the test ends. */
function runDaemon(file: string, args: string[], port: number, logFile: string): Daemon {
  let output = '';
  const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout!.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (output += d.toString()));
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const d: Daemon = {
    pid: child.pid!,
    port,
    child,
    log: () => output + (fs.existsSync(logFile) ? fs.readFileSync(logFile, 'utf8') : ''),
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 5_000))]);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
  onTestFinished(() => d.stop());
  return d;
}

/** Children of `pid` (from /proc): nginx's workers, for the tests to kill. */
export function childPids(pid: number): number[] {
  const out: number[] = [];
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${e}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid && alive(Number(e))) out.push(Number(e));
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

export interface Nginx extends Daemon {
  conf: string;
  /** `nginx -s reload` of this instance (its -c and pid file). */
  reload(): void;
  /** SIGKILL to every worker (by PID); the master starts new ones. Returns the PIDs killed. */
  killWorkers(): number[];
}

/**
 * nginx terminating TLS on `port` in front of the relay's HTTP port: the README's snippet, with this
 * instance's paths. `worker_shutdown_timeout` makes a reload end the old workers' WebSocket connections.
 */
export async function startNginx(dir: string, o: { port: number; upstream: string; cert: string; key: string }): Promise<Nginx> {
  const conf = path.join(dir, 'nginx.conf');
  const pid = path.join(dir, 'nginx.pid');
  const errorLog = path.join(dir, 'nginx-error.log');
  for (const t of ['body', 'proxy', 'fastcgi', 'uwsgi', 'scgi']) fs.mkdirSync(path.join(dir, `tmp-${t}`), { recursive: true });
  fs.writeFileSync(
    conf,
    `daemon off;
${process.getuid?.() === 0 ? 'user root;' : ''}
worker_processes 2;
worker_shutdown_timeout 1s;
error_log ${errorLog} info;
events { worker_connections 512; }
http {
  access_log ${path.join(dir, 'nginx-access.log')};
  client_body_temp_path ${path.join(dir, 'tmp-body')};
  proxy_temp_path ${path.join(dir, 'tmp-proxy')};
  fastcgi_temp_path ${path.join(dir, 'tmp-fastcgi')};
  uwsgi_temp_path ${path.join(dir, 'tmp-uwsgi')};
  scgi_temp_path ${path.join(dir, 'tmp-scgi')};

  # --- README "Behind nginx" from here ---
  map $http_upgrade $connection_upgrade {
    default upgrade;
    ''      close;
  }
  server {
    listen 127.0.0.1:${o.port} ssl;
    ssl_certificate     ${o.cert};
    ssl_certificate_key ${o.key};

    # Agents: WebSocket carrying the dropwire protocol (PROTOCOL 11).
    location = /v1/connect {
      proxy_pass http://${o.upstream};
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_read_timeout 60s;   # the protocol's PING (every 10 s) keeps it busy
      proxy_send_timeout 60s;
      proxy_buffering off;
    }
    # Senders: the HTTP API, uploads streamed through.
    location / {
      proxy_pass http://${o.upstream};
      proxy_http_version 1.1;
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      client_max_body_size 0;
      proxy_request_buffering off;
      proxy_buffering off;
      proxy_read_timeout 120s;
    }
  }
  # --- to here ---
}
`,
  );
  const d = runDaemon(NGINX, ['-e', errorLog, '-c', conf, '-g', `pid ${pid};`], o.port, errorLog);
  await waitListening(o.port);
  return {
    ...d,
    conf,
    reload() {
      execFileSync(NGINX, ['-e', errorLog, '-c', conf, '-g', `pid ${pid};`, '-s', 'reload'], { stdio: 'pipe' });
    },
    killWorkers() {
      const workers = childPids(d.pid);
      for (const w of workers) process.kill(w, 'SIGKILL');
      return workers;
    },
  };
}

/** tinyproxy on `port` with basic authentication (`user` / `password`); CONNECT to any port. */
export async function startTinyproxy(dir: string, o: { port: number; user: string; password: string }): Promise<Daemon> {
  const conf = path.join(dir, 'tinyproxy.conf');
  const log = path.join(dir, 'tinyproxy.log');
  const root = process.getuid?.() === 0;
  fs.writeFileSync(
    conf,
    `${root ? 'User root\nGroup root\n' : ''}Port ${o.port}
Listen 127.0.0.1
Timeout 600
MaxClients 100
Allow 127.0.0.1
BasicAuth ${o.user} ${o.password}
LogLevel Info
LogFile "${log}"
PidFile "${path.join(dir, 'tinyproxy.pid')}"
`,
  );
  const d = runDaemon(TINYPROXY, ['-d', '-c', conf], o.port, log);
  await waitListening(o.port);
  return d;
}

/** squid on `port` with basic authentication from an htpasswd file (apr1 hash by openssl); CONNECT to any port. */
export async function startSquid(parent: string, o: { port: number; user: string; password: string }): Promise<Daemon> {
  // Run as root, squid drops to the 'proxy' user, which must be able to write its logs here.
  const dir = path.join(parent, 'squid');
  fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
  const proxyUser = process.getuid?.() === 0 ? /^proxy:[^:]*:(\d+):(\d+):/m.exec(fs.readFileSync('/etc/passwd', 'utf8')) : null;
  if (proxyUser) fs.chownSync(dir, Number(proxyUser[1]), Number(proxyUser[2]));
  const conf = path.join(dir, 'squid.conf');
  const passwd = path.join(dir, 'squid.passwd');
  const log = path.join(dir, 'squid-cache.log');
  const hash = execFileSync('openssl', ['passwd', '-apr1', o.password], { encoding: 'utf8' }).trim();
  fs.writeFileSync(passwd, `${o.user}:${hash}\n`);
  fs.writeFileSync(
    conf,
    `http_port 127.0.0.1:${o.port}
pid_filename ${path.join(dir, 'squid.pid')}
cache_log ${log}
access_log stdio:${path.join(dir, 'squid-access.log')}
cache_store_log none
cache deny all
coredump_dir ${dir}
${proxyUser ? 'cache_effective_user proxy\n' : ''}shutdown_lifetime 1 seconds
auth_param basic program ${SQUID_NCSA} ${passwd}
auth_param basic realm dropwire-test
acl authenticated proxy_auth REQUIRED
acl localhost_src src 127.0.0.1/32
http_access deny !localhost_src
http_access deny !authenticated
http_access allow authenticated
http_access deny all
`,
  );
  fs.chmodSync(passwd, 0o644);
  const d = runDaemon(SQUID, ['-N', '-f', conf], o.port, path.join(dir, 'squid-access.log'));
  await waitListening(o.port, 30_000);
  return d;
}
