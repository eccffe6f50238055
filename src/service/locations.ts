import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { agentHome } from '../agent/config.js';
import { controlPath } from '../agent/control.js';

/** Names and places of dropwire's services on each platform. */

export type Platform = 'linux' | 'darwin' | 'win32';
export type Role = 'agent' | 'relay';
export type Scope = 'system' | 'user';

export const PLATFORMS: readonly Platform[] = ['linux', 'darwin', 'win32'];

/** The account system services run as, unless --account names another. */
export const SERVICE_ACCOUNT = { linux: 'dropwire', darwin: '_dropwire' } as const;
export const SYSTEMD_UNIT = { agent: 'dropwire-agent.service', relay: 'dropwire-relay.service' } as const;
export const SAVE_DIRS_DROPIN = 'save-dirs.conf';
export const LAUNCHD_LABEL = { agent: 'com.dropwire.agent', relay: 'com.dropwire.relay' } as const;
export const WINSW_ID = { agent: 'dropwire-agent', relay: 'dropwire-relay' } as const;

export function pathFor(platform: Platform): path.PlatformPath {
  return platform === 'win32' ? path.win32 : path.posix;
}

function programData(env: NodeJS.ProcessEnv): string {
  return env.ProgramData || env.PROGRAMDATA || 'C:\\ProgramData';
}

export function programFiles(env: NodeJS.ProcessEnv): string {
  return env.ProgramFiles || env.PROGRAMFILES || 'C:\\Program Files';
}

/** The one config location of a system install: the CLI and the service both use it (DROPWIRE_HOME). */
export function systemHome(platform: Platform, env: NodeJS.ProcessEnv = process.env): string {
  if (platform === 'win32') return path.win32.join(programData(env), 'dropwire');
  if (platform === 'darwin') return '/Library/Application Support/dropwire';
  return '/etc/dropwire';
}

/** Where a relay installed as a service keeps its data (`relay start --data`). */
export function relayDataDir(platform: Platform, env: NodeJS.ProcessEnv = process.env): string {
  if (platform === 'win32') return path.win32.join(programData(env), 'dropwire-relay');
  if (platform === 'darwin') return '/Library/Application Support/dropwire-relay';
  return '/var/lib/dropwire-relay';
}

/** The per-user agent home on `platform` (what `agentHome()` picks there when nothing is set). */
export function userAgentHome(platform: Platform, userHome: string, env: NodeJS.ProcessEnv = process.env): string {
  const p = pathFor(platform);
  if (platform === 'win32') return p.join(env.APPDATA ?? p.join(userHome, 'AppData', 'Roaming'), 'dropwire');
  if (platform === 'darwin') return p.join(userHome, 'Library', 'Application Support', 'dropwire');
  return p.join(env.XDG_CONFIG_HOME ?? p.join(userHome, '.config'), 'dropwire');
}

export function hostPlatform(): Platform {
  const p = process.platform;
  return p === 'win32' || p === 'darwin' ? p : 'linux';
}

/**
 * The agent home for commands that talk to an installed agent (`status`, `logs`): --home or
 * DROPWIRE_HOME when given; else the per-user home, unless only the system install is set up or
 * running, then the system home (so `sudo dropwire status` finds the service's agent).
 */
export function resolveAgentHome(explicit?: string): string {
  const mine = agentHome(explicit);
  if (explicit || process.env.DROPWIRE_HOME) return mine;
  const system = systemHome(hostPlatform());
  const present = (home: string) => fs.existsSync(path.join(home, 'config.json')) || (process.platform !== 'win32' && fs.existsSync(controlPath(home)));
  return !present(mine) && present(system) ? system : mine;
}

/** The installed package: the folder with package.json and service-templates/. */
export function packageRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 8; i++) {
    if (fs.existsSync(path.join(dir, 'service-templates')) && fs.existsSync(path.join(dir, 'package.json'))) return dir;
    dir = path.dirname(dir);
  }
  throw new Error('cannot find the dropwire package folder (service-templates/ next to package.json)');
}

export function templatesDir(): string {
  return path.join(packageRoot(), 'service-templates');
}

/** This machine's user, for --user installs. */
export function currentUser(): { home: string; uid: number; name: string } {
  const u = os.userInfo();
  return { home: os.homedir(), uid: u.uid, name: u.username };
}
