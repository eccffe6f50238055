import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { isSea } from 'node:sea';
import { agentHome } from '../agent/config.js';
import { DropwireError } from '../shared/errors.js';
import {
  currentUser,
  hostPlatform,
  LAUNCHD_LABEL,
  packageRoot,
  pathFor,
  programFiles,
  relayDataDir,
  SAVE_DIRS_DROPIN,
  SERVICE_ACCOUNT,
  SYSTEMD_UNIT,
  systemHome,
  userAgentHome,
  WINSW_ID,
  type Platform,
  type Role,
  type Scope,
} from './locations.js';
import { renderTemplate, systemdArgs, systemdValue, xmlText } from './render.js';

/**
 * What `dropwire service …` does, as data: an ordered list of steps (make a folder, write a file, copy
 * WinSW, run a command) computed from the options and the agent's config, then shown (--dry-run),
 * written into a root (--root) or carried out (apply.ts). Paths in a plan are the target machine's.
 */

export type Step =
  | { kind: 'dir'; path: string; mode: number }
  | { kind: 'file'; path: string; content: string; mode: number }
  | { kind: 'copy'; path: string; from: string; mode: number }
  | { kind: 'remove'; path: string }
  | { kind: 'rmdir'; path: string }
  | { kind: 'run'; argv: string[]; why?: string; mayFail?: boolean };

export interface Plan {
  title: string;
  platform: Platform;
  steps: Step[];
  notes: string[];
}

export interface ServiceOptions {
  platform?: Platform;
  role?: Role;
  scope?: Scope;
  /** Agent home of a --user install (system installs always use the system home). */
  home?: string;
  account?: string;
  node?: string;
  cli?: string;
  listen?: string;
  http?: string;
  public?: string;
  /** WinSW executable to copy next to the service definition (Windows). */
  winsw?: string;
  env?: NodeJS.ProcessEnv;
}

/** Everything the templates need, resolved once. */
export interface Target {
  platform: Platform;
  role: Role;
  scope: Scope;
  node: string;
  /** The CLI script node runs; empty when `node` is a dropwire single executable (it is the CLI). */
  cli: string;
  /** Agent home, or the relay's data folder. */
  home: string;
  /** Account a system service runs as ('' for a user service). */
  account: string;
  userHome: string;
  userName: string;
  uid: number;
  relay: { listen: string; http: string; public?: string };
  winsw?: string;
  /** Windows: the folder holding the WinSW copy and its XML (under Program Files: not writable by the service). */
  wrapperDir: string;
}

/** Facts about the target machine a plan depends on (read under --root when given). */
export interface Facts {
  /** The agent home has a config: the service can start right away. */
  enrolled: boolean;
  /** `save` folders of the agent's rules. */
  saveDirs: string[];
  /** The other role's system unit is installed (then the shared account file stays). */
  otherInstalled: boolean;
}

const DEFAULT_NODE: Record<Platform, string> = { linux: '/usr/bin/node', darwin: '/usr/local/bin/node', win32: 'C:\\Program Files\\nodejs\\node.exe' };
const DEFAULT_CLI: Record<Platform, string> = {
  linux: '/usr/lib/node_modules/dropwire/bin/dropwire.js',
  darwin: '/usr/local/lib/node_modules/dropwire/bin/dropwire.js',
  win32: 'C:\\Program Files\\nodejs\\node_modules\\dropwire\\bin\\dropwire.js',
};

function usage(message: string): DropwireError {
  return Object.assign(new DropwireError('DW_USAGE', message), { exitCode: 2 });
}

export function resolveTarget(o: ServiceOptions): Target {
  const env = o.env ?? process.env;
  const host = hostPlatform();
  const platform = o.platform ?? host;
  const role = o.role ?? 'agent';
  const p = pathFor(platform);
  let scope: Scope;
  if (role === 'relay') {
    if (o.scope === 'user') throw usage('the relay runs as a system service; leave out --user');
    scope = 'system';
  } else if (platform === 'win32') {
    if (o.scope === 'user') throw usage('on Windows the agent is a Windows service (system-wide) run as --account; leave out --user');
    scope = 'system';
  } else {
    // Linux: a system service for headless hosts; macOS: a LaunchAgent in the user's session.
    scope = o.scope ?? (platform === 'darwin' ? 'user' : 'system');
  }
  if (o.home && (scope === 'system' || role === 'relay')) throw usage(`a system service uses ${role === 'relay' ? relayDataDir(platform, env) : systemHome(platform, env)}; --home is for --user installs`);
  const me = currentUser();
  const sameHost = platform === host;
  const node = o.node ?? (sameHost ? fs.realpathSync(process.execPath) : DEFAULT_NODE[platform]);
  const cli = o.cli ?? (sameHost ? (isSea() ? '' : fs.realpathSync(path.join(packageRoot(), 'bin', 'dropwire.js'))) : DEFAULT_CLI[platform]);
  for (const [what, v] of [['--node', node], ['--cli', cli]] as const) if (v !== '' && !p.isAbsolute(v)) throw usage(`${what} must be an absolute path on ${platform}: ${v}`);
  let home: string;
  if (role === 'relay') home = relayDataDir(platform, env);
  else if (scope === 'system') home = systemHome(platform, env);
  else if (o.home) home = p.resolve(o.home);
  else home = sameHost ? agentHome() : userAgentHome(platform, me.home, env);
  let account = '';
  if (scope === 'system') {
    if (platform === 'win32') account = role === 'relay' ? 'NT AUTHORITY\\LocalService' : (o.account ?? (host === 'win32' && env.USERNAME ? `${env.USERDOMAIN ?? '.'}\\${env.USERNAME}` : '.\\dropwire'));
    else account = o.account ?? SERVICE_ACCOUNT[platform];
    // Windows: [DOMAIN\\]name without the characters account names may not hold.
    const ok = platform === 'win32' ? /^(?:[^"/\\[\]:;|=,+*?<>\x00-\x1f]{1,64}\\)?[^"/\\[\]:;|=,+*?<>\x00-\x1f]{1,104}$/ : /^[a-z_][a-z0-9_-]{0,31}$/i;
    if (!ok.test(account)) throw usage(`--account: not an account name on ${platform}: ${JSON.stringify(account)}`);
  } else if (o.account) throw usage('--account is for system services; a --user service runs as you');
  return {
    platform,
    role,
    scope,
    node,
    cli,
    home,
    account,
    userHome: me.home,
    userName: me.name,
    uid: me.uid,
    relay: { listen: o.listen ?? '0.0.0.0:7390', http: o.http ?? '127.0.0.1:7391', ...(o.public ? { public: o.public } : {}) },
    ...(o.winsw ? { winsw: o.winsw } : {}),
    wrapperDir: path.win32.join(programFiles(env), 'dropwire'),
  };
}

// --- where each platform puts things ---------------------------------------------------------------

export function unitDir(t: Pick<Target, 'scope' | 'userHome'>): string {
  return t.scope === 'user' ? path.posix.join(t.userHome, '.config', 'systemd', 'user') : '/etc/systemd/system';
}

export function unitFile(t: Pick<Target, 'scope' | 'userHome' | 'role'>): string {
  return path.posix.join(unitDir(t), t.role === 'agent' && t.scope === 'user' ? SYSTEMD_UNIT.agent : SYSTEMD_UNIT[t.role]);
}

export function dropInFile(t: Pick<Target, 'scope' | 'userHome' | 'role'>): string {
  return path.posix.join(`${unitFile(t)}.d`, SAVE_DIRS_DROPIN);
}

export const SYSUSERS_FILE = '/etc/sysusers.d/dropwire.conf';

function plistFile(t: Target): string {
  const name = `${LAUNCHD_LABEL[t.role]}.plist`;
  return t.scope === 'user' ? path.posix.join(t.userHome, 'Library', 'LaunchAgents', name) : path.posix.join('/Library/LaunchDaemons', name);
}

function launchdDomain(t: Target): string {
  return t.scope === 'user' ? `gui/${t.uid}` : 'system';
}

function winswDir(t: Target): string {
  return t.wrapperDir;
}

function winswExe(t: Target): string {
  return path.win32.join(winswDir(t), `${WINSW_ID[t.role]}.exe`);
}

/** The files a plan writes (the ones uninstall removes), in order. */
export function serviceFiles(t: Target): string[] {
  if (t.platform === 'linux') {
    const files = [unitFile(t)];
    if (t.role === 'agent' && t.scope === 'system') files.push(dropInFile(t));
    if (t.scope === 'system') files.unshift(SYSUSERS_FILE);
    return files;
  }
  if (t.platform === 'darwin') return [plistFile(t)];
  return [winswExe(t), path.win32.join(winswDir(t), `${WINSW_ID[t.role]}.xml`)];
}

// --- rendering ---------------------------------------------------------------------------------------

function execArgs(t: Target): string[] {
  const program = t.cli ? [t.node, t.cli] : [t.node];
  if (t.role === 'agent') return [...program, 'agent'];
  const r = t.relay;
  return [...program, 'relay', 'start', '--data', t.home, '--listen', r.listen, '--http', r.http, ...(r.public ? ['--public', r.public] : [])];
}

const HOME_PREFIXES = ['/home/', '/root/', '/run/user/'];

/**
 * ProtectHome=yes hides /home, /root and /run/user. When node or dropwire is installed there (nvm, a
 * user's npm prefix), the unit uses ProtectHome=tmpfs and binds just those folders back, read-only.
 */
function protectHome(t: Target): { mode: string; bind: string[] } {
  const under = (p: string) => HOME_PREFIXES.some((h) => p.startsWith(h));
  const bind: string[] = [];
  if (under(t.node)) bind.push(path.posix.dirname(t.node));
  const pkg = path.posix.dirname(path.posix.dirname(t.cli));
  if (under(t.cli) && !bind.some((b) => pkg.startsWith(b + '/'))) bind.push(pkg);
  return bind.length ? { mode: 'tmpfs', bind } : { mode: 'yes', bind };
}

export function renderSystemdUnit(t: Target): string {
  const exec = systemdArgs(execArgs(t));
  if (t.scope === 'user') {
    return renderTemplate('systemd/dropwire-agent.user.service', { ENV_HOME: systemdValue(`DROPWIRE_HOME=${t.home}`, 'home'), EXEC: exec });
  }
  const ph = protectHome(t);
  const common = {
    ACCOUNT: t.account,
    EXEC: exec,
    PROTECT_HOME: ph.mode,
    BIND_READ_ONLY: ph.bind.length
      ? `# node or dropwire is installed under a home folder: only that folder is visible, read-only.\nBindReadOnlyPaths=${ph.bind.map((b) => systemdValue(b, 'path')).join(' ')}`
      : '# node and dropwire are installed outside home folders: nothing to bind.',
  };
  if (t.role === 'relay') return renderTemplate('systemd/dropwire-relay.service', common);
  return renderTemplate('systemd/dropwire-agent.service', {
    ...common,
    HOME: systemdValue(t.home, 'home'),
    ENV_HOME: systemdValue(`DROPWIRE_HOME=${t.home}`, 'home'),
    ENV_LOG_FILE: systemdValue('DROPWIRE_LOG_FILE=/var/log/dropwire/agent.log'),
  });
}

/** The save-dirs drop-in: `ReadWritePaths=-DIR` for every save folder outside the agent home. */
export function renderSaveDirsDropIn(home: string, dirs: readonly string[]): string {
  const seen = new Set<string>();
  const lines: string[] = [];
  for (const d of dirs) {
    const abs = path.posix.resolve(home, d);
    const inside = abs === home || abs.startsWith(home.endsWith('/') ? home : home + '/');
    if (inside || seen.has(abs)) continue;
    seen.add(abs);
    lines.push(`ReadWritePaths=${systemdValue(`-${abs}`, 'save folder')}`);
  }
  return renderTemplate('systemd/save-dirs.conf', { READ_WRITE_PATHS: lines.length ? lines.join('\n') : '# no save folder outside the agent folder' });
}

export function renderPlist(t: Target): string {
  const args = execArgs(t)
    .map((a) => `\t\t<string>${xmlText(a, 'argument')}</string>`)
    .join('\n');
  const label = LAUNCHD_LABEL[t.role];
  if (t.role === 'relay') {
    return renderTemplate('launchd/relay.daemon.plist', {
      LABEL: label,
      PROGRAM_ARGUMENTS: args,
      ACCOUNT: xmlText(t.account),
      DATA: xmlText(t.home),
      LOG_FILE: xmlText(path.posix.join(t.home, 'relay.log')),
      STDERR: xmlText(path.posix.join(t.home, 'relay.stderr.log')),
    });
  }
  const vars = { LABEL: label, PROGRAM_ARGUMENTS: args, HOME: xmlText(t.home), STDERR: xmlText(path.posix.join(t.home, 'agent.stderr.log')) };
  if (t.scope === 'user') return renderTemplate('launchd/agent.plist', vars);
  return renderTemplate('launchd/agent.daemon.plist', { ...vars, ACCOUNT: xmlText(t.account) });
}

export function renderWinsw(t: Target): string {
  const [node, ...args] = execArgs(t);
  const vars = {
    ID: WINSW_ID[t.role],
    NODE: xmlText(node!),
    ARGUMENTS: args.map((a) => `  <argument>${xmlText(a, 'argument')}</argument>`).join('\n'),
    ACCOUNT: xmlText(t.account),
    LOG_DIR: xmlText(path.win32.join(t.home, 'logs')),
  };
  if (t.role === 'relay') return renderTemplate('winsw/relay.xml', { ...vars, DATA: xmlText(t.home) });
  return renderTemplate('winsw/agent.xml', { ...vars, HOME: xmlText(t.home) });
}

// --- plans -------------------------------------------------------------------------------------------

/** Temporary folders a service must never run from. */
export function temporaryFolders(platform: Platform, env: NodeJS.ProcessEnv = process.env): string[] {
  if (platform === 'win32') return [env.TEMP, env.TMP].filter((d): d is string => !!d);
  const dirs = new Set(['/tmp', '/var/tmp', '/dev/shm']);
  if (platform === hostPlatform()) {
    dirs.add(path.resolve(os.tmpdir()));
    try {
      dirs.add(fs.realpathSync(os.tmpdir()));
    } catch {
      // a TMPDIR that does not exist
    }
  }
  if (platform === 'darwin') dirs.add('/private/tmp').add('/private/var/folders');
  return [...dirs];
}

/**
 * `service install` refuses a node or dropwire.js under a temporary folder: the systemd system units run
 * with PrivateTmp=yes (an empty /tmp of their own), so such an ExecStart cannot start at all; elsewhere
 * the folder is emptied at some reboot. DW_TEMP_PATH says what to do instead.
 */
export function checkNotTemporary(t: Target, env: NodeJS.ProcessEnv = process.env): void {
  const p = pathFor(t.platform);
  const dirs = temporaryFolders(t.platform, env);
  for (const [what, flag, file] of [['node', '--node', t.node], ['dropwire.js', '--cli', t.cli]] as const) {
    const resolved = t.platform === hostPlatform() && fs.existsSync(file) ? fs.realpathSync(file) : file;
    const dir = dirs.find((d) => [file, resolved].some((f) => f === d || f.startsWith(d.endsWith(p.sep) ? d : d + p.sep)));
    if (!dir) continue;
    const why =
      t.platform === 'linux' && t.scope === 'system'
        ? `the systemd system unit runs with PrivateTmp=yes (a /tmp of its own, empty), so ExecStart=${file} could never start`
        : `a temporary folder is emptied at some reboot, and the service would stop starting`;
    throw new DropwireError(
      'DW_TEMP_PATH',
      `${what} is under the temporary folder ${dir}: ${why}. Install dropwire outside it (\`npm install -g .\` in the dropwire folder, or \`npm install -g dropwire-VERSION.tgz\`; see README), or pass ${flag} PATH`,
    );
  }
}

function describe(t: Target): string {
  const who = t.role === 'agent' ? 'the agent' : 'the relay';
  if (t.platform === 'linux') return `${who} as a systemd ${t.scope === 'user' ? 'user service (graphical session)' : `system service (account ${t.account})`}`;
  if (t.platform === 'darwin') return `${who} as a launchd ${t.scope === 'user' ? 'LaunchAgent' : `LaunchDaemon (account ${t.account})`}`;
  return `${who} as a Windows service through WinSW (account ${t.account})`;
}

export function installPlan(t: Target, f: Facts): Plan {
  const steps: Step[] = [];
  const notes: string[] = [];
  const started = t.role === 'relay' || f.enrolled;
  const sudo = t.scope === 'system' && t.platform !== 'win32' ? 'sudo ' : '';
  const where = t.platform === 'win32' ? ' (in an administrator prompt)' : '';
  const homeArg = t.scope === 'system' || t.home !== agentHomeDefault(t) ? ` --home ${quoteHint(t.home)}` : '';
  const scopeArg = t.scope === 'user' && t.platform === 'linux' ? ' --user' : '';
  const notEnrolled = `the agent is not enrolled yet: run \`${sudo}dropwire init TOKEN${homeArg}\`, then \`${sudo}dropwire service start${scopeArg}\`${where}`;

  if (t.platform === 'linux') {
    const sc = t.scope === 'user' ? ['systemctl', '--user'] : ['systemctl'];
    const unit = path.posix.basename(unitFile(t));
    if (t.scope === 'system') {
      steps.push({ kind: 'file', path: SYSUSERS_FILE, content: renderTemplate('systemd/dropwire.sysusers', { ACCOUNT: t.account }), mode: 0o644 });
      steps.push({ kind: 'run', argv: ['systemd-sysusers', SYSUSERS_FILE], why: `create the account ${t.account}` });
      if (t.role === 'agent') {
        steps.push({ kind: 'dir', path: t.home, mode: 0o750 });
        steps.push({ kind: 'run', argv: ['chown', `${t.account}:${t.account}`, t.home], why: 'the agent folder belongs to the service account' });
      }
    }
    steps.push({ kind: 'file', path: unitFile(t), content: renderSystemdUnit(t), mode: 0o644 });
    if (t.role === 'agent' && t.scope === 'system') steps.push({ kind: 'file', path: dropInFile(t), content: renderSaveDirsDropIn(t.home, f.saveDirs), mode: 0o644 });
    steps.push({ kind: 'run', argv: [...sc, 'daemon-reload'] });
    steps.push({ kind: 'run', argv: [...sc, 'enable', unit] });
    if (started) steps.push({ kind: 'run', argv: [...sc, 'restart', unit] });
    const ph = t.scope === 'system' ? protectHome(t) : undefined;
    if (ph?.bind.length) notes.push(`node or dropwire lives under a home folder: the unit uses ProtectHome=tmpfs and binds ${ph.bind.join(', ')} read-only (install them outside /home and /root for ProtectHome=yes)`);
    if (t.scope === 'user') {
      notes.push(
        `the unit starts with your user's service manager (default.target), that is at your first login; to start it at boot without a login (a headless host), enable lingering once: \`sudo loginctl enable-linger ${t.userName}\``,
      );
    }
    if (t.role === 'agent' && t.scope === 'system') notes.push(`CLI and service share ${t.home}: use \`--home ${t.home}\` (or DROPWIRE_HOME) with sudo for init and rule commands`);
    if (t.role === 'relay') notes.push(`add devices with \`sudo dropwire relay device add NAME --data ${t.home}${t.relay.public ? '' : ' --public HOST:PORT'}\``);
  } else if (t.platform === 'darwin') {
    const file = plistFile(t);
    const domain = launchdDomain(t);
    const label = LAUNCHD_LABEL[t.role];
    if (t.scope === 'system') {
      steps.push({ kind: 'run', argv: ['dscl', '.', '-read', `/Users/${t.account}`, 'UniqueID'], why: `the account ${t.account} must exist; create a role account first: sudo sysadminctl -addUser ${t.account} -roleAccount -UID <a free id between 200 and 400>` });
      steps.push({ kind: 'dir', path: t.home, mode: 0o750 });
      steps.push({ kind: 'run', argv: ['chown', '-R', t.account, t.home], why: 'the data folder belongs to the service account' });
    } else {
      steps.push({ kind: 'dir', path: t.home, mode: 0o700 });
    }
    steps.push({ kind: 'file', path: file, content: renderPlist(t), mode: 0o644 });
    if (t.scope === 'system') steps.push({ kind: 'run', argv: ['chown', 'root:wheel', file], why: 'launchd loads daemons only from root-owned files' });
    steps.push({ kind: 'run', argv: ['launchctl', 'bootout', `${domain}/${label}`], why: 'unload an earlier version', mayFail: true });
    if (started) steps.push({ kind: 'run', argv: ['launchctl', 'bootstrap', domain, file] });
  } else {
    const exe = winswExe(t);
    const xml = path.win32.join(winswDir(t), `${WINSW_ID[t.role]}.xml`);
    steps.push({ kind: 'dir', path: t.home, mode: 0o750 });
    steps.push({ kind: 'dir', path: winswDir(t), mode: 0o755 });
    steps.push({ kind: 'copy', path: exe, from: t.winsw ?? '<WinSW-x64.exe from https://github.com/winsw/winsw/releases (WinSW 3): pass --winsw PATH>', mode: 0o755 });
    steps.push({ kind: 'file', path: xml, content: renderWinsw(t), mode: 0o644 });
    const grantee = t.role === 'relay' ? '*S-1-5-19' : t.account.replace(/^\.\\/, '');
    steps.push({
      kind: 'run',
      argv: ['icacls', t.home, '/inheritance:r', '/grant:r', '*S-1-5-18:(OI)(CI)F', '*S-1-5-32-544:(OI)(CI)F', `${grantee}:(OI)(CI)M`, '/T'],
      why: 'only SYSTEM, administrators and the service account may read the folder',
    });
    steps.push({ kind: 'run', argv: [exe, 'uninstall'], why: 'remove an earlier version', mayFail: true });
    steps.push({ kind: 'run', argv: [exe, 'install'], why: t.role === 'agent' ? `asks for the password of ${t.account}` : 'register the service' });
    if (started) steps.push({ kind: 'run', argv: [exe, 'start'] });
    if (t.role === 'agent') notes.push(`the service runs as ${t.account}, so it sees that account's printers; choose another with --account DOMAIN\\USER`);
  }
  if (!started) notes.push(notEnrolled);
  return { title: `install: ${describe(t)}`, platform: t.platform, steps, notes };
}

export function uninstallPlan(t: Target, f: Facts): Plan {
  const steps: Step[] = [];
  const notes: string[] = [];
  if (t.platform === 'linux') {
    const sc = t.scope === 'user' ? ['systemctl', '--user'] : ['systemctl'];
    const unit = path.posix.basename(unitFile(t));
    steps.push({ kind: 'run', argv: [...sc, 'disable', '--now', unit], mayFail: true });
    steps.push({ kind: 'remove', path: unitFile(t) });
    if (t.role === 'agent' && t.scope === 'system') {
      steps.push({ kind: 'remove', path: dropInFile(t) });
      steps.push({ kind: 'rmdir', path: path.posix.dirname(dropInFile(t)) });
    }
    if (t.scope === 'system' && !f.otherInstalled) steps.push({ kind: 'remove', path: SYSUSERS_FILE });
    steps.push({ kind: 'run', argv: [...sc, 'daemon-reload'] });
    if (t.scope === 'system') notes.push(`the account ${t.account} is kept (files may still belong to it): remove it with \`userdel ${t.account}\``);
  } else if (t.platform === 'darwin') {
    steps.push({ kind: 'run', argv: ['launchctl', 'bootout', `${launchdDomain(t)}/${LAUNCHD_LABEL[t.role]}`], mayFail: true });
    steps.push({ kind: 'remove', path: plistFile(t) });
  } else {
    const exe = winswExe(t);
    steps.push({ kind: 'run', argv: [exe, 'stop'], mayFail: true });
    steps.push({ kind: 'run', argv: [exe, 'uninstall'] });
    steps.push({ kind: 'remove', path: path.win32.join(winswDir(t), `${WINSW_ID[t.role]}.xml`) });
    steps.push({ kind: 'remove', path: exe });
    steps.push({ kind: 'rmdir', path: winswDir(t) });
  }
  notes.push(`kept ${t.home} (${t.role === 'agent' ? 'config, device key, journal, log' : 'store and blobs'}); delete it to forget this ${t.role === 'agent' ? 'device' : 'relay'}`);
  return { title: `uninstall: ${describe(t)}`, platform: t.platform, steps, notes };
}

export type ControlAction = 'start' | 'stop' | 'status';

export function controlPlan(t: Target, action: ControlAction): Plan {
  const steps: Step[] = [];
  if (t.platform === 'linux') {
    const unit = path.posix.basename(unitFile(t));
    const sc = t.scope === 'user' ? ['systemctl', '--user'] : ['systemctl'];
    steps.push({ kind: 'run', argv: action === 'status' ? [...sc, 'status', '--no-pager', unit] : [...sc, action, unit] });
  } else if (t.platform === 'darwin') {
    const target = `${launchdDomain(t)}/${LAUNCHD_LABEL[t.role]}`;
    if (action === 'start') {
      steps.push({ kind: 'run', argv: ['launchctl', 'bootstrap', launchdDomain(t), plistFile(t)], why: 'load it if it is not loaded', mayFail: true });
      steps.push({ kind: 'run', argv: ['launchctl', 'kickstart', target] });
    } else if (action === 'stop') steps.push({ kind: 'run', argv: ['launchctl', 'bootout', target] });
    else steps.push({ kind: 'run', argv: ['launchctl', 'print', target] });
  } else {
    steps.push({ kind: 'run', argv: [winswExe(t), action] });
  }
  return { title: `${action}: ${describe(t)}`, platform: t.platform, steps, notes: [] };
}

// --- facts -------------------------------------------------------------------------------------------

/** Maps a target path into --root (a Windows `C:\x` becomes `ROOT/C/x`). */
export function underRoot(p: string, root: string | undefined, platform: Platform): string {
  if (!root) return p;
  if (platform === 'win32') {
    const m = /^([A-Za-z]):\\(.*)$/.exec(p);
    const parts = m ? [m[1]!.toUpperCase(), ...m[2]!.split('\\')] : p.split('\\');
    return path.join(root, ...parts.filter(Boolean));
  }
  return path.join(root, p);
}

/** Reads what a plan depends on from the target (under `root` when given). */
export function gatherFacts(t: Target, root?: string): Facts {
  const at = (p: string) => underRoot(p, root, t.platform);
  const cfgFile = at(pathFor(t.platform).join(t.home, 'config.json'));
  let saveDirs: string[] = [];
  let enrolled = false;
  try {
    const cfg = JSON.parse(fs.readFileSync(cfgFile, 'utf8')) as { name?: unknown; rules?: { action?: { type?: unknown; dir?: unknown } }[] };
    enrolled = typeof cfg.name === 'string';
    saveDirs = (Array.isArray(cfg.rules) ? cfg.rules : []).flatMap((r) => (r?.action?.type === 'save' && typeof r.action.dir === 'string' ? [r.action.dir] : []));
  } catch {
    // no config yet, or a broken one: the agent reports that itself
  }
  let otherInstalled = false;
  if (t.platform === 'linux' && t.scope === 'system') {
    const other: Role = t.role === 'agent' ? 'relay' : 'agent';
    otherInstalled = fs.existsSync(at(unitFile({ ...t, role: other })));
  }
  return { enrolled, saveDirs, otherInstalled };
}

/** Which scope of the role is installed when none was asked for: the platform default, else the other one. */
export function detectScope(o: ServiceOptions, root?: string): Scope | undefined {
  if (o.scope || o.role === 'relay') return o.scope;
  const platform = o.platform ?? hostPlatform();
  if (platform === 'win32') return undefined;
  const preferred: Scope = platform === 'darwin' ? 'user' : 'system';
  const other: Scope = preferred === 'user' ? 'system' : 'user';
  const installed = (scope: Scope) => serviceFiles(resolveTarget({ ...o, scope })).some((f) => fs.existsSync(underRoot(f, root, platform)));
  return !installed(preferred) && installed(other) ? other : preferred;
}

function agentHomeDefault(t: Target): string {
  return t.platform === hostPlatform() ? agentHome() : userAgentHome(t.platform, t.userHome);
}

function quoteHint(p: string): string {
  return /[\s'"]/.test(p) ? `"${p}"` : p;
}
