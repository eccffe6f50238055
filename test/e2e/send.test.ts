import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { cli, cliOk, peakRssMiB, randomData, recordingHandler, sha256, startRelay, tempDir, waitFor } from '../helpers/cli.js';
import { hosts } from '../helpers/hosts.js';

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

    // Many files in one command (more than one control-socket request holds): one id per file, in order.
    const many = Array.from({ length: 80 }, (_, i) => path.join(scratch, `a-rather-long-file-name-for-the-batching-of-requests-${String(i).padStart(2, '0')}.txt`));
    for (const [i, f] of many.entries()) fs.writeFileSync(f, `note ${i}\n`);
    const all = await cli(['send', ...many, '--to', 'office', '--json', '--home', h.homes.till!]);
    expect(all.code).toBe(0);
    const outs = all.stdout.trim().split('\n').map((l) => JSON.parse(l) as { file: string; id: string });
    expect(outs.map((o) => o.file)).toEqual(many);
    expect(new Set(outs.map((o) => o.id)).size).toBe(80);
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

describe('hosts send sealed and large files (issue 16)', () => {
  it('sealed end to end: the relay keeps ciphertext only, the handler gets the exact bytes, a flipped bit is rejected DW_BAD_SEAL', async () => {
    const scratch = tempDir('dw-send-files-');
    const rec = recordingHandler(scratch);
    const h = await hosts(['till', 'office'], { allow: { till: 'office' }, rules: { office: [rec.rule] } });
    await h.start('till');
    await h.start('office');
    // Recognisable plaintext: a marker line repeated, and random bytes (large: stored as a blob file).
    const marker = 'CONFIDENTIAL-PAYROLL-7731-';
    const plain = Buffer.concat([Buffer.from(marker.repeat(4000)), Buffer.from(randomData(200_000))]);
    const file = path.join(scratch, 'payroll.csv');
    fs.writeFileSync(file, plain);
    const small = path.join(scratch, 'note.txt');
    fs.writeFileSync(small, `${marker} small and inline\n`);
    const r = await cli(['send', file, small, '--to', 'office', '--seal', '--wait=60', '--home', h.homes.till!]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const lines = r.stdout.trim().split('\n').map((l) => l.split('\t'));
    expect(lines.map((l) => l[1])).toEqual(['handled', 'handled']);
    const runs = rec.runs();
    expect(runs.map((x) => [x.name, x.sha])).toEqual([
      ['payroll.csv', sha256(plain)],
      ['note.txt', sha256(`${marker} small and inline\n`)],
    ]);
    // A sealed outbox: a running agent takes the new folder at once and seals each file.
    const box = path.join(h.dir, 'sealed-box');
    await cliOk(['outbox', 'add', box, '--to', 'office', '--seal', '--home', h.homes.till!]);
    fs.writeFileSync(path.join(box, 'salaries.csv'), `${marker} from the outbox\n`);
    const resultFile = path.join(box, 'sent', 'salaries.csv.result.json');
    await waitFor(() => fs.existsSync(resultFile) || undefined, 30_000, 'the sealed outbox file handled');
    expect(JSON.parse(fs.readFileSync(resultFile, 'utf8'))).toMatchObject({ status: 'handled', to: 'office' });
    expect(rec.runs()[2]).toMatchObject({ name: 'salaries.csv', sha: sha256(`${marker} from the outbox\n`) });
    // Nowhere in the relay's folder (store, WAL, blobs, partial uploads) is there any of the plaintext.
    const needles = [Buffer.from(marker), plain.subarray(plain.length - 64)];
    const files: string[] = [];
    const walk = (d: string) => {
      for (const e of fs.readdirSync(d, { withFileTypes: true })) {
        const p = path.join(d, e.name);
        if (e.isDirectory()) walk(p);
        else if (e.isFile()) files.push(p);
      }
    };
    walk(h.data);
    expect(files.some((f) => f.endsWith('relay.db'))).toBe(true);
    expect(files.filter((f) => f.includes(`${path.sep}blobs${path.sep}`)).length).toBeGreaterThan(0);
    for (const f of files) {
      const bytes = fs.readFileSync(f);
      for (const n of needles) expect(bytes.includes(n), `${f} holds plaintext`).toBe(false);
    }
    // The message is marked sealed and sized as its envelope; the HTTP API gives the key to seal to.
    const { sealedSize, Sealer } = await import('../../src/protocol/seal.js');
    const token = await cliOk(['relay', 'token', 'add', 'shop', '--data', h.data]);
    const api = `http://${h.relay.info.http}`;
    const dev = (await (await fetch(`${api}/v1/devices/office`, { headers: { authorization: `Bearer ${token}` } })).json()) as { publicKey: string };
    expect(dev.publicKey).toMatch(/^[0-9a-f]{64}$/);

    // An HTTP sender seals with the documented envelope (sender = its token name), and a tampered copy.
    const seal = (bytes: Uint8Array) => {
      const s = new Sealer({ recipientPublic: new Uint8Array(Buffer.from(dev.publicKey, 'hex')), ephemeralPrivate: new Uint8Array(randomData(32)), sender: 'shop', filename: 'order.csv' });
      return Buffer.concat([...s.push(bytes), ...s.finish()]);
    };
    const order = Buffer.from('order;42\n');
    const good = seal(order);
    expect(good.length).toBe(sealedSize(order.length));
    const post = async (body: Buffer) => {
      const res = await fetch(`${api}/v1/messages?to=office&filename=order.csv&sealed=1`, { method: 'POST', headers: { authorization: `Bearer ${token}` }, body });
      return { status: res.status, json: (await res.json()) as { id: string } };
    };
    const ok = await post(good);
    expect(ok.status).toBe(202);
    const flipped = Buffer.from(good);
    flipped[40]! ^= 0x04;
    const bad = await post(flipped);
    expect(bad.status).toBe(202);
    const until = (id: string) =>
      waitFor(async () => {
        const m = (await (await fetch(`${api}/v1/messages/${id}?wait=5`, { headers: { authorization: `Bearer ${token}` } })).json()) as { status: string; result?: { code?: string } };
        return ['handled', 'failed', 'rejected'].includes(m.status) ? m : undefined;
      }, 30_000, `message ${id} final`);
    expect(await until(ok.json.id)).toMatchObject({ status: 'handled' });
    expect(await until(bad.json.id)).toMatchObject({ status: 'rejected', result: { code: 'DW_BAD_SEAL' } });
    expect(rec.runs().map((x) => x.sha)).toEqual([sha256(plain), sha256(`${marker} small and inline\n`), sha256(`${marker} from the outbox\n`), sha256(order)]);
    // A body that no envelope can be is refused at once.
    const res = await fetch(`${api}/v1/messages?to=office&filename=x.csv&sealed=1`, { method: 'POST', headers: { authorization: `Bearer ${token}` }, body: 'not sealed' });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe('DW_BAD_SEAL');
  });

  it('a large send shows a progress bar on a terminal and resumes from the relay\'s bytes after the relay is killed', async () => {
    const scratch = tempDir('dw-send-files-');
    const rec = recordingHandler(scratch);
    const h = await hosts(['till', 'office'], { allow: { till: 'office' }, rules: { office: [rec.rule] } });
    await h.start('till');
    await h.start('office');
    // 200 MiB, as the issue asks (DW_LARGE_SEND_MIB scales it down on a slow machine).
    const MIB = Number(process.env.DW_LARGE_SEND_MIB ?? 200);
    const SIZE = MIB * 1024 * 1024;
    const file = path.join(scratch, 'backup.tar');
    const fd = fs.openSync(file, 'w');
    const { createHash } = await import('node:crypto');
    const hash = createHash('sha256');
    for (let i = 0; i < SIZE / (4 * 1024 * 1024); i++) {
      const block = randomData(4 * 1024 * 1024);
      hash.update(block);
      fs.writeSync(fd, block);
    }
    fs.closeSync(fd);
    const want = hash.digest('hex');
    // Through a pseudo-terminal (util-linux `script`), as a person at a terminal would see it.
    const { spawn } = await import('node:child_process');
    const { BIN } = await import('../helpers/cli.js');
    const cmd = [process.execPath, BIN, 'send', file, '--to', 'office', '--wait=240', '--home', h.homes.till!].map((a) => `'${a}'`).join(' ');
    const child = spawn('script', ['-qfec', cmd, '/dev/null'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
    // Once the relay holds part of the file, kill it and start it again on the same agent port.
    const uploads = path.join(h.data, 'uploads', 'till');
    const partial = () => (fs.existsSync(uploads) ? fs.readdirSync(uploads).reduce((n, f) => n + fs.statSync(path.join(uploads, f)).size, 0) : 0);
    const started = Date.now();
    const before = await waitFor(() => (partial() >= 8 * 1024 * 1024 ? partial() : undefined), 20_000, 'part of the upload at the relay').catch((e: unknown) => {
      console.log('DEBUG', out.slice(-300), partial(), JSON.stringify(h.relay.proc.logs.slice(-4)), JSON.stringify(h.agents.till!.logs.slice(-4)));
      throw e;
    });
    expect(before).toBeLessThan(SIZE);
    await h.relay.proc.kill('SIGKILL');
    const again = await startRelay(h.data, [], h.relay.info.agents);
    const resumed = await again.proc.waitLog((l) => l.msg === 'upload resumed from the bytes the relay has', 60_000).catch((e: unknown) => {
      console.log('DEBUG2', out.slice(-300), JSON.stringify(again.proc.logs.slice(-6)), JSON.stringify(h.agents.till!.logs.slice(-6)));
      throw e;
    });
    expect(resumed.have as number).toBeGreaterThan(0);
    expect(await exited).toBe(0);
    const agentRss = peakRssMiB(h.agents.till!.pid)!;
    const relayRss = peakRssMiB(again.proc.pid)!;
    console.log(`large send: peak RSS sending agent ${agentRss.toFixed(0)} MiB, relay (after the restart) ${relayRss.toFixed(0)} MiB`);
    expect(agentRss).toBeLessThan(200); // streamed in chunks within the window, never held whole
    console.log(`large send: ${MIB} MiB, relay killed at ${(before / 1048576).toFixed(1)} MiB, resumed from ${((resumed.have as number) / 1048576).toFixed(1)} MiB, handled ${((Date.now() - started) / 1000).toFixed(1)} s after the start`);
    const total = `${MIB.toFixed(1)} MiB`;
    expect(out).toMatch(new RegExp(`backup\\.tar \\[#+-*\\]\\s+\\d+%\\s+[\\d.]+ MiB/${total.replace('.', '\\.')}\\s+[\\d.]+ MiB/s\\s+[\\d:-]+ left`));
    expect(out).toContain(`100%  ${total}/${total}`);
    expect(out).toMatch(/\thandled\tbackup\.tar/);
    expect(rec.runs().map((x) => x.sha)).toEqual([want]);
    // The relay's log says how much it already had: the agent did not send the file again from 0.
    expect(again.proc.logs.some((l) => l.msg === 'message queued by a device' && l.size === SIZE)).toBe(true);
  }, 180_000);
});
