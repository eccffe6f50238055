import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { describe, expect, it, onTestFinished } from 'vitest';
import { askAgent, ControlServer, controlPath } from '../../src/agent/control.js';
import { silentLogger } from '../../src/shared/log.js';
import { tempDir } from '../helpers/cli.js';

describe.skipIf(process.platform === 'win32')('control socket', () => {
  it('answers status, is 0600, refuses a second agent, and replaces a stale socket', async () => {
    const home = tempDir();
    let n = 0;
    const server = await ControlServer.listen({ home, log: silentLogger(), status: () => ({ connected: true, n: ++n }) });
    onTestFinished(() => server.close());
    expect(server.path).toBe(path.join(home, 'agent.sock'));
    expect(fs.statSync(server.path).mode & 0o777).toBe(0o600);
    expect(await askAgent(home)).toEqual({ connected: true, n: 1 });
    expect(await askAgent(home)).toEqual({ connected: true, n: 2 });
    await expect(ControlServer.listen({ home, log: silentLogger(), status: () => ({}) })).rejects.toMatchObject({ code: 'DW_AGENT_RUNNING' });
    await server.close();
    await server.close(); // idempotent
    await expect(askAgent(home)).rejects.toMatchObject({ code: 'DW_AGENT_NOT_RUNNING' });

    // A socket file left by a killed agent: nothing listens, the next agent takes it over.
    const stale = net.createServer();
    await new Promise<void>((r) => stale.listen(controlPath(home), r));
    await new Promise<void>((r) => {
      (stale as unknown as { _handle: { close(): void } })._handle.close();
      r();
    });
    fs.writeFileSync(path.join(home, 'x'), '');
    const again = await ControlServer.listen({ home, log: silentLogger(), status: () => ({ again: true }) });
    onTestFinished(() => again.close());
    expect(await askAgent(home)).toEqual({ again: true });
  });

  it('rejects bad requests and answers errors as codes', async () => {
    const home = tempDir();
    const server = await ControlServer.listen({ home, log: silentLogger(), status: () => ({}) });
    onTestFinished(() => server.close());
    await expect(askAgent(home, { op: 'reboot' } as unknown as { op: 'status' })).rejects.toMatchObject({ code: 'DW_BAD_REQUEST' });
    const raw = await new Promise<string>((resolve) => {
      const s = net.connect(server.path, () => s.write('x'.repeat(10_000)));
      let b = '';
      s.on('data', (d) => (b += d.toString()));
      s.on('close', () => resolve(b));
      s.on('error', () => resolve(b));
    });
    expect(raw).toContain('DW_BAD_REQUEST');
  });

  it('a home too long for a socket path gets a hashed name in the temp folder', () => {
    const long = '/' + 'x'.repeat(120);
    expect(controlPath(long)).toMatch(/dropwire-[0-9a-f]{16}\.sock$/);
    expect(controlPath('C:\\ProgramData\\dropwire', 'win32')).toMatch(/^\\\\\.\\pipe\\dropwire-agent-[0-9a-f]{16}$/);
  });
});
