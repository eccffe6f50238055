import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { cli, cliOk, randomData, recordingHandler, sha256, spawnCli, startRelay, tempDir, waitFor, type Proc } from '../helpers/cli.js';

/** A relay and enrolled hosts; `allow` maps a host to its send-to glob. */
export async function hosts(names: string[], o: { allow?: Record<string, string>; rules?: Record<string, unknown[]>; relayArgs?: string[] } = {}) {
  const dir = tempDir('dw-send-');
  const data = path.join(dir, 'relay');
  const relay = await startRelay(data, o.relayArgs);
  const homes: Record<string, string> = {};
  for (const name of names) {
    const glob = o.allow?.[name];
    const token = await cliOk(['relay', 'device', 'add', name, '--data', data, ...(glob ? ['--send-to', glob] : [])]);
    homes[name] = path.join(dir, name);
    await cliOk(['init', token, '--home', homes[name]!]);
    const rules = o.rules?.[name];
    if (rules) {
      const file = path.join(homes[name]!, 'config.json');
      const cfg = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
      cfg.rules = rules;
      fs.writeFileSync(file, JSON.stringify(cfg, null, 2));
    }
  }
  const agents: Record<string, Proc> = {};
  const start = async (name: string) => {
    const p = spawnCli(['agent', '--home', homes[name]!]);
    agents[name] = p;
    await p.waitLog((l) => l.msg === 'session started');
    return p;
  };
  return { dir, data, relay, homes, agents, start };
}

describe('hosts send too (issue 16)', () => {
  it('host A sends to host B: the handler gets the exact bytes; --wait exits 0 handled, 4 failed, 5 rejected', async () => {
    const scratch = tempDir('dw-send-files-');
    const rec = recordingHandler(scratch);
    const h = await hosts(['till', 'office'], {
      allow: { till: 'office' },
      rules: {
        office: [
          { match: '*.bad', action: { type: 'exec', command: process.execPath, args: ['-e', 'console.log("no such order"); process.exit(3)'] } },
          { ...(rec.rule as object), match: '*.csv' },
        ],
      },
    });
    await h.start('till');
    await h.start('office');
    const csv = path.join(scratch, 'daily-export.csv');
    const body = randomData(300_000);
    fs.writeFileSync(csv, body);

    const ok = await cli(['send', csv, '--to', 'office', '--wait=60', '--home', h.homes.till!]);
    expect(ok.stderr).toBe('');
    expect(ok.code).toBe(0);
    const [id, status, name] = ok.stdout.trim().split('\t');
    expect(status).toBe('handled');
    expect(name).toBe('daily-export.csv');
    expect(rec.runs()).toEqual([{ id: id!, sha: sha256(body), name: 'daily-export.csv' }]);

    const badFile = path.join(scratch, 'order.bad');
    fs.writeFileSync(badFile, 'x');
    const failed = await cli(['send', badFile, '--to', 'office', '--wait', '--json', '--home', h.homes.till!]);
    expect(failed.code).toBe(4);
    const f = JSON.parse(failed.stdout.trim()) as { id: string; status: string; result: { exitCode: number } };
    expect(f).toMatchObject({ status: 'failed', final: true, filename: 'order.bad', result: { exitCode: 3 } });

    const other = path.join(scratch, 'photo.jpg');
    fs.writeFileSync(other, 'jpeg');
    const rejected = await cli(['send', other, '--to', 'office', '--wait=60', '--home', h.homes.till!]);
    expect(rejected.code).toBe(5);
    expect(rejected.stdout).toMatch(/\trejected\tphoto\.jpg\t.*DW_NO_RULE/);

    // Without --wait: the id once stored; the sender's id is the message's (the relay's HTTP view agrees).
    const quick = await cli(['send', csv, '--to', 'office', '--home', h.homes.till!]);
    expect(quick.code).toBe(0);
    expect(quick.stdout.trim()).toMatch(/^[0-9a-z]{20,}$/);
    await waitFor(() => rec.runs().length === 2 || undefined, 20_000, 'the second csv handled');
    expect(rec.runs()[1]!.id).toBe(quick.stdout.trim());
  });

  it('a device not allowed to send is refused with DW_FORBIDDEN and says so; allow lets it; no agent needed', async () => {
    const scratch = tempDir('dw-send-files-');
    const rec = recordingHandler(scratch);
    const h = await hosts(['kiosk', 'office'], { rules: { office: [rec.rule] } });
    await h.start('office');
    const file = path.join(scratch, 'receipt.txt');
    fs.writeFileSync(file, 'receipt 42\n');
    // The kiosk runs no agent: `send` dials the relay itself with the device key.
    const refused = await cli(['send', file, '--to', 'office', '--home', h.homes.kiosk!]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain('DW_FORBIDDEN');
    expect(refused.stderr).toContain("may not send to 'office'");
    const json = await cli(['send', file, '--to', 'office', '--json', '--home', h.homes.kiosk!]);
    expect(json.code).toBe(1);
    expect(JSON.parse(json.stdout.trim())).toMatchObject({ error: { code: 'DW_FORBIDDEN' } });
    expect(rec.runs()).toEqual([]);

    expect(await cliOk(['relay', 'device', 'allow', 'kiosk', '--send-to', 'off*', '--data', h.data])).toContain("may send to 'off*'");
    const sent = await cli(['send', file, '--to', 'office', '--wait=60', '--home', h.homes.kiosk!]);
    expect(sent.code).toBe(0);
    expect(sent.stdout).toMatch(/\thandled\treceipt\.txt/);
    expect(rec.runs().map((r) => r.sha)).toEqual([sha256('receipt 42\n')]);
    // Other names stay refused; '-' takes it back.
    const elsewhere = await cli(['send', file, '--to', 'kiosk', '--home', h.homes.kiosk!]);
    expect(elsewhere.stderr).toContain('DW_FORBIDDEN');
    await cliOk(['relay', 'device', 'allow', 'kiosk', '--send-to', '-', '--data', h.data]);
    expect((await cli(['send', file, '--to', 'office', '--home', h.homes.kiosk!])).stderr).toContain('DW_FORBIDDEN');
  });
});
