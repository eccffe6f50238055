import { DropwireError } from '../shared/errors.js';

/**
 * File names arrive from the network and are untrusted. `safeName` turns any string into one path component
 * that is valid on Linux, macOS and Windows, cannot escape its folder, is not hidden, and cannot be read as a
 * command-line option. It is pure and deterministic (the same input always gives the same name) and
 * idempotent (`safeName(safeName(x)) === safeName(x)`).
 */

/** The longest name `safeName` produces, in bytes of UTF-8 (most file systems allow 255). */
export const MAX_SAFE_NAME_BYTES = 200;
/** Longer names are refused outright rather than truncated: nobody sends a 1 KiB file name on purpose. */
export const MAX_NAME_BYTES = 1024;
/** An extension longer than this is not kept apart when a name is truncated. */
const MAX_EXTENSION_BYTES = 20;
/** What an empty name (or one made only of dots and spaces) becomes. */
export const FALLBACK_NAME = 'unnamed';

// Path separators, characters Windows refuses (<>:"|?*), C0 controls, DEL, C1 controls, and the Unicode
// bidirectional overrides/isolates that make `invoice<RLO>fdp.exe` display as `invoiceexe.pdf`.
const UNSAFE_CHARS = /[/\\<>:"|?*\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/gu;
// Windows device names, reserved with any extension and in any case (`con.txt`, `Lpt1.tar.gz`); the
// superscript digits are reserved too.
const RESERVED_STEM = /^(?:CON|PRN|AUX|NUL|COM[1-9\u00b9\u00b2\u00b3]|LPT[1-9\u00b9\u00b2\u00b3]|CONIN\$|CONOUT\$)$/iu;

const encoder = new TextEncoder();
const byteLength = (s: string): number => encoder.encode(s).length;

/** Cuts `s` to at most `max` bytes of UTF-8 without splitting a code point. */
function truncateBytes(s: string, max: number): string {
  let out = '';
  let used = 0;
  for (const ch of s) {
    const n = byteLength(ch);
    if (used + n > max) break;
    out += ch;
    used += n;
  }
  return out;
}

/** Windows ignores trailing dots and spaces (`a.txt.` is `a.txt`); leading dots hide a file on Unix. */
const trimEnds = (s: string): string => s.replace(/^[. ]+/u, '').replace(/[. ]+$/u, '');

function isReserved(name: string): boolean {
  const dot = name.indexOf('.');
  const stem = (dot === -1 ? name : name.slice(0, dot)).replace(/ +$/u, '');
  return RESERVED_STEM.test(stem);
}

/** Keeps the extension (`.pdf`) when a long name is shortened, so the rules that match on it still apply. */
function capLength(name: string): string {
  if (byteLength(name) <= MAX_SAFE_NAME_BYTES) return name;
  const dot = name.lastIndexOf('.');
  const ext = dot > 0 ? name.slice(dot) : '';
  if (ext !== '' && byteLength(ext) <= MAX_EXTENSION_BYTES) {
    const stem = truncateBytes(name.slice(0, dot), MAX_SAFE_NAME_BYTES - byteLength(ext)).replace(/[. ]+$/u, '');
    return stem + ext;
  }
  return truncateBytes(name, MAX_SAFE_NAME_BYTES).replace(/[. ]+$/u, '');
}

export function safeName(untrusted: string): string {
  let name = String(untrusted)
    .toWellFormed() // a lone surrogate cannot be written to any file system
    .normalize('NFC')
    // A path keeps its meaningful parts: `../../etc/passwd` -> `etc_passwd`, `C:\in\a.txt` -> `C__in_a.txt`.
    .split(/[/\\]/u)
    .filter((part) => part !== '' && part !== '.' && part !== '..')
    .join('_')
    .replace(UNSAFE_CHARS, '_');
  name = trimEnds(name);
  if (name === '') name = FALLBACK_NAME;
  // Not an option to whatever program receives it, and not a device on Windows. Both prefixes come before
  // the length cap, which never touches the first character (the kept stem is always > 100 bytes).
  if (name.startsWith('-')) name = `_${name}`;
  if (isReserved(name)) name = `_${name}`;
  return capLength(name);
}

/**
 * Refuses a name outright (rather than neutralising it) when nothing sensible can be made of it: empty, or
 * absurdly long. Returns the coded reason, or `undefined` when `safeName` may be applied.
 */
export function checkName(untrusted: unknown): DropwireError | undefined {
  if (typeof untrusted !== 'string') return new DropwireError('DW_BAD_NAME', 'file name is not a string');
  if (untrusted.trim() === '') return new DropwireError('DW_BAD_NAME', 'file name is empty');
  const bytes = byteLength(untrusted.toWellFormed());
  if (bytes > MAX_NAME_BYTES) {
    return new DropwireError('DW_BAD_NAME', `file name is ${bytes} bytes long (at most ${MAX_NAME_BYTES})`);
  }
  return undefined;
}
