import path from 'node:path';
import { DropwireError } from '../shared/errors.js';

/**
 * The host's rules: which action a file that arrived gets. PURE: no file system, no process, no clock.
 * The agent validates the configured rules once with `validateRules`, matches each file with `matchRule`
 * (first match wins), and hands the rule's action to `runAction` (handlers/index.ts).
 */

export type Action =
  | { type: 'save'; dir: string; ifExists: 'rename' | 'replace' | 'fail' }
  | { type: 'exec'; command: string; args: string[]; timeoutS?: number; cwd?: string }
  | { type: 'print'; printer?: string; copies?: number; options?: Record<string, string> }
  | { type: 'open' };

export interface Rule {
  /** Glob on the (safe) file name: `*` `?` `[a-z]` `[!a-z]` `{xml,dlm}`, `\` escapes. Case-sensitive. */
  match: string;
  /** Optional glob on the sending device's id. */
  from?: string;
  action: Action;
  /** How many files this rule may handle at once (the agent enforces it). */
  parallel?: number;
}

/** What a handler knows about the file: its safe name, the sender, the message id and the spool path. */
export interface FileFacts {
  name: string;
  from: string;
  id: string;
  file: string;
}

export const ACTION_TYPES = ['save', 'exec', 'print', 'open'] as const;
export const IF_EXISTS = ['rename', 'replace', 'fail'] as const;
export const MAX_EXEC_TIMEOUT_S = 86_400;
export const MAX_PARALLEL = 64;
export const MAX_COPIES = 999;
export const MAX_RULES = 1_000;

/** A rule that cannot be used; `field` is the path of the offending value, e.g. `rules[2].action.timeoutS`. */
export class BadRuleError extends DropwireError {
  readonly field: string;
  readonly problem: string;
  constructor(field: string, problem: string) {
    super('DW_BAD_CONFIG', `${field}: ${problem}`);
    this.name = 'BadRuleError';
    this.field = field;
    this.problem = problem;
  }

  /** The rule's number as `rule list` shows it (1 = first), when the problem is inside one rule. */
  get ruleNumber(): number | undefined {
    const m = /^rules\[(\d+)\]/u.exec(this.field);
    return m ? Number(m[1]) + 1 : undefined;
  }

  /**
   * The same problem, told as an operator of `dropwire rule` sees it: `rule 3, match: bad glob: …`
   * (`n` replaces the position the rule had while it was checked).
   */
  asRule(n = this.ruleNumber): DropwireError {
    if (n === undefined) return this;
    const inside = this.field.replace(/^rules\[\d+\]\.?/u, '');
    return new DropwireError('DW_BAD_CONFIG', `rule ${n}${inside ? `, ${inside}` : ''}: ${this.problem}`, { cause: this });
  }
}

// ---------------------------------------------------------------------------------------------------------
// Globs. A tiny, deterministic matcher (no path semantics: names contain no separators, and a leading dot
// is an ordinary character). Compiled once per pattern.

const globCache = new Map<string, RegExp>();
const GLOB_CACHE_MAX = 1_000;

/** Compiles a glob to an anchored RegExp; throws a plain Error describing the syntax problem. */
export function compileGlob(pattern: string): RegExp {
  const cached = globCache.get(pattern);
  if (cached) return cached;
  const chars = [...pattern];
  let re = '';
  let inBraces = false;
  for (let i = 0; i < chars.length; i++) {
    const c = chars[i]!;
    if (c === '\\') {
      const next = chars[++i];
      if (next === undefined) throw new Error('ends with a lone "\\"');
      re += escapeRegExp(next);
    } else if (c === '*') {
      re += '.*';
    } else if (c === '?') {
      re += '.';
    } else if (c === '[') {
      let j = i + 1;
      let negate = false;
      if (chars[j] === '!' || chars[j] === '^') {
        negate = true;
        j++;
      }
      let body = '';
      // A `]` right after `[` or `[!` is a member, as in POSIX.
      if (chars[j] === ']') {
        body += '\\]';
        j++;
      }
      for (; j < chars.length && chars[j] !== ']'; j++) {
        const m = chars[j]!;
        if (m === '\\') {
          const next = chars[++j];
          if (next === undefined) throw new Error('ends with a lone "\\"');
          body += escapeClassChar(next);
        } else if (m === '-') {
          body += '-';
        } else {
          body += escapeClassChar(m);
        }
      }
      if (j >= chars.length) throw new Error('"[" without a closing "]"');
      if (body === '') throw new Error('empty "[]"');
      re += `[${negate ? '^' : ''}${body}]`;
      i = j;
    } else if (c === '{') {
      if (inBraces) throw new Error('nested "{" is not supported');
      inBraces = true;
      re += '(?:';
    } else if (c === ',' && inBraces) {
      re += '|';
    } else if (c === '}' && inBraces) {
      inBraces = false;
      re += ')';
    } else {
      re += escapeRegExp(c);
    }
  }
  if (inBraces) throw new Error('"{" without a closing "}"');
  let compiled: RegExp;
  try {
    compiled = new RegExp(`^${re}$`, 'su');
  } catch (err) {
    // e.g. a reversed range `[z-a]`
    throw new Error(`invalid pattern (${(err as Error).message})`, { cause: err });
  }
  if (globCache.size >= GLOB_CACHE_MAX) globCache.clear();
  globCache.set(pattern, compiled);
  return compiled;
}

const escapeRegExp = (c: string): string => c.replace(/[.*+?^${}()|[\]\\/]/gu, '\\$&');
const escapeClassChar = (c: string): string => c.replace(/[\]\\^[-]/gu, '\\$&');

export function globMatches(pattern: string, text: string): boolean {
  return compileGlob(pattern).test(text);
}

// ---------------------------------------------------------------------------------------------------------
// Validation

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

function onlyKeys(obj: Obj, allowed: readonly string[], at: string): void {
  for (const key of Object.keys(obj)) {
    if (!allowed.includes(key)) throw new BadRuleError(`${at}.${key}`, `unknown field (allowed: ${allowed.join(', ')})`);
  }
}

function nonEmptyString(v: unknown, at: string): string {
  if (typeof v !== 'string' || v.trim() === '') throw new BadRuleError(at, 'must be a non-empty string');
  if (/[\u0000-\u001f\u007f]/u.test(v)) throw new BadRuleError(at, 'must not contain control characters');
  return v;
}

function glob(v: unknown, at: string): string {
  const s = nonEmptyString(v, at);
  try {
    compileGlob(s);
  } catch (err) {
    throw new BadRuleError(at, `bad glob: ${(err as Error).message}`);
  }
  return s;
}

function integer(v: unknown, at: string, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw new BadRuleError(at, `must be an integer from ${min} to ${max}`);
  }
  return v;
}

function absolutePath(v: unknown, at: string): string {
  const s = nonEmptyString(v, at);
  if (!path.isAbsolute(s)) throw new BadRuleError(at, 'must be an absolute path');
  return s;
}

const PLACEHOLDER = /\{(file|name|from|id)\}/gu;
const OPTION_KEY = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/u;
// lp parses `-o` values itself (spaces separate options, quotes group): keep values to one plain token.
const OPTION_VALUE = /^[^\s"'\\]*$/u;

function validateAction(v: unknown, at: string): Action {
  if (!isObj(v)) throw new BadRuleError(at, 'must be an object');
  const type = v['type'];
  if (typeof type !== 'string' || !(ACTION_TYPES as readonly string[]).includes(type)) {
    throw new BadRuleError(`${at}.type`, `must be one of ${ACTION_TYPES.join(', ')}`);
  }
  switch (type) {
    case 'save': {
      onlyKeys(v, ['type', 'dir', 'ifExists'], at);
      const dir = absolutePath(v['dir'], `${at}.dir`);
      const ifExists = v['ifExists'] ?? 'rename';
      if (typeof ifExists !== 'string' || !(IF_EXISTS as readonly string[]).includes(ifExists)) {
        throw new BadRuleError(`${at}.ifExists`, `must be one of ${IF_EXISTS.join(', ')}`);
      }
      return { type, dir, ifExists: ifExists as (typeof IF_EXISTS)[number] };
    }
    case 'exec': {
      onlyKeys(v, ['type', 'command', 'args', 'timeoutS', 'cwd'], at);
      const command = nonEmptyString(v['command'], `${at}.command`);
      // The command is fixed by the operator; a name from the network never chooses what runs.
      if (new RegExp(PLACEHOLDER.source, 'u').test(command)) {
        throw new BadRuleError(
          `${at}.command`,
          'placeholders are not allowed in the command; use an interpreter, e.g. exec -- sh {file}',
        );
      }
      const rawArgs = v['args'] ?? [];
      if (!Array.isArray(rawArgs)) throw new BadRuleError(`${at}.args`, 'must be an array of strings');
      const args = rawArgs.map((a, i) => {
        if (typeof a !== 'string') throw new BadRuleError(`${at}.args[${i}]`, 'must be a string');
        if (a.includes('\u0000')) throw new BadRuleError(`${at}.args[${i}]`, 'must not contain NUL');
        return a;
      });
      const action: Action = { type, command, args };
      if (v['timeoutS'] !== undefined) {
        const t = v['timeoutS'];
        if (typeof t !== 'number' || !Number.isFinite(t) || t <= 0 || t > MAX_EXEC_TIMEOUT_S) {
          throw new BadRuleError(`${at}.timeoutS`, `must be a number of seconds above 0 and at most ${MAX_EXEC_TIMEOUT_S}`);
        }
        action.timeoutS = t;
      }
      if (v['cwd'] !== undefined) action.cwd = absolutePath(v['cwd'], `${at}.cwd`);
      return action;
    }
    case 'print': {
      onlyKeys(v, ['type', 'printer', 'copies', 'options'], at);
      const action: Action = { type };
      if (v['printer'] !== undefined) {
        const printer = nonEmptyString(v['printer'], `${at}.printer`);
        if (printer.startsWith('-')) throw new BadRuleError(`${at}.printer`, 'must not start with "-"');
        action.printer = printer;
      }
      if (v['copies'] !== undefined) action.copies = integer(v['copies'], `${at}.copies`, 1, MAX_COPIES);
      if (v['options'] !== undefined) {
        const opts = v['options'];
        if (!isObj(opts)) throw new BadRuleError(`${at}.options`, 'must be an object of strings');
        const options: Record<string, string> = {};
        for (const [k, val] of Object.entries(opts)) {
          if (!OPTION_KEY.test(k)) {
            throw new BadRuleError(`${at}.options.${k}`, 'option names are letters, digits, "_", "." and "-"');
          }
          if (typeof val !== 'string' || !OPTION_VALUE.test(val)) {
            throw new BadRuleError(`${at}.options.${k}`, 'must be a string without spaces, quotes or backslashes');
          }
          options[k] = val;
        }
        action.options = options;
      }
      return action;
    }
    default: {
      onlyKeys(v, ['type'], at);
      return { type: 'open' };
    }
  }
}

/**
 * Checks configured rules and returns clean copies (defaults filled in: `ifExists: 'rename'`, `args: []`).
 * Throws `BadRuleError` (code `DW_BAD_CONFIG`) whose `field` and message name the bad value's path.
 */
export function validateRules(value: unknown): Rule[] {
  if (!Array.isArray(value)) throw new BadRuleError('rules', 'must be an array');
  if (value.length > MAX_RULES) throw new BadRuleError('rules', `at most ${MAX_RULES} rules`);
  return value.map((raw, i): Rule => {
    const at = `rules[${i}]`;
    if (!isObj(raw)) throw new BadRuleError(at, 'must be an object');
    onlyKeys(raw, ['match', 'from', 'action', 'parallel'], at);
    const rule: Rule = { match: glob(raw['match'], `${at}.match`), action: validateAction(raw['action'], `${at}.action`) };
    if (raw['from'] !== undefined) rule.from = glob(raw['from'], `${at}.from`);
    if (raw['parallel'] !== undefined) rule.parallel = integer(raw['parallel'], `${at}.parallel`, 1, MAX_PARALLEL);
    return rule;
  });
}

// ---------------------------------------------------------------------------------------------------------
// Matching and planning

/** The first rule whose name glob (and sender glob, if any) matches; `undefined` when none does. */
export function matchRule(rules: Rule[], facts: { name: string; from: string }): { index: number; rule: Rule } | undefined {
  for (let index = 0; index < rules.length; index++) {
    const rule = rules[index]!;
    if (!globMatches(rule.match, facts.name)) continue;
    if (rule.from !== undefined && !globMatches(rule.from, facts.from)) continue;
    return { index, rule };
  }
  return undefined;
}

/**
 * Substitutes `{file}` `{name}` `{from}` `{id}` in each argument, in one pass (a value that itself contains
 * `{id}` is not substituted again). There is no shell: every argument stays exactly one argument, whatever
 * the values contain.
 */
export function substitute(template: string, facts: FileFacts): string {
  return template.replace(PLACEHOLDER, (_m, key: keyof FileFacts) => facts[key]);
}

export function placeholderEnv(facts: FileFacts): Record<string, string> {
  return {
    DROPWIRE_FILE: facts.file,
    DROPWIRE_NAME: facts.name,
    DROPWIRE_FROM: facts.from,
    DROPWIRE_ID: facts.id,
  };
}

export function planCommand(
  action: Extract<Action, { type: 'exec' }>,
  facts: FileFacts,
): { command: string; args: string[]; env: Record<string, string> } {
  return {
    command: action.command,
    args: action.args.map((a) => substitute(a, facts)),
    env: placeholderEnv(facts),
  };
}

/** Shows an argument so that spaces and quotes are visible; plain words stay plain. */
const show = (s: string): string => (/^[\w@%+=:,./{}*?[\]!-]+$/u.test(s) ? s : JSON.stringify(s));

/** One line for `rule list`, e.g. `*.pdf from shop-* -> print --printer kitchen --copies 2`. */
export function describeRule(rule: Rule): string {
  const parts = [show(rule.match)];
  if (rule.from !== undefined) parts.push('from', show(rule.from));
  parts.push('->');
  const a = rule.action;
  switch (a.type) {
    case 'save':
      parts.push('save', '--dir', show(a.dir), '--if-exists', a.ifExists);
      break;
    case 'exec':
      if (a.timeoutS !== undefined) parts.push('exec', '--timeout', String(a.timeoutS));
      else parts.push('exec');
      if (a.cwd !== undefined) parts.push('--cwd', show(a.cwd));
      parts.push('--', show(a.command), ...a.args.map(show));
      break;
    case 'print':
      parts.push('print');
      if (a.printer !== undefined) parts.push('--printer', show(a.printer));
      if (a.copies !== undefined) parts.push('--copies', String(a.copies));
      for (const [k, v] of Object.entries(a.options ?? {})) parts.push('-o', show(`${k}=${v}`));
      break;
    case 'open':
      parts.push('open');
      break;
  }
  if (rule.parallel !== undefined) parts.push(`(parallel ${rule.parallel})`);
  return parts.join(' ');
}
