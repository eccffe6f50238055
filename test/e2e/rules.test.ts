import fs from 'node:fs';
import path from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { describe, expect, it, onTestFinished } from 'vitest';
import { safeName } from '../../src/agent/names.js';
import { alive } from '../helpers/process.js';
import { cupsUnavailableReason, startCups } from '../helpers/cups.js';
import { cli, cliOk, recordingHandler, setup, spawnCli, startRelay, tempDir, waitFor } from '../helpers/cli.js';

type Msg = { status: string; result?: Record<string, unknown>; history: { status: string; detail?: Record<string, unknown> }[] };

describe('rule commands', () => {
  it('add, list, move, remove and test rules; exact command lines, nothing run', async () => {
    const s = await setup();
    const h = ['--home', s.home];
    expect(await cliOk(['rule', 'add', '*.xml', 'exec', ...h, '--timeout', '30', '--', '/usr/bin/import', '--in', '{file}', '{name}'])).toMatch(/^rule 1: \*\.xml -> exec --timeout 30 -- \/usr\/bin\/import --in \{file\} \{name\}$/);
    await cliOk(['rule', 'add', 'orders-*.dlm', 'print', ...h, '--printer', 'kitchen', '--copies', '2', '-o', 'media=A4', '--from', 'web']);
    const list = JSON.parse(await cliOk(['rule', 'list', '--json', ...h])) as { n: number; match: string; action: { type: string } }[];
    expect(list.map((r) => [r.n, r.match, r.action.type])).toEqual([
      [1, '*.xml', 'exec'],
      [2, 'orders-*.dlm', 'print'],
      [3, '*', 'save'],
    ]);
    const t = await cliOk(['rule', 'test', 'a b $(reboot).xml', ...h]);
    expect(t).toContain('rule 1:');
    expect(t).toContain(`would run: /usr/bin/import --in '${path.join(s.home, 'spool', '<id>', 'a b $(reboot).xml')}' 'a b $(reboot).xml'`);
    expect(await cliOk(['rule', 'test', 'orders-1.dlm', '--from', 'web', ...h])).toContain('would run: lp -d kitchen -n 2 -o media=A4 -t orders-1.dlm --');
    // From another sender the print rule does not apply; the catch-all save does.
    expect(await cliOk(['rule', 'test', 'orders-1.dlm', '--from', 'shop', ...h])).toContain('rule 3:');
    await cliOk(['rule', 'move', '3', '1', ...h]);
    expect(await cliOk(['rule', 'test', 'x.xml', ...h])).toContain('rule 1: * -> save');
    await cliOk(['rule', 'remove', '1', ...h]);
    const none = await cli(['rule', 'test', 'x.pdf', ...h]);
    expect(none.code).toBe(1);
    expect(none.stderr).toContain('DW_NO_RULE');
    const bad = await cli(['rule', 'add', '*.x', 'exec', ...h, '--timeout', '-5', '--', 'true']);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain('DW_BAD_CONFIG');
    expect(bad.stderr).toContain('timeoutS');
    expect((JSON.parse(await cliOk(['rule', 'list', '--json', ...h])) as unknown[]).length).toBe(2);
  });

  it('rule changes reach a running agent without a restart; no matching rule ends rejected', async () => {
    const dir = tempDir();
    const rec = recordingHandler(dir);
    const s = await setup({ rules: [] });
    const agent = spawnCli(['agent', '--home', s.home]);
    let r = await s.api.send(s.device, 'a.xml', '<a/>');
    let m = (await s.api.until(r.json.id as string, ['rejected'])) as unknown as Msg;
    expect(m.result).toMatchObject({ code: 'DW_NO_RULE' });
    const { action } = rec.rule as { action: { command: string; args: string[] } };
    await cliOk(['rule', 'add', '*.xml', 'exec', '--home', s.home, '--', action.command, ...action.args]);
    await agent.waitLog((l) => l.msg === 'config reloaded');
    r = await s.api.send(s.device, 'b.xml', '<b/>');
    m = (await s.api.until(r.json.id as string, ['handled'])) as unknown as Msg;
    expect(rec.runs().map((x) => x.name)).toEqual(['b.xml']);
    await cliOk(['rule', 'remove', '1', '--home', s.home]);
    await waitFor(() => (agent.logs.filter((l) => l.msg === 'config reloaded').length >= 2 ? true : undefined));
    r = await s.api.send(s.device, 'c.xml', '<c/>');
    await s.api.until(r.json.id as string, ['rejected']);
    expect(rec.runs().length).toBe(1);
    // A broken edit by hand is refused; the rules in force stay.
    fs.writeFileSync(path.join(s.home, 'config.json'), '{ "rules": [ { "match": 5 } ], "name": "shop" }');
    await agent.waitLog((l) => l.msg === 'config change refused; the previous rules stay in force');
    expect(fs.readFileSync(path.join(s.home, 'config.json'), 'utf8')).toContain('"match": 5');
    await agent.kill();
  });
});

describe('exec', () => {
  it('success, failure with exit code and output tail, timeout killing the process tree', async () => {
    const dir = tempDir();
    const script = path.join(dir, 'h.mjs');
    const pids = path.join(dir, 'pids');
    fs.writeFileSync(
      script,
      `import { spawn } from 'node:child_process'; import fs from 'node:fs';
const [mode, file] = process.argv.slice(2);
// process.exitCode, not process.exit(): exit() drops what node has not yet written to a full pipe.
if (mode === 'ok') { console.log('imported', fs.readFileSync(file, 'utf8').length, 'bytes'); process.exitCode = 0; }
else if (mode === 'fail') { for (let i = 0; i < 200; i++) console.log('line', i, 'x'.repeat(40)); console.error('bad order'); process.exitCode = 3; }
else {
  const child = spawn('sleep', ['60'], { stdio: 'ignore' });
  fs.writeFileSync(${JSON.stringify(pids)}, process.pid + ' ' + child.pid);
  setInterval(() => {}, 1000);
}\n`,
    );
    const s = await setup({ rules: [] });
    for (const mode of ['ok', 'fail', 'hang']) {
      await cliOk(['rule', 'add', `*.${mode}`, 'exec', '--home', s.home, '--timeout', '2', '--', process.execPath, script, mode, '{file}']);
    }
    const agent = spawnCli(['agent', '--home', s.home]);
    const ok = (await s.api.until((await s.api.send(s.device, 'x.ok', 'hello')).json.id as string, ['handled', 'failed'])) as unknown as Msg;
    expect(ok.status).toBe('handled');
    expect(ok.result).toMatchObject({ exitCode: 0 });
    expect(ok.result!.output).toContain('imported 5 bytes');
    const fail = (await s.api.until((await s.api.send(s.device, 'x.fail', 'x')).json.id as string, ['handled', 'failed'])) as unknown as Msg;
    expect(fail.status).toBe('failed');
    expect(fail.result).toMatchObject({ code: 'DW_EXEC_FAILED', exitCode: 3 });
    const out = fail.result!.output as string;
    expect(Buffer.byteLength(out)).toBeLessThanOrEqual(4096);
    expect(out).toContain('bad order');
    expect(out).toContain('line 199');
    expect(out).not.toContain('line 0 ');
    expect(fail.history.at(-1)).toMatchObject({ status: 'failed', detail: { code: 'DW_EXEC_FAILED', exitCode: 3 } });
    const hang = (await s.api.until((await s.api.send(s.device, 'x.hang', 'x')).json.id as string, ['handled', 'failed'])) as unknown as Msg;
    expect(hang.status).toBe('failed');
    expect(hang.result).toMatchObject({ code: 'DW_EXEC_TIMEOUT', timedOut: true });
    const [parent, child] = fs.readFileSync(pids, 'utf8').split(' ').map(Number);
    await waitFor(() => (!alive(parent!) && !alive(child!) ? true : undefined), 5_000, 'process tree gone');
    await agent.kill();
  });

  it('hostile names reach the command as one literal argument each', async () => {
    const dir = tempDir();
    const argvLog = path.join(dir, 'argv.jsonl');
    const script = path.join(dir, 'argv.mjs');
    fs.writeFileSync(script, `import fs from 'node:fs'; fs.appendFileSync(${JSON.stringify(argvLog)}, JSON.stringify(process.argv.slice(2)) + '\\n');\n`);
    const s = await setup({ rules: [] });
    await cliOk(['rule', 'add', '*', 'exec', '--home', s.home, '--', process.execPath, script, '{name}', '{from}', '--', '{id}']);
    const agent = spawnCli(['agent', '--home', s.home]);
    const names = ['$(reboot)', '; rm -rf ~', `it's "quoted"`, 'two\nlines', '-rf', '`id`', '*'];
    for (const n of names) {
      const r = await s.api.send(s.device, n, 'x');
      await s.api.until(r.json.id as string, ['handled']);
    }
    const seen = fs.readFileSync(argvLog, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as string[]);
    expect(seen.length).toBe(names.length);
    for (const [i, argv] of seen.entries()) {
      expect(argv.length).toBe(4);
      expect(argv[0]).toBe(safeName(names[i]!));
      expect(argv[1]).toBe('web');
      expect(argv[2]).toBe('--');
    }
    expect(seen.map((a) => a[0])).toContain('$(reboot)');
    expect(seen.map((a) => a[0])).toContain('; rm -rf ~');
    await agent.kill();
  });
});

describe('exactly once', () => {
  it('a message delivered twice (forced redelivery) runs its handler once', async () => {
    const dir = tempDir();
    const rec = recordingHandler(dir);
    const s = await setup({ rules: [rec.rule] });
    const agent = spawnCli(['agent', '--home', s.home]);
    const r = await s.api.send(s.device, 'once.xml', '<once/>');
    const id = r.json.id as string;
    await s.api.until(id, ['handled']);
    // The relay's CONFIRM must have reached the agent first; else the agent re-reports the outcome to the
    // new relay (which then has nothing to redeliver) instead of being sent the file again.
    await waitFor(() => {
      const journal = new DatabaseSync(path.join(s.home, 'journal.db'), { readOnly: true });
      try {
        const row = journal.prepare('SELECT confirmed FROM messages WHERE id = ?').get(id) as { confirmed: number } | undefined;
        return row?.confirmed === 1 ? true : undefined;
      } finally {
        journal.close();
      }
    }, 10_000, 'the outcome confirmed to the agent');
    // Force a redelivery: stop the relay and put the message back in the queue, as if the relay had never heard.
    await s.relay.proc.kill('SIGTERM');
    const db = new DatabaseSync(path.join(s.data, 'relay.db'));
    db.prepare(`UPDATE messages SET status = 'queued' WHERE id = ?`).run(id);
    db.close();
    const again = await startRelay(s.data, [], s.relay.info.agents);
    s.api.base = `http://${again.info.http}`;
    await again.proc.waitLog((l) => l.msg === 'message received' && l.id === id, 30_000);
    await agent.waitLog((l) => l.msg === 'redelivered message acknowledged without running' && l.id === id);
    await s.api.until(id, ['handled']);
    expect(rec.runs().map((x) => x.id)).toEqual([id]);
    await agent.kill();
  });
});

const cupsSkip = cupsUnavailableReason();
if (cupsSkip) console.warn(`skipping the CUPS print test: ${cupsSkip}`);

describe.skipIf(cupsSkip !== undefined)('print with a real CUPS server', () => {
  it('prints a sent file; the job id reported to the sender is in lpstat -W completed', async () => {
    const cups = await startCups();
    onTestFinished(() => cups.stop());
    await cups.addQueue('dwtest');
    const s = await setup({ rules: [] });
    await cliOk(['rule', 'add', '*.pdf', 'print', '--home', s.home, '--printer', 'dwtest', '--copies', '1']);
    const agent = spawnCli(['agent', '--home', s.home], { env: cups.env });
    const printers = JSON.parse(await cliOk(['printers', '--json'], { env: cups.env })) as { name: string }[];
    expect(printers.map((p) => p.name)).toContain('dwtest');
    const r = await s.api.send(s.device, 'ticket.pdf', '%PDF-1.4\n% a kitchen ticket\n');
    const m = (await s.api.until(r.json.id as string, ['handled', 'failed'])) as unknown as Msg;
    expect(m.status).toBe('handled');
    const jobId = m.result!.jobId as string;
    expect(jobId).toMatch(/^dwtest-\d+$/);
    const done = await waitFor(async () => {
      const out = await cups.run('lpstat', ['-W', 'completed', '-o', 'dwtest']);
      return out.includes(jobId) ? out : undefined;
    }, 30_000, 'job completed');
    expect(done).toContain(jobId);
    await agent.kill();
  });
});

describe('handler concurrency', () => {
  it('one at a time in arrival order by default; --parallel N runs up to N at once; spool emptied after', async () => {
    const dir = tempDir();
    const log = path.join(dir, 'spans.jsonl');
    const script = path.join(dir, 'slow.mjs');
    fs.writeFileSync(script, `import fs from 'node:fs'; const start = Date.now(); await new Promise((r) => setTimeout(r, 600));
fs.appendFileSync(${JSON.stringify(log)}, JSON.stringify({ name: process.argv[2], start, end: Date.now() }) + '\\n');\n`);
    const s = await setup({ rules: [] });
    await cliOk(['rule', 'add', 'one-*', 'exec', '--home', s.home, '--', process.execPath, script, '{name}']);
    await cliOk(['rule', 'add', 'two-*', 'exec', '--home', s.home, '--parallel', '2', '--', process.execPath, script, '{name}']);
    const agent = spawnCli(['agent', '--home', s.home]);
    const ids: string[] = [];
    for (const prefix of ['one', 'two']) for (let i = 0; i < 4; i++) ids.push((await s.api.send(s.device, `${prefix}-${i}`, 'x')).json.id as string);
    for (const id of ids) await s.api.until(id, ['handled']);
    const spans = fs.readFileSync(log, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { name: string; start: number; end: number });
    /** Most handlers of this rule running at one moment (a sweep over start and end times). */
    const most = (prefix: string) => {
      const edges = spans.filter((x) => x.name.startsWith(prefix)).flatMap((x) => [[x.start, 1] as const, [x.end, -1] as const]);
      edges.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
      let now = 0;
      let peak = 0;
      for (const [, d] of edges) peak = Math.max(peak, (now += d));
      return peak;
    };
    expect(most('one-')).toBe(1);
    expect(spans.filter((x) => x.name.startsWith('one-')).map((x) => x.name)).toEqual(['one-0', 'one-1', 'one-2', 'one-3']);
    expect(most('two-')).toBe(2);
    // Retention 'remove' (the default): nothing left in the spool once handled.
    expect(fs.readdirSync(path.join(s.home, 'spool'))).toEqual([]);
    await agent.kill();
  });
});
