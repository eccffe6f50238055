import { describe, expect, it } from 'vitest';
import {
  describeRule,
  globMatches,
  matchRule,
  planCommand,
  validateRules,
  type FileFacts,
  type Rule,
} from '../../src/agent/rules.js';

const facts: FileFacts = { name: 'order 17.xml', from: 'shop-east', id: 'm-42', file: '/var/spool/dropwire/m-42' };

describe('globMatches', () => {
  it.each([
    ['*.xml', 'order.xml', true],
    ['*.xml', 'order.XML', false], // case-sensitive on purpose
    ['*.xml', 'order.xml.bak', false],
    ['*', 'anything at all', true],
    ['*', '', true],
    ['order-?.dlm', 'order-7.dlm', true],
    ['order-?.dlm', 'order-77.dlm', false],
    ['?', '\u{1f600}', true], // one code point, not one UTF-16 unit
    ['[a-c]*', 'banana', true],
    ['[a-c]*', 'date', false],
    ['[!a-c]*', 'date', true],
    ['[^a-c]*', 'apple', false],
    ['[]x]', ']', true],
    ['*.{xml,dlm}', 'a.dlm', true],
    ['*.{xml,dlm}', 'a.pdf', false],
    ['report(1).pdf', 'report(1).pdf', true],
    ['a+b.txt', 'aab.txt', false],
    ['\\*.txt', '*.txt', true],
    ['\\*.txt', 'a.txt', false],
    ['.*', '.hidden', true],
    ['*', 'line\nbreak', true],
    ['a,b', 'a,b', true],
  ])('%j on %j -> %s', (pattern, text, expected) => {
    expect(globMatches(pattern, text)).toBe(expected);
  });
});

describe('matchRule', () => {
  const rules: Rule[] = [
    { match: '*.pdf', from: 'kitchen-*', action: { type: 'print', printer: 'kitchen' } },
    { match: '*.pdf', action: { type: 'print' } },
    { match: '*.xml', from: 'shop-west', action: { type: 'open' } },
    { match: 'order*.xml', action: { type: 'exec', command: '/usr/bin/import', args: ['{file}'] } },
    { match: '*', action: { type: 'save', dir: '/srv/in', ifExists: 'rename' } },
  ];

  it('first match wins', () => {
    expect(matchRule(rules, { name: 'a.pdf', from: 'kitchen-1' })?.index).toBe(0);
    expect(matchRule(rules, { name: 'a.pdf', from: 'shop-east' })?.index).toBe(1);
    expect(matchRule(rules, { name: 'order 17.xml', from: 'shop-east' })?.index).toBe(3);
    expect(matchRule(rules, { name: 'order 17.xml', from: 'shop-west' })?.index).toBe(2);
    expect(matchRule(rules, { name: 'notes.txt', from: 'x' })).toMatchObject({ index: 4, rule: rules[4] });
  });

  it('sender globs match the device id', () => {
    expect(matchRule(rules, { name: 'a.pdf', from: 'Kitchen-1' })?.index).toBe(1); // case-sensitive
    expect(matchRule(rules, { name: 'a.pdf', from: 'kitchen-' })?.index).toBe(0);
  });

  it('returns undefined when nothing matches', () => {
    expect(matchRule(rules.slice(0, 4), { name: 'notes.txt', from: 'x' })).toBeUndefined();
    expect(matchRule([], facts)).toBeUndefined();
  });
});

describe('planCommand', () => {
  it('substitutes placeholders, each argument staying one argument', () => {
    const plan = planCommand(
      { type: 'exec', command: '/usr/bin/import', args: ['--input={file}', '{name}', '{from}/{id}', '{unknown}', '{{name}}', 'plain'] },
      facts,
    );
    expect(plan.command).toBe('/usr/bin/import');
    expect(plan.args).toEqual([
      '--input=/var/spool/dropwire/m-42',
      'order 17.xml',
      'shop-east/m-42',
      '{unknown}',
      '{order 17.xml}',
      'plain',
    ]);
    expect(plan.env).toEqual({
      DROPWIRE_FILE: '/var/spool/dropwire/m-42',
      DROPWIRE_NAME: 'order 17.xml',
      DROPWIRE_FROM: 'shop-east',
      DROPWIRE_ID: 'm-42',
    });
  });

  it('does not substitute inside substituted values', () => {
    const plan = planCommand({ type: 'exec', command: 'x', args: ['{name}'] }, { ...facts, name: '{id} $(reboot)' });
    expect(plan.args).toEqual(['{id} $(reboot)']);
  });
});

describe('validateRules', () => {
  const ok = [
    { match: '*.pdf', from: 'shop-*', action: { type: 'print', printer: 'kitchen', copies: 2, options: { media: 'A4', 'fit-to-page': 'true' } }, parallel: 2 },
    { match: '*.xml', action: { type: 'exec', command: '/usr/bin/import', args: ['{file}'], timeoutS: 30, cwd: '/tmp' } },
    { match: '*.dlm', action: { type: 'save', dir: '/srv/in' } },
    { match: '*', action: { type: 'open' } },
  ];

  it('accepts good rules and fills defaults', () => {
    const rules = validateRules(ok);
    expect(rules[2]!.action).toEqual({ type: 'save', dir: '/srv/in', ifExists: 'rename' });
    expect(rules[0]).toEqual(ok[0]);
    expect(validateRules([{ match: '*', action: { type: 'exec', command: 'true' } }])[0]!.action).toEqual({
      type: 'exec',
      command: 'true',
      args: [],
    });
  });

  const bad = (index: number, patch: Record<string, unknown>, actionPatch?: Record<string, unknown>): unknown[] => {
    const rules = structuredClone(ok) as Record<string, unknown>[];
    rules[index] = { ...rules[index], ...patch };
    if (actionPatch) rules[index]!['action'] = { ...(rules[index]!['action'] as object), ...actionPatch };
    return rules;
  };

  it.each([
    ['rules', 'not an array' as unknown],
    ['rules[1]', [ok[0], 'x']],
    ['rules[1].match', bad(1, { match: '' })],
    ['rules[1].match', bad(1, { match: '[a-' })],
    ['rules[1].match', bad(1, { match: '*.{xml' })],
    ['rules[0].from', bad(0, { from: 42 })],
    ['rules[0].parallel', bad(0, { parallel: 0 })],
    ['rules[0].parallel', bad(0, { parallel: 1.5 })],
    ['rules[0].extra', bad(0, { extra: true })],
    ['rules[3].action', bad(3, { action: 'open' })],
    ['rules[3].action.type', bad(3, {}, { type: 'delete' })],
    ['rules[2].action.dir', bad(2, {}, { dir: 'relative/dir' })],
    ['rules[2].action.ifExists', bad(2, {}, { ifExists: 'overwrite' })],
    ['rules[1].action.command', bad(1, {}, { command: '' })],
    ['rules[1].action.command', bad(1, {}, { command: '{file}' })],
    ['rules[1].action.args', bad(1, {}, { args: '{file}' })],
    ['rules[1].action.args[1]', bad(1, {}, { args: ['{file}', 3] })],
    ['rules[1].action.timeoutS', bad(1, {}, { timeoutS: -1 })],
    ['rules[1].action.timeoutS', bad(1, {}, { timeoutS: '30' })],
    ['rules[1].action.timeoutS', bad(1, {}, { timeoutS: 1e9 })],
    ['rules[1].action.cwd', bad(1, {}, { cwd: 'tmp' })],
    ['rules[1].action.timeout', bad(1, {}, { timeout: 30 })],
    ['rules[0].action.copies', bad(0, {}, { copies: 0 })],
    ['rules[0].action.printer', bad(0, {}, { printer: '-dother' })],
    ['rules[0].action.options.media', bad(0, {}, { options: { media: 'A4 sides=two-sided' } })],
    ['rules[0].action.options.a b', bad(0, {}, { options: { 'a b': 'x' } })],
    ['rules[3].action.printer', bad(3, {}, { printer: 'x' })],
  ])('names the bad field %s', (field, value) => {
    let caught: unknown;
    try {
      validateRules(value);
    } catch (err) {
      caught = err;
    }
    expect(caught).toMatchObject({ code: 'DW_BAD_CONFIG', field });
    expect((caught as Error).message.startsWith(`${field}:`)).toBe(true);
  });
});

describe('describeRule', () => {
  it('renders one line per action', () => {
    const [print, exec, save, open] = validateRules([
      { match: '*.pdf', from: 'shop-*', action: { type: 'print', printer: 'kitchen', copies: 2, options: { media: 'A4' } } },
      { match: '*.xml', action: { type: 'exec', command: '/usr/bin/import', args: ['--in', '{file}', 'two words'], timeoutS: 30 } },
      { match: '*.dlm', action: { type: 'save', dir: '/srv/in', ifExists: 'replace' } },
      { match: '*', action: { type: 'open' } },
    ]);
    expect(describeRule(print!)).toBe('*.pdf from shop-* -> print --printer kitchen --copies 2 -o media=A4');
    expect(describeRule(exec!)).toBe('*.xml -> exec --timeout 30 -- /usr/bin/import --in {file} "two words"');
    expect(describeRule(save!)).toBe('*.dlm -> save --dir /srv/in --if-exists replace');
    expect(describeRule(open!)).toBe('* -> open');
    expect(describeRule({ ...open!, parallel: 3 })).toBe('* -> open (parallel 3)');
    for (const r of [print, exec, save, open]) expect(describeRule(r!)).not.toContain('\n');
  });
});
