import fs from 'node:fs';
import path from 'node:path';
import { getAsset, isSea } from 'node:sea';
import { DropwireError } from '../shared/errors.js';
import { templatesDir } from './locations.js';

/**
 * Templates in service-templates/ hold `{{NAME}}` placeholders. Values are escaped for the file's format
 * by the caller (systemdValue, xmlText) and substituted verbatim; a placeholder left without a value, or a
 * value the template does not use, is an error, so a template and its renderer cannot drift apart.
 */
export function render(template: string, vars: Record<string, string>, name = 'template'): string {
  const used = new Set<string>();
  const out = template.replace(/\{\{([A-Z_]+)\}\}/g, (_m, key: string) => {
    const v = vars[key];
    if (v === undefined) throw new DropwireError('DW_TEMPLATE', `${name}: no value for {{${key}}}`);
    used.add(key);
    return v;
  });
  const unused = Object.keys(vars).filter((k) => !used.has(k));
  if (unused.length) throw new DropwireError('DW_TEMPLATE', `${name}: does not use ${unused.map((k) => `{{${k}}}`).join(', ')}`);
  return out;
}

/** From the executable's assets in a single executable (scripts/release.mjs), else from service-templates/. */
export function loadTemplate(rel: string): string {
  if (isSea()) return getAsset(rel, 'utf8');
  return fs.readFileSync(path.join(templatesDir(), rel), 'utf8');
}

export function renderTemplate(rel: string, vars: Record<string, string>): string {
  return render(loadTemplate(rel), vars, `service-templates/${rel}`);
}

/** Characters no path or argument in a service definition may contain. */
const CONTROL = /[\u0000-\u001f\u007f]/;

function refuseControl(v: string, what: string): void {
  if (CONTROL.test(v)) throw new DropwireError('DW_BAD_PATH', `${what} contains a control character: ${JSON.stringify(v)}`);
}

/**
 * One word of a systemd unit setting (ExecStart= argument, Environment= assignment, path): quoted when
 * it holds blanks or quotes, `%` doubled (specifiers), `\` and `"` escaped. `$` is refused: ExecStart=
 * would expand it and Environment= would not, so no one escaping is right for both.
 */
export function systemdValue(v: string, what = 'value'): string {
  refuseControl(v, what);
  if (v.includes('$')) throw new DropwireError('DW_BAD_PATH', `${what} contains '$', which systemd would expand: ${JSON.stringify(v)}`);
  const escaped = v.replace(/%/g, '%%');
  if (!/[\s"'\\;]/.test(escaped) && escaped.length > 0) return escaped;
  return `"${escaped.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;
}

export function systemdArgs(argv: readonly string[]): string {
  return argv.map((a, i) => systemdValue(a, i === 0 ? 'executable' : 'argument')).join(' ');
}

/** Text or attribute value in XML (plist, WinSW). */
export function xmlText(v: string, what = 'value'): string {
  refuseControl(v, what);
  return v.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&apos;');
}

/** How a command line is shown (--dry-run): POSIX shell quoting, or cmd.exe-style double quotes. */
export function showCommand(argv: readonly string[], platform: 'posix' | 'win32'): string {
  return argv
    .map((a) => {
      if (a !== '' && /^[\w@%+=:,./\\-]+$/.test(a)) return a;
      return platform === 'win32' ? `"${a.replace(/"/g, '\\"')}"` : `'${a.replace(/'/g, `'\\''`)}'`;
    })
    .join(' ');
}
