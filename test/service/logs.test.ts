import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it, onTestFinished } from 'vitest';
import { matches, parseJournal, readable, tailFile, tailJournal } from '../../src/service/logs.js';
import { chooseLogTarget, createLogger, logFiles, RotatingFile, underSystemd } from '../../src/shared/log.js';
import { tempDir, waitFor } from '../helpers/cli.js';

const line = (n: number, extra: Record<string, unknown> = {}) => JSON.stringify({ level: 30, time: '2025-01-02T03:04:05.000Z', name: 'agent', msg: `line ${n}`, n, ...extra }) + '\n';

describe('size-rotated log file', () => {
  it('rotates at maxBytes, keeps K files, loses no line and keeps their order', () => {
    const dir = tempDir();
    const file = path.join(dir, 'agent.log');
    const f = new RotatingFile(file, { maxBytes: 1024, keep: 2 });
    for (let n = 0; n < 60; n++) f.write(line(n));
    f.close();
    expect(logFiles(file)).toEqual([`${file}.2`, `${file}.1`, file]);
    expect(fs.existsSync(`${file}.3`)).toBe(false);
    const lines = logFiles(file).flatMap((p) => fs.readFileSync(p, 'utf8').trim().split('\n'));
    for (const p of logFiles(file)) expect(fs.statSync(p).size).toBeLessThanOrEqual(1024);
    const ns = lines.map((l) => (JSON.parse(l) as { n: number }).n);
    expect(ns).toEqual(Array.from({ length: ns.length }, (_, i) => 60 - ns.length + i));
    expect(ns.at(-1)).toBe(59);
    expect((fs.statSync(file).mode & 0o777).toString(8)).toBe('600');
  });

  it('a pino logger writes JSON lines to the file and a copy to stdout when asked', () => {
    const dir = tempDir();
    const log = createLogger('agent', { file: path.join(dir, 'a.log'), maxBytes: 4096, keep: 1 });
    log.info({ id: 'm1' }, 'message received');
    const l = JSON.parse(fs.readFileSync(path.join(dir, 'a.log'), 'utf8')) as Record<string, unknown>;
    expect(l).toMatchObject({ level: 30, name: 'agent', id: 'm1', msg: 'message received' });
  });

  it('stdout under systemd (JOURNAL_STREAM names stdout, or INVOCATION_ID), the file elsewhere', () => {
    const st = fs.fstatSync(1, { bigint: true });
    expect(underSystemd({ JOURNAL_STREAM: `${st.dev}:${st.ino}` })).toBe(true);
    expect(underSystemd({ JOURNAL_STREAM: '1:2' })).toBe(false); // inherited, but stdout was redirected
    expect(underSystemd({})).toBe(false);
    expect(chooseLogTarget('/h/agent.log', {})).toEqual({ to: 'file', file: '/h/agent.log', stdout: true });
    expect(chooseLogTarget('/h/agent.log', { DROPWIRE_LOG: 'file', DROPWIRE_LOG_FILE: '/var/log/dropwire/agent.log' })).toEqual({ to: 'file', file: '/var/log/dropwire/agent.log', stdout: false });
    expect(chooseLogTarget('/h/agent.log', { JOURNAL_STREAM: `${st.dev}:${st.ino}` }).to).toBe('journal');
  });
});

describe('reading logs', () => {
  it('filters by level and id, and shows lines readable', () => {
    const l = { raw: '', obj: JSON.parse(line(1, { level: 40, id: 'abc', status: 'failed', reason: 'no rule matches' })) as Record<string, unknown> };
    expect(matches(l, { level: 'warn' })).toBe(true);
    expect(matches(l, { level: 'error' })).toBe(false);
    expect(matches(l, { id: 'abc' })).toBe(true);
    expect(matches(l, { id: 'abd' })).toBe(false);
    expect(matches({ raw: 'not json' }, {})).toBe(true);
    expect(matches({ raw: 'not json' }, { level: 'info' })).toBe(false);
    expect(readable(l)).toBe('2025-01-02T03:04:05.000Z WARN  line 1  n=1 id=abc status=failed reason="no rule matches"');
    expect(readable({ raw: '', obj: { level: 30, time: 't', name: 'a b.xml', msg: 'handler started' } })).toBe('t INFO  handler started  name="a b.xml"');
  });

  it('tail -n N across rotated files, then follows new lines through a rotation', async () => {
    const dir = tempDir();
    const file = path.join(dir, 'agent.log');
    const f = new RotatingFile(file, { maxBytes: 2048, keep: 5 });
    for (let n = 0; n < 30; n++) f.write(line(n));
    const out: string[] = [];
    const stop = new AbortController();
    const done = tailFile(file, { follow: true, lines: 5, json: true, out: (l) => out.push(l), signal: stop.signal });
    onTestFinished(() => stop.abort());
    await waitFor(() => out.length >= 5 || undefined, 5000, 'backlog');
    expect(out.map((l) => (JSON.parse(l) as { n: number }).n)).toEqual([25, 26, 27, 28, 29]);
    for (let n = 30; n < 90; n++) f.write(line(n)); // several rotations while following
    await waitFor(() => out.length >= 65 || undefined, 5000, 'followed lines');
    stop.abort();
    await done;
    expect(out.map((l) => (JSON.parse(l) as { n: number }).n)).toEqual(Array.from({ length: 65 }, (_, i) => 25 + i));
  });

  it('the journal: backlog with -o json, then -f after the last cursor', async () => {
    const dir = tempDir();
    const calls = path.join(dir, 'calls.log');
    const fake = path.join(dir, 'journalctl.mjs');
    // A stand-in journalctl: records its arguments; prints two entries, or with -f a third one and waits.
    fs.writeFileSync(
      fake,
      `#!${process.execPath}
import fs from 'node:fs';
const args = process.argv.slice(2);
fs.appendFileSync(${JSON.stringify(calls)}, JSON.stringify(args) + '\\n');
const e = (c, m) => console.log(JSON.stringify({ __CURSOR: c, MESSAGE: m }));
if (!args.includes('-f')) {
  e('c1', ${JSON.stringify(line(1).trim())});
  e('c2', [...Buffer.from(${JSON.stringify(line(2, { id: 'x' }).trim())})]);
} else {
  e('c3', ${JSON.stringify(line(3, { id: 'x' }).trim())});
  setInterval(() => {}, 1000);
}
`,
      { mode: 0o755 },
    );
    const out: string[] = [];
    const stop = new AbortController();
    const done = tailJournal({ kind: 'journal', unit: 'dropwire-agent.service', user: false }, { follow: true, lines: 10, json: false, id: 'x', out: (l) => out.push(l), signal: stop.signal }, fake);
    await waitFor(() => out.length >= 2 || undefined, 5000, 'journal lines');
    stop.abort();
    await done;
    expect(out).toEqual([readable({ raw: '', obj: JSON.parse(line(2, { id: 'x' })) }), readable({ raw: '', obj: JSON.parse(line(3, { id: 'x' })) })]);
    const argv = fs.readFileSync(calls, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as string[]);
    expect(argv).toEqual([
      ['-u', 'dropwire-agent.service', '-o', 'json', '--no-pager'],
      ['-u', 'dropwire-agent.service', '-o', 'json', '--no-pager', '-f', '--after-cursor=c2'],
    ]);
    expect(parseJournal('{"MESSAGE":"m","__CURSOR":"c"}')).toEqual({ cursor: 'c', message: 'm' });
  });
});
