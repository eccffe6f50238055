import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { describe, expect, it, onTestFinished } from 'vitest';
import { BIN, cli, cliOk, setup, startRelay, tempDir, waitFor } from '../helpers/cli.js';

/** A port held by this test (a plain TCP listener on loopback). */
async function busyPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  onTestFinished(() => new Promise<void>((r) => server.close(() => r())));
  return (server.address() as net.AddressInfo).port;
}

function decodeToken(token: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(token.slice(4), 'base64url').toString()) as Record<string, unknown>;
}

const encodeToken = (o: Record<string, unknown>) => 'dw1.' + Buffer.from(JSON.stringify(o)).toString('base64url');

describe('errors that say what to do (issue 11.17, relay side)', () => {
  for (const which of ['--listen', '--http'] as const) {
    it(`a port in use (${which}) names the port and the flag, without a stack`, async () => {
      const port = await busyPort();
      const data = path.join(tempDir(), 'relay');
      const args = which === '--listen' ? ['--listen', `127.0.0.1:${port}`, '--http', '127.0.0.1:0'] : ['--listen', '127.0.0.1:0', '--http', `127.0.0.1:${port}`];
      const r = await cli(['relay', 'start', '--data', data, ...args]);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain('DW_ADDRESS_IN_USE');
      expect(r.stderr).toContain(`127.0.0.1:${port}`);
      expect(r.stderr).toContain(`${which} HOST:PORT`);
      expect(r.stderr).toContain(which === '--listen' ? 'agents' : 'HTTP API');
      expect(r.stderr).not.toMatch(/\n\s+at /);
      expect(r.stderr).not.toContain('unexpected error');
      // The folder is not left locked: a relay starts there right after.
      const ok = await startRelay(data);
      await ok.proc.kill();
    });
  }

  it('`init` with a used, an unknown or an expired enrollment token says which, and to ask for a new one', async () => {
    const s = await setup();
    const dir = tempDir();
    const token = await cliOk(['relay', 'device', 'add', 'kiosk', '--data', s.data]);
    await cliOk(['init', token, '--home', path.join(dir, 'a')]);

    const used = await cli(['init', token, '--home', path.join(dir, 'b')]);
    expect(used.code).toBe(1);
    expect(used.stderr).toContain('DW_ENROLL_USED');
    expect(used.stderr).toContain('already used');
    expect(used.stderr).toContain('ask for a new token with `relay device add`');

    const o = decodeToken(await cliOk(['relay', 'device', 'add', 'till', '--data', s.data]));
    const unknown = await cli(['init', encodeToken({ ...o, s: 'not-the-secret' }), '--home', path.join(dir, 'c')]);
    expect(unknown.stderr).toContain('DW_ENROLL_UNKNOWN');
    expect(unknown.stderr).toContain('ask for a new token with `relay device add`');
    const removed = await cli(['init', encodeToken({ ...o, n: 'no-such-device' }), '--home', path.join(dir, 'd')]);
    expect(removed.stderr).toContain('DW_ENROLL_UNKNOWN');

    // Expired at the relay (1 s valid); the token's own expiry is moved on so that the agent asks the relay.
    const short = decodeToken(await cliOk(['relay', 'device', 'add', 'door', '--data', s.data, '--ttl', String(1 / 3600)]));
    await new Promise((r) => setTimeout(r, 1500));
    const expired = await cli(['init', encodeToken({ ...short, e: Date.now() + 3600_000 }), '--home', path.join(dir, 'e')]);
    expect(expired.stderr).toContain('DW_ENROLL_EXPIRED');
    expect(expired.stderr).toContain('expired');
    expect(expired.stderr).toContain('ask for a new token with `relay device add`');
    // Expired by the token's own date: refused before dialing, with the same advice.
    const local = await cli(['init', encodeToken(short), '--home', path.join(dir, 'f')]);
    expect(local.stderr).toContain('DW_TOKEN_EXPIRED');
    expect(local.stderr).toContain('ask for a new token with `relay device add`');
  });
});

describe('commands that say what happened (issue 11.19)', () => {
  it('`device add` prints only the token on stdout and the `init` line on stderr; remove and empty lists speak', async () => {
    const dir = tempDir();
    const data = path.join(dir, 'relay');
    const relay = await startRelay(data);
    const empty = await cli(['relay', 'device', 'list', '--data', data]);
    expect(empty.code).toBe(0);
    expect(empty.stdout).toBe('');
    expect(empty.stderr).toContain('no devices');
    expect((await cli(['relay', 'device', 'list', '--json', '--data', data])).stdout.trim()).toBe('[]');
    expect((await cli(['relay', 'token', 'list', '--data', data])).stderr).toContain('no sender tokens');

    const add = await cli(['relay', 'device', 'add', 'shop', '--data', data]);
    expect(add.code).toBe(0);
    const token = add.stdout.trim();
    expect(add.stdout).toBe(token + '\n');
    expect(token).toMatch(/^dw1\.[A-Za-z0-9_-]+$/);
    expect(add.stderr).toContain(`dropwire init ${token}`);

    const remove = await cli(['relay', 'device', 'remove', 'shop', '--data', data]);
    expect(remove.code).toBe(0);
    expect(remove.stdout).toContain("removed device 'shop'");
    expect(remove.stdout).toContain('the running relay dropped its connection');
    await relay.proc.kill();
    await cliOk(['relay', 'device', 'add', 'till', '--data', data, '--public', '127.0.0.1:1']);
    expect(await cliOk(['relay', 'device', 'remove', 'till', '--data', data])).toContain('(the relay is not running)');
    await cliOk(['relay', 'token', 'add', 'web', '--data', data]);
    expect(await cliOk(['relay', 'token', 'remove', 'web', '--data', data])).toContain("removed token 'web'");
  });

  const hasScript = (() => {
    try {
      execFileSync('script', ['--version'], { stdio: 'ignore' });
      return true;
    } catch {
      return false;
    }
  })();
  if (!hasScript) console.log('skipping the terminal summary test: `script` (util-linux) is not installed');

  it.skipIf(!hasScript)('`relay start` on a terminal prints a short summary (addresses, key fingerprint) besides the JSON logs', async () => {
    const dir = tempDir();
    const data = path.join(dir, 'relay');
    const cmd = [process.execPath, BIN, 'relay', 'start', '--data', data, '--listen', '127.0.0.1:0', '--http', '127.0.0.1:0'].map((a) => `'${a}'`).join(' ');
    // `script` gives the relay a pseudo-terminal as stdout.
    const child = spawn('script', ['-qfec', cmd, '/dev/null'], { stdio: ['pipe', 'pipe', 'pipe'] });
    onTestFinished(() => {
      if (child.exitCode === null) child.kill('SIGKILL');
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    await waitFor(() => (out.includes('relay key') && fs.existsSync(path.join(data, 'relay.json')) ? true : undefined), 20_000, 'the summary');
    const info = JSON.parse(fs.readFileSync(path.join(data, 'relay.json'), 'utf8')) as { agents: string; http: string; publicKey: string; pid: number };
    const fingerprint = 'SHA256:' + createHash('sha256').update(Buffer.from(info.publicKey, 'hex')).digest('base64').replace(/=+$/, '');
    expect(out).toContain(`pid ${info.pid}`);
    expect(out).toContain(info.agents);
    expect(out).toContain(`http://${info.http}`);
    expect(out).toContain(fingerprint);
    expect(out).toContain('"msg":"relay listening"'); // the JSON logs go on
    process.kill(info.pid, 'SIGTERM');
    await waitFor(() => (child.exitCode !== null ? true : undefined), 20_000, 'the relay to stop');
  });

  it('without a terminal, `relay start` writes JSON lines only', async () => {
    const data = path.join(tempDir(), 'relay');
    const relay = await startRelay(data);
    await relay.proc.waitLog((l) => l.msg === 'relay listening');
    await relay.proc.kill();
    expect(relay.proc.logs.every((l) => typeof l.level === 'number')).toBe(true);
  });
});
