import path from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { checkName, MAX_SAFE_NAME_BYTES, safeName } from '../../src/agent/names.js';

const bytes = (s: string): number => Buffer.byteLength(s, 'utf8');
const FORBIDDEN = /[/\\<>:"|?*\u0000-\u001f\u007f-\u009f]/u;

// Strings rich in the characters that matter here, plus arbitrary Unicode (lone surrogates included).
const nasty = fc.string({
  unit: fc.oneof(
    fc.constantFrom('.', '..', '/', '\\', ' ', '-', ':', '*', '?', '"', '<', '>', '|', '\n', '\r', '\u0000', '\u007f', '\u0085',
      '\u202e', 'CON', 'nul', 'Lpt1', 'COM\u00b9', 'a', '.txt', '\u00e9', 'e\u0301', '\u{1f600}'),
    fc.string({ unit: 'grapheme', maxLength: 3 }),
    fc.string({ unit: 'binary', maxLength: 2 }),
  ),
  maxLength: 80,
});
const anyName = fc.oneof(nasty, fc.string({ unit: 'binary', maxLength: 400 }), fc.string({ unit: 'grapheme-composite', maxLength: 300 }));

describe('safeName', () => {
  it.each([
    ['report.pdf', 'report.pdf'],
    ['../../etc/passwd', 'etc_passwd'],
    ['..\\..\\windows\\system32', 'windows_system32'],
    ['/abs/path.txt', 'abs_path.txt'],
    ['.bashrc', 'bashrc'],
    ['..', 'unnamed'],
    ['.', 'unnamed'],
    ['', 'unnamed'],
    ['   ', 'unnamed'],
    ['a\nb\tc\u0000d\u007fe\u0085f', 'a_b_c_d_e_f'],
    ['what?<>:"|*.txt', 'what_______.txt'],
    ['trailing. . .', 'trailing'],
    ['CON', '_CON'],
    ['con.txt', '_con.txt'],
    ['Lpt9.tar.gz', '_Lpt9.tar.gz'],
    ['nul .txt', '_nul .txt'],
    ['COM\u00b2', '_COM\u00b2'],
    ['CONSOLE.txt', 'CONSOLE.txt'],
    ['COM0', 'COM0'],
    ['-rf', '_-rf'],
    ['.-rf', '_-rf'],
    ['--help', '_--help'],
    ['invoice\u202efdp.exe', 'invoice_fdp.exe'],
    ['e\u0301t\u00e9.xml', '\u00e9t\u00e9.xml'],
    ['a..b.txt', 'a..b.txt'],
  ])('%j -> %j', (input, expected) => {
    expect(safeName(input)).toBe(expected);
  });

  it('caps the length at 200 bytes keeping the extension', () => {
    const long = `${'x'.repeat(500)}.pdf`;
    const out = safeName(long);
    expect(bytes(out)).toBe(MAX_SAFE_NAME_BYTES);
    expect(out.endsWith('.pdf')).toBe(true);
    // multi-byte characters are never split
    const wide = safeName(`${'\u00e9'.repeat(300)}.xml`);
    expect(bytes(wide)).toBeLessThanOrEqual(MAX_SAFE_NAME_BYTES);
    expect(wide).toMatch(/^\u00e9+\.xml$/u);
    expect(safeName('\u{1f600}'.repeat(100))).toBe('\u{1f600}'.repeat(50));
    // an absurd "extension" is not kept apart
    expect(bytes(safeName(`a.${'y'.repeat(400)}`))).toBeLessThanOrEqual(MAX_SAFE_NAME_BYTES);
  });

  it('properties: one harmless component, directly inside its folder, idempotent', () => {
    const dirs = ['/srv/in', 'C:\\in', 'relative/dir'];
    fc.assert(
      fc.property(anyName, (x) => {
        const out = safeName(x);
        expect(out).not.toMatch(FORBIDDEN);
        expect(out).not.toBe('.');
        expect(out).not.toBe('..');
        expect(out.length).toBeGreaterThan(0);
        expect(out.startsWith('-')).toBe(false);
        expect(out.startsWith('.')).toBe(false);
        expect(out).not.toMatch(/[. ]$/u);
        expect(bytes(out)).toBeLessThanOrEqual(MAX_SAFE_NAME_BYTES);
        expect(out.isWellFormed()).toBe(true);
        for (const dir of dirs) {
          for (const p of [path.posix, path.win32]) {
            const joined = p.join(dir, out);
            expect(p.dirname(joined)).toBe(p.normalize(dir));
            expect(p.basename(joined)).toBe(out);
          }
        }
        expect(safeName(out)).toBe(out);
        expect(safeName(x)).toBe(out); // deterministic
      }),
      { numRuns: 3000 },
    );
  });

  it('property: no Windows device name survives, whatever the case or extension', () => {
    const device = fc.constantFrom('CON', 'PRN', 'AUX', 'NUL', 'COM1', 'COM9', 'LPT1', 'LPT9', 'CONIN$', 'CONOUT$');
    const caseMix = (s: string, mask: number): string => [...s].map((c, i) => ((mask >> i) & 1 ? c.toLowerCase() : c)).join('');
    fc.assert(
      fc.property(device, fc.nat(255), fc.constantFrom('', '.txt', '.tar.gz', ' .pdf', '.'), (d, mask, ext) => {
        const out = safeName(caseMix(d, mask) + ext);
        const stem = out.split('.')[0]!.trimEnd().toUpperCase();
        expect(['CON', 'PRN', 'AUX', 'NUL', 'COM1', 'COM9', 'LPT1', 'LPT9', 'CONIN$', 'CONOUT$']).not.toContain(stem);
      }),
    );
  });
});

describe('checkName', () => {
  it('accepts ordinary and neutralisable names', () => {
    expect(checkName('report.pdf')).toBeUndefined();
    expect(checkName('../../etc/passwd')).toBeUndefined();
    expect(checkName('x'.repeat(1024))).toBeUndefined();
  });

  it('refuses empty, non-string and over-long names with DW_BAD_NAME', () => {
    expect(checkName('')).toMatchObject({ code: 'DW_BAD_NAME' });
    expect(checkName('  ')).toMatchObject({ code: 'DW_BAD_NAME' });
    expect(checkName(42)).toMatchObject({ code: 'DW_BAD_NAME' });
    expect(checkName('x'.repeat(1025))).toMatchObject({ code: 'DW_BAD_NAME' });
    expect(checkName('\u00e9'.repeat(513))).toMatchObject({ code: 'DW_BAD_NAME' }); // 1026 bytes
  });
});
