import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { encodeClientHello, encodeServerHello, HelloKind, HelloResult } from '../../src/protocol/hello.js';
import { decodeEnrollmentToken, encodeEnrollmentToken } from '../../src/shared/enrollment.js';
import { cli, cliOk, ROOT, setup, tempDir } from '../helpers/cli.js';

/** Clause 3.11 of docs/PROTOCOL.md: the test reads the vectors from the document itself. */
const doc = fs.readFileSync(path.join(ROOT, 'docs', 'PROTOCOL.md'), 'utf8');
const clause = doc.slice(doc.indexOf('**3.11 Enrollment token.**'), doc.indexOf('## 4 Records'));
const vectors = [...clause.matchAll(/^json {3}(\{.*\})\ntoken {2}(dw1\.[A-Za-z0-9_-]+)$/gm)].map((m) => ({ json: m[1]!, token: m[2]! }));
const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');

describe('the enrollment token as PROTOCOL 3.11 specifies it (issue 11.20)', () => {
  it('the documented vectors decode to their fields and encode back byte for byte', () => {
    expect(vectors).toHaveLength(2);
    for (const v of vectors) {
      expect(Buffer.from(v.token.slice(4), 'base64url').toString('utf8')).toBe(v.json);
      const j = JSON.parse(v.json) as { r: string | string[]; k: string; n: string; s: string; e: number };
      const t = decodeEnrollmentToken(v.token);
      expect(t).toEqual({ relays: typeof j.r === 'string' ? [j.r] : j.r, relayKey: j.k, name: j.n, secret: j.s, expiresAt: j.e });
      expect(encodeEnrollmentToken(t)).toBe(v.token);
    }
    expect(typeof (JSON.parse(vectors[0]!.json) as { r: unknown }).r).toBe('string');
    expect(Array.isArray((JSON.parse(vectors[1]!.json) as { r: unknown }).r)).toBe(true);
  });

  it('the documented ENROLL client hello and REFUSED server hello are what the code sends', () => {
    const t = decodeEnrollmentToken(vectors[0]!.token);
    const helloBlock = /timestamp 1700000000000 \(66 bytes\):\n\n```\n([\s\S]*?)```/.exec(clause)![1]!;
    const hello = encodeClientHello({ kind: HelloKind.ENROLL, timestamp: 1700000000000, sessionId: new Uint8Array(16), received: 0, enroll: { name: t.name, secret: t.secret } });
    expect(Buffer.from(hello)).toEqual(hex(helloBlock));
    const refused = encodeServerHello({ result: HelloResult.REFUSED, sessionId: new Uint8Array(16), received: 0, code: 'DW_ENROLL_USED' });
    expect(refused.length).toBe(41);
    expect(Buffer.from(refused)).toEqual(Buffer.concat([hex('01 03'), Buffer.alloc(24), hex('0e 44 57 5f 45 4e 52 4f 4c 4c 5f 55 53 45 44')]));
  });

  it('decoders accept padding, whitespace and unknown fields, and refuse what the clause refuses', () => {
    const { token, json } = vectors[0]!;
    const padded = 'dw1.' + Buffer.from(json).toString('base64');
    expect(decodeEnrollmentToken(`  ${padded}\n`).name).toBe('shop-1');
    const withExtra = 'dw1.' + Buffer.from(JSON.stringify({ x: 1, ...JSON.parse(json), later: [1, 2] })).toString('base64url');
    expect(decodeEnrollmentToken(withExtra)).toEqual(decodeEnrollmentToken(token));
    const o = JSON.parse(json) as Record<string, unknown>;
    const enc = (v: Record<string, unknown>) => 'dw1.' + Buffer.from(JSON.stringify(v)).toString('base64url');
    for (const bad of [token.slice(4), 'dw2.' + token.slice(4), enc({ ...o, r: [] }), enc({ ...o, r: '' }), enc({ ...o, r: ['a:1', ''] }), enc({ ...o, k: o.k!.toString().toUpperCase() }), enc({ ...o, e: '1' }), enc({ ...o, n: undefined })]) {
      expect(() => decodeEnrollmentToken(bad)).toThrow(expect.objectContaining({ code: 'DW_BAD_TOKEN' }));
    }
  });

  it('a token written from the clause alone (r as an array) enrolls a host with a real relay', async () => {
    const s = await setup();
    const real = decodeEnrollmentToken(await cliOk(['relay', 'device', 'add', 'kiosk', '--data', s.data]));
    const info = JSON.parse(fs.readFileSync(path.join(s.data, 'relay.json'), 'utf8')) as { agents: string; publicKey: string };
    // Written by hand, the way the clause says: JSON object, base64url without padding, "dw1." in front.
    const json = JSON.stringify({ r: [info.agents, '127.0.0.1:1'], k: info.publicKey, n: 'kiosk', s: real.secret, e: real.expiresAt });
    const token = 'dw1.' + Buffer.from(json, 'utf8').toString('base64').replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
    const home = path.join(tempDir(), 'kiosk');
    const r = await cli(['init', token, '--home', home]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(`enrolled as 'kiosk' with the relay at ${info.agents}`);
    const cfg = JSON.parse(fs.readFileSync(path.join(home, 'config.json'), 'utf8')) as { relays: string[]; relayKey: string };
    expect(cfg.relays).toContain(info.agents);
    expect(cfg.relays).toContain('127.0.0.1:1');
    expect(cfg.relayKey).toBe(info.publicKey);
    const list = JSON.parse(await cliOk(['relay', 'device', 'list', '--json', '--data', s.data])) as { name: string; enrolled: boolean }[];
    expect(list.find((d) => d.name === 'kiosk')?.enrolled).toBe(true);
  });
});
