import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { Spool } from '../../src/agent/spool.js';
import { tempDir } from '../helpers/cli.js';

const sha = (b: string) => createHash('sha256').update(b).digest('hex');

describe('spool layout', () => {
  it('a complete file is <id>/<safe name>; remove takes the folder, part and all', () => {
    const spool = new Spool(path.join(tempDir(), 'spool'));
    const t = spool.begin({ id: 'm1', filename: '../x/order 7.xml', size: 5, sha256: sha('hello'), offset: 0 });
    t.write(new TextEncoder().encode('hello'));
    expect(t.finish()).toBe(true);
    const file = spool.locate('m1', 'x_order 7.xml');
    expect(file).toBe(path.join(spool.dir, 'm1', 'x_order 7.xml'));
    expect(spool.filePath('m1', '../x/order 7.xml')).toBe(file);
    expect(fs.readFileSync(file, 'utf8')).toBe('hello');
    expect(fs.readdirSync(spool.dir)).toEqual(['m1']);
    expect(spool.partials()).toEqual([]);
    spool.remove('m1');
    expect(fs.readdirSync(spool.dir)).toEqual([]);
  });

  it('a file spooled as a plain <id> by an earlier version is moved into place, also after a stop half way', () => {
    const spool = new Spool(path.join(tempDir(), 'spool'));
    fs.writeFileSync(path.join(spool.dir, 'old1'), 'one');
    expect(spool.locate('old1', 'a.pdf')).toBe(path.join(spool.dir, 'old1', 'a.pdf'));
    expect(fs.readFileSync(path.join(spool.dir, 'old1', 'a.pdf'), 'utf8')).toBe('one');
    // Stopped between the two renames: only `<id>.legacy` is there.
    fs.writeFileSync(path.join(spool.dir, 'old2.legacy'), 'two');
    expect(fs.readFileSync(spool.locate('old2', 'b.pdf'), 'utf8')).toBe('two');
    expect(fs.readdirSync(spool.dir).sort()).toEqual(['old1', 'old2']);
  });
});
