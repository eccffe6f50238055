import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { cli, cliOk, ROOT, sha256, startRelay, tempDir } from '../helpers/cli.js';

/** GET /install.sh, /install.ps1, /download/FILE from a relay run by node (the npm package), and --version. */

function get(url: string, headers: Record<string, string> = {}): Promise<{ status: number; body: string; type: string | undefined }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { headers }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, type: res.headers['content-type'] }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('the relay hands out installers and release files', () => {
  it('serves the installers with its own address, the files of --downloads, and 404 JSON otherwise', async () => {
    const dir = tempDir();
    const downloads = path.join(dir, 'downloads');
    fs.mkdirSync(path.join(downloads, 'sub'), { recursive: true });
    const exe = Buffer.from('not really an executable\n');
    fs.writeFileSync(path.join(downloads, 'dropwire-linux-x64'), exe);
    fs.writeFileSync(path.join(downloads, 'SHA256SUMS'), `${sha256(exe)}  dropwire-linux-x64\n`);
    const relay = await startRelay(path.join(dir, 'relay'), ['--downloads', downloads]);
    const base = `http://${relay.info.http}`;

    const sh = await get(`${base}/install.sh`);
    expect(sh.status).toBe(200);
    expect(sh.body.startsWith('#!/bin/sh\n')).toBe(true);
    expect(sh.body).toContain(`BASE='${base}'`);
    expect(sh.body).not.toContain('__DROPWIRE_BASE_URL__');
    // Behind a TLS proxy the installer downloads over https from the proxy's name.
    const proxied = await get(`${base}/install.sh`, { 'x-forwarded-proto': 'https', 'x-forwarded-host': 'relay.example.com' });
    expect(proxied.body).toContain("BASE='https://relay.example.com'");
    // A Host header that could break out of the quoted string is refused, not written into the script.
    const hostile = await get(`${base}/install.sh`, { host: "x';touch /tmp/pwned;'" });
    expect(hostile.status).toBe(400);
    expect(JSON.parse(hostile.body)).toMatchObject({ error: { code: 'DW_BAD_REQUEST' } });
    const ps1 = await get(`${base}/install.ps1`);
    expect(ps1.status).toBe(200);
    expect(ps1.body).toContain(`[string]$Base = '${base}'`);

    const file = await get(`${base}/download/dropwire-linux-x64`);
    expect(file).toMatchObject({ status: 200, body: exe.toString(), type: 'application/octet-stream' });
    expect((await get(`${base}/download/SHA256SUMS`)).body).toBe(`${sha256(exe)}  dropwire-linux-x64\n`);
    for (const bad of ['/download/sub', '/download/..%2F..%2Frelay%2Frelay.db', '/download/.x', '/download/', '/download/nope', '/download/%ZZ']) {
      const r = await get(`${base}${bad}`);
      expect(r.status, bad).toBe(404);
      expect(JSON.parse(r.body), bad).toMatchObject({ error: { code: 'DW_NOT_FOUND' } });
    }
    // The sender API is untouched.
    expect((await get(`${base}/v1/devices`)).status).toBe(401);
    await relay.proc.kill();
  });

  it('relay device add prints the install command for the running relay on stderr, the token alone on stdout', async () => {
    const dir = tempDir();
    const data = path.join(dir, 'relay');
    const relay = await startRelay(data);
    const r = await cli(['relay', 'device', 'add', 'shop', '--data', data]);
    expect(r.code).toBe(0);
    const token = r.stdout.trim();
    expect(token).toMatch(/^dw1\.[A-Za-z0-9_-]+$/);
    expect(r.stderr).toContain(`curl -fsSL http://${relay.info.http}/install.sh | sh -s -- ${token}\n`);
    expect(r.stderr).toContain(`& ([scriptblock]::Create((irm http://${relay.info.http}/install.ps1))) ${token}`);
    await relay.proc.kill();
  });

  it('dropwire --version prints the version and the commit of the build', async () => {
    const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string };
    const built = JSON.parse(fs.readFileSync(path.join(ROOT, 'dist', 'version.json'), 'utf8')) as { commit: string };
    // npm run build wrote the commit of this checkout at that time: a real commit of this repository.
    expect(built.commit).toMatch(/^[0-9a-f]{40}(-dirty)?$/);
    expect(execFileSync('git', ['cat-file', '-t', built.commit.replace(/-dirty$/, '')], { cwd: ROOT, encoding: 'utf8' }).trim()).toBe('commit');
    expect(await cliOk(['--version'])).toBe(`dropwire ${pkg.version} (commit ${built.commit})`);
  });
});
