import path from 'node:path';
import { paths, rulesVersion } from '../agent/config.js';
import { AgentNotRunning, askAgent } from '../agent/control.js';
import { openConfigStore } from '../agent/config-store.js';
import { listPrinters } from '../agent/handlers/index.js';
import { lpArgs } from '../agent/handlers/print.js';
import { checkName, safeName } from '../agent/names.js';
import { BadRuleError, describeRule, matchRule, planCommand, validateRules, type Rule } from '../agent/rules.js';
import { DropwireError, isDropwireError } from '../shared/errors.js';
import { updateSaveDirsDropIn } from '../service/dropin.js';
import { resolveAgentHome } from '../service/locations.js';

/** Reads the rules as they are in the file (validated: a broken file is reported, never overwritten). */
function load(home?: string): { home: string; rules: Rule[]; save: (rules: Rule[]) => Promise<string[]> } {
  const h = resolveAgentHome(home);
  const conf = openConfigStore(h);
  if (!conf.has('relay') && !conf.has('relays')) throw new DropwireError('DW_NOT_ENROLLED', `no agent is set up in ${h}: run 'dropwire init TOKEN' first`);
  let rules: Rule[];
  try {
    rules = validateRules(conf.get('rules') ?? []);
  } catch (err) {
    if (!(err instanceof BadRuleError)) throw err;
    throw new DropwireError('DW_BAD_CONFIG', `${paths(h).config}: ${err.asRule().message} (field ${err.field}); fix it there first`, { cause: err });
  }
  return {
    home: h,
    rules,
    save: async (next) => {
      const clean = validateRules(next); // refuse before writing
      conf.set('rules', next as unknown as Record<string, unknown>[]);
      // A sandboxed system service may write only the save folders its drop-in names: keep it in step.
      const r = await updateSaveDirsDropIn(h, next.flatMap((x) => (x.action.type === 'save' ? [x.action.dir] : [])));
      const applied = await applyInRunningAgent(h, rulesVersion(clean));
      return [...(r.changed && r.file ? [`service drop-in updated: ${r.file}`] : []), ...(r.hint ? [r.hint] : []), ...applied];
    },
  };
}

/**
 * Returns once the agent running with this home has the rules just written (it reloads when asked over its
 * control socket and answers with their version), so the next file that arrives meets them. When no agent
 * runs, says so on stderr: the rules take effect when it starts.
 */
async function applyInRunningAgent(home: string, version: string): Promise<string[]> {
  let answer: Record<string, unknown>;
  try {
    answer = await askAgent(home, { op: 'reload' }, RELOAD_TIMEOUT_MS);
  } catch (err) {
    if (err instanceof AgentNotRunning) {
      console.error(`no agent is running with the folder ${home}: the rules take effect when it starts`);
      return [];
    }
    if (isDropwireError(err, 'DW_BAD_REQUEST')) {
      // An agent that cannot be asked (older, or without the reload op) still picks the file up by itself.
      console.error('the running agent cannot confirm rule changes; it applies them within a second');
      return [];
    }
    const e = err as { code?: string; message?: string };
    throw new DropwireError(e.code ?? 'DW_CONTROL', `the rules are saved in config.json, but the running agent did not confirm them: ${e.message ?? String(err)}`, { cause: err });
  }
  if (answer.version !== version) {
    throw new DropwireError('DW_RULES_CHANGED', `the running agent has other rules (version ${String(answer.version)}, expected ${version}): config.json was changed again meanwhile; see 'dropwire rule list'`);
  }
  return [`the running agent applied the rules (version ${version})`];
}

/** Reading and checking config.json is quick; this only guards against an agent that hangs. */
const RELOAD_TIMEOUT_MS = 10_000;

function position(n: number, count: number, what: string): number {
  if (!Number.isInteger(n) || n < 1 || n > count) throw new DropwireError('DW_BAD_ARGUMENT', `${what} must be a rule number from 1 to ${count}`);
  return n - 1;
}

export async function addRule(glob: string, type: string, command: string[], o: Record<string, unknown>): Promise<string> {
  const { rules, save } = load(o.home as string | undefined);
  let action: Record<string, unknown>;
  switch (type) {
    case 'save':
      if (typeof o.dir !== 'string') throw new DropwireError('DW_BAD_ARGUMENT', 'save needs --dir DIR');
      action = { type, dir: path.resolve(o.dir), ifExists: o.ifExists };
      break;
    case 'exec': {
      const [cmd, ...args] = command;
      if (!cmd) throw new DropwireError('DW_BAD_ARGUMENT', 'exec needs the command after --, e.g. exec -- /usr/local/bin/import {file}');
      action = { type, command: cmd, args, ...(o.timeout !== undefined ? { timeoutS: o.timeout } : {}), ...(typeof o.cwd === 'string' ? { cwd: path.resolve(o.cwd) } : {}) };
      break;
    }
    case 'print': {
      const options: Record<string, string> = {};
      for (const kv of (o.option as string[] | undefined) ?? []) {
        const i = kv.indexOf('=');
        if (i <= 0) throw new DropwireError('DW_BAD_ARGUMENT', `--option must be KEY=VALUE, got '${kv}'`);
        options[kv.slice(0, i)] = kv.slice(i + 1);
      }
      action = {
        type,
        ...(typeof o.printer === 'string' ? { printer: o.printer } : {}),
        ...(o.copies !== undefined ? { copies: o.copies } : {}),
        ...(Object.keys(options).length ? { options } : {}),
      };
      break;
    }
    case 'open':
      action = { type };
      break;
    default:
      throw new DropwireError('DW_BAD_ARGUMENT', `unknown action '${type}': use save, exec, print or open`);
  }
  if (type !== 'exec' && command.length > 0) throw new DropwireError('DW_BAD_ARGUMENT', `${type} takes no command`);
  const rule = { match: glob, ...(typeof o.from === 'string' ? { from: o.from } : {}), action, ...(o.parallel !== undefined ? { parallel: o.parallel } : {}) };
  // By default a new rule goes before a final catch-all (like the `*` save rule `init` adds), else last.
  const last = rules[rules.length - 1];
  const defaultAt = last && last.match === '*' && last.from === undefined ? rules.length - 1 : rules.length;
  const at = o.at !== undefined ? position(o.at as number, rules.length + 1, '--at') : defaultAt;
  let checked: Rule | undefined;
  try {
    [checked] = validateRules([rule]);
  } catch (err) {
    // Named by the number it would have in `rule list`, not by its place in a one-rule check.
    throw err instanceof BadRuleError ? err.asRule(at + 1) : err;
  }
  const next = [...rules.slice(0, at), checked!, ...rules.slice(at)];
  const notes = await save(next);
  return [`rule ${at + 1}: ${describeRule(checked!)}`, ...notes].join('\n');
}

export function listRules(o: { home?: string; json?: boolean }): string {
  const { rules } = load(o.home);
  if (o.json) return JSON.stringify(rules.map((r, i) => ({ n: i + 1, ...r })));
  if (rules.length === 0) return 'no rules: every file would be rejected';
  return rules.map((r, i) => `${String(i + 1).padStart(3)}  ${describeRule(r)}`).join('\n');
}

export async function removeRule(n: number, o: { home?: string }): Promise<string> {
  const { rules, save } = load(o.home);
  const i = position(n, rules.length, 'N');
  const [gone] = rules.splice(i, 1);
  const notes = await save(rules);
  return [`removed rule ${n}: ${describeRule(gone!)}`, ...notes].join('\n');
}

export async function moveRule(n: number, m: number, o: { home?: string }): Promise<string> {
  const { rules, save } = load(o.home);
  const from = position(n, rules.length, 'N');
  const to = position(m, rules.length, 'M');
  const [r] = rules.splice(from, 1);
  rules.splice(to, 0, r!);
  const notes = await save(rules);
  return [`rule ${n} is now rule ${m}: ${describeRule(r!)}`, ...notes].join('\n');
}

const quote = (s: string) => (/^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);

export function testRule(filename: string, o: { home?: string; from: string }): string {
  const { home, rules } = load(o.home);
  const bad = checkName(filename);
  if (bad) throw Object.assign(bad, { message: `${bad.message}: the message would be rejected` });
  const name = safeName(filename);
  const hit = matchRule(rules, { name, from: o.from });
  if (!hit) throw new DropwireError('DW_NO_RULE', `no rule matches '${name}' from '${o.from}': the message would be rejected`);
  const file = path.join(paths(home).spool, '<id>', name);
  const lines = [`rule ${hit.index + 1}: ${describeRule(hit.rule)}`];
  if (name !== filename) lines.push(`file name on this host: ${name}`);
  const a = hit.rule.action;
  if (a.type === 'exec') {
    const plan = planCommand(a, { name, from: o.from, id: '<id>', file });
    lines.push(`would run: ${[plan.command, ...plan.args].map(quote).join(' ')}`);
  } else if (a.type === 'print') {
    lines.push(`would run: ${['lp', ...lpArgs(a, file, name)].map(quote).join(' ')}`);
  } else if (a.type === 'save') {
    lines.push(`would save as: ${path.join(a.dir, name)} (if it exists: ${a.ifExists})`);
  } else {
    lines.push(`would open ${file} with the desktop's default application`);
  }
  return lines.join('\n');
}

export async function printPrinters(json: boolean): Promise<string> {
  const printers = await listPrinters();
  if (json) return JSON.stringify(printers);
  if (printers.length === 0) return 'no printers';
  return printers.map((p) => `${p.isDefault ? '*' : ' '} ${p.name}\t${p.state}`).join('\n');
}
