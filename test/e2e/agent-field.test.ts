import fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { cli, setup, spawnCli, tempDir } from '../helpers/cli.js';

type Msg = { status: string; result?: Record<string, unknown> };

describe('print without a print system', () => {
  it('a print rule on a host without lp fails with DW_NO_PRINT_SYSTEM and says to install CUPS', async () => {
    const s = await setup({ rules: [{ match: '*.pdf', action: { type: 'print' } }] });
    const empty = tempDir(); // a PATH with no lp in it
    const agent = spawnCli(['agent', '--home', s.home], { env: { PATH: empty } });
    const r = await s.api.send(s.device, 'menu.pdf', '%PDF-1.4 menu');
    expect(r.status).toBe(202);
    const m = (await s.api.until(r.json.id as string, ['failed', 'handled'])) as unknown as Msg;
    expect(m.status).toBe('failed');
    expect(m.result).toMatchObject({ code: 'DW_NO_PRINT_SYSTEM', error: 'lp not found (install CUPS)' });
    await agent.kill();
  });

  it('`dropwire printers --home DIR` is accepted and says the same when lpstat is missing', async () => {
    const home = tempDir();
    const empty = tempDir();
    const r = await cli(['printers', '--home', home], { env: { PATH: empty } });
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toBe('dropwire: DW_NO_PRINT_SYSTEM: lpstat not found (install CUPS)');
    expect(fs.readdirSync(home)).toEqual([]);
  });
});
