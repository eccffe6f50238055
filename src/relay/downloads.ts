import fs from 'node:fs';
import type http from 'node:http';
import path from 'node:path';
import { getAsset, isSea } from 'node:sea';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';

/**
 * What the relay hands out to hosts that install dropwire (README "Install on a host"), without a token:
 *
 * - `GET /install.sh`, `GET /install.ps1`: the installers (scripts/), with this relay's address written in
 *   so that they download from where they came from;
 * - `GET /download/FILE`: the single executables and SHA256SUMS from the release folder (`npm run release`
 *   writes `release/`; `relay start --downloads DIR` names another).
 *
 * Only plain names of regular files directly in the folder are served; anything else is a 404 JSON error.
 */

/** A file name the relay serves: no separators, no leading dot, nothing to escape. */
const SAFE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const INSTALLERS = { '/install.sh': 'install.sh', '/install.ps1': 'install.ps1' } as const;
/** Replaced by `http(s)://HOST` of the request in the installers. */
const BASE_PLACEHOLDER = '__DROPWIRE_BASE_URL__';
const HOST = /^[A-Za-z0-9.-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$/;

export interface DownloadsOptions {
  /** Folder of the executables and SHA256SUMS; default `release/` of the package (or next to the executable). */
  dir?: string;
}

/** The package folder (package.json and scripts/ side by side), found from this file. */
function packageRoot(): string | undefined {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    if (fs.existsSync(path.join(dir, 'package.json')) && fs.existsSync(path.join(dir, 'scripts', 'install.sh'))) return dir;
    dir = path.dirname(dir);
  }
  return undefined;
}

export function defaultDownloadsDir(): string {
  if (isSea()) return path.join(path.dirname(process.execPath), 'release');
  return path.join(packageRoot() ?? process.cwd(), 'release');
}

/** An installer's text: from the executable's assets in a single executable, else from scripts/. */
function installerText(name: string): string {
  if (isSea()) return getAsset(`install/${name}`, 'utf8');
  const root = packageRoot();
  if (!root) throw new Error(`cannot find scripts/${name} next to the dropwire package`);
  return fs.readFileSync(path.join(root, 'scripts', name), 'utf8');
}

/** `http(s)://host[:port]` as the client reached us (a TLS proxy in front says so with X-Forwarded-*). */
export function baseUrl(req: http.IncomingMessage): string | undefined {
  const first = (v: string | string[] | undefined) => (Array.isArray(v) ? v[0] : v)?.split(',')[0]?.trim();
  const proto = first(req.headers['x-forwarded-proto']) === 'https' ? 'https' : 'http';
  const host = first(req.headers['x-forwarded-host']) ?? first(req.headers.host);
  return host && HOST.test(host) ? `${proto}://${host}` : undefined;
}

function notFound(res: http.ServerResponse, message: string): void {
  const text = JSON.stringify({ error: { code: 'DW_NOT_FOUND', message } }) + '\n';
  res.writeHead(404, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

export class Downloads {
  readonly dir: string;

  constructor(o: DownloadsOptions = {}) {
    this.dir = path.resolve(o.dir ?? defaultDownloadsDir());
  }

  /** Answers the request and resolves true when it is one of ours (GET or HEAD); false otherwise. */
  async handle(req: http.IncomingMessage, res: http.ServerResponse, url: URL): Promise<boolean> {
    const method = req.method ?? 'GET';
    if (method !== 'GET' && method !== 'HEAD') return false;
    const installer = INSTALLERS[url.pathname as keyof typeof INSTALLERS];
    if (installer) {
      const base = baseUrl(req);
      if (!base) {
        const text = JSON.stringify({ error: { code: 'DW_BAD_REQUEST', message: 'a Host header naming this relay is needed' } }) + '\n';
        res.writeHead(400, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
        res.end(text);
        return true;
      }
      const body = Buffer.from(installerText(installer).split(BASE_PLACEHOLDER).join(base));
      res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8', 'content-length': body.length, 'cache-control': 'no-store' });
      res.end(method === 'HEAD' ? undefined : body);
      return true;
    }
    if (!url.pathname.startsWith('/download/')) return false;
    let name: string;
    try {
      name = decodeURIComponent(url.pathname.slice('/download/'.length));
    } catch {
      name = '';
    }
    if (!SAFE_NAME.test(name)) {
      notFound(res, 'no such download');
      return true;
    }
    const file = path.join(this.dir, name);
    let handle: fs.promises.FileHandle | undefined;
    try {
      handle = await fs.promises.open(file, 'r');
      const st = await handle.stat();
      if (!st.isFile()) throw Object.assign(new Error('not a file'), { code: 'ENOENT' });
      const type = name === 'SHA256SUMS' ? 'text/plain; charset=utf-8' : 'application/octet-stream';
      res.writeHead(200, { 'content-type': type, 'content-length': st.size, 'content-disposition': `attachment; filename="${name}"` });
      if (method === 'HEAD') {
        res.end();
        return true;
      }
      await pipeline(handle.createReadStream({ autoClose: false }), res);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (!res.headersSent && (code === 'ENOENT' || code === 'EISDIR' || code === 'ENOTDIR')) {
        notFound(res, fs.existsSync(this.dir) ? `no file '${name}' on this relay` : 'this relay has no release files (npm run release, or relay start --downloads DIR)');
        return true;
      }
      if (res.headersSent) res.destroy();
      else throw err;
    } finally {
      await handle?.close();
    }
    return true;
  }
}

/** The one-line install commands `relay device add` prints (on stderr) for the relay of `dataDir`. */
export function installCommand(dataDir: string, enrollToken: string): string {
  let http: string | undefined;
  try {
    http = (JSON.parse(fs.readFileSync(path.join(dataDir, 'relay.json'), 'utf8')) as { http?: string }).http;
  } catch {
    // not running: the operator fills in the address
  }
  const base = http && !/^(0\.0\.0\.0|\[::\]):/.test(http) ? `http://${http}` : 'https://RELAY';
  return [
    `install on a Linux or macOS host: curl -fsSL ${base}/install.sh | sh -s -- ${enrollToken}`,
    `install on a Windows host (PowerShell): & ([scriptblock]::Create((irm ${base}/install.ps1))) ${enrollToken}`,
  ].join('\n');
}
