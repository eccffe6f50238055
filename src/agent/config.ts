import { createHash } from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import fs from 'node:fs';
import { DropwireError } from '../shared/errors.js';
import { parseRelayList, parseTransportMode, type TransportMode } from '../transport/address.js';
import { validateRules, type Rule } from './rules.js';

export interface AgentConfig {
  /** This device's name at the relay. */
  name: string;
  /** The first of `relays` (what older code and configs call the relay address). */
  relay: string;
  /** Relay addresses the agent dials: HOST:PORT (TCP), ws:// or wss:// URLs (an old config's single `relay`). */
  relays: string[];
  /** tcp, wss, or auto (TCP first, then WSS): README "Reaching the relay". */
  transport: TransportMode;
  /** HTTP(S) proxy URL for WebSocket addresses (else HTTPS_PROXY / NO_PROXY). */
  proxy?: string;
  /** PEM file of a private CA the relay's certificate comes from. */
  ca?: string;
  /** The relay's public key (hex), pinned at enrollment. */
  relayKey: string;
  rules: Rule[];
  /** What happens to the spooled file after its handler: removed, or kept in the spool. */
  retention: 'remove' | 'keep';
  /** False: refuse every REDIRECT to another relay node (PROTOCOL 7.17); default true. */
  redirects?: boolean;
}

/** The agent's folder: --home, DROPWIRE_HOME, or a per-user default. */
export function agentHome(explicit?: string): string {
  if (explicit) return path.resolve(explicit);
  if (process.env.DROPWIRE_HOME) return path.resolve(process.env.DROPWIRE_HOME);
  const home = os.homedir();
  if (process.platform === 'win32') return path.join(process.env.APPDATA ?? path.join(home, 'AppData', 'Roaming'), 'dropwire');
  if (process.platform === 'darwin') return path.join(home, 'Library', 'Application Support', 'dropwire');
  return path.join(process.env.XDG_CONFIG_HOME ?? path.join(home, '.config'), 'dropwire');
}

export const paths = (home: string) => ({
  config: path.join(home, 'config.json'),
  key: path.join(home, 'device.key'),
  journal: path.join(home, 'journal.db'),
  spool: path.join(home, 'spool'),
  inbox: path.join(home, 'inbox'),
  log: path.join(home, 'agent.log'),
  /** The relay address that worked last (tried first). */
  route: path.join(home, 'route.json'),
});

/** Reads and checks the whole config; a bad field is named (DW_BAD_CONFIG) and nothing is changed. */
export function loadAgentConfig(home: string): AgentConfig {
  // Read plainly (writes go through `conf`, see config-store.ts); a broken file is reported, never touched.
  const file = paths(home).config;
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') raw = {};
    else throw new DropwireError('DW_BAD_CONFIG', `${file}: not valid JSON (${(err as Error).message}); the file was left as it is`, { cause: err });
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new DropwireError('DW_BAD_CONFIG', `${file}: must be a JSON object`);
  const bad = (field: string, why: string) => new DropwireError('DW_BAD_CONFIG', `${file}: field '${field}' ${why}`);
  if (raw.name === undefined && raw.relay === undefined && raw.relays === undefined) {
    throw new DropwireError('DW_NOT_ENROLLED', `no agent is set up in ${home}: run 'dropwire init TOKEN' first`);
  }
  if (typeof raw.name !== 'string' || raw.name.length === 0) throw bad('name', 'must be a non-empty string');
  const relayField = raw.relays !== undefined ? 'relays' : 'relay';
  const relayValue = raw.relays ?? raw.relay;
  if (!(typeof relayValue === 'string' || (Array.isArray(relayValue) && relayValue.every((r) => typeof r === 'string')))) throw bad(relayField, 'must be an address or a list of them');
  let relays: string[];
  try {
    relays = parseRelayList(relayValue as string | string[], relayField).map((a) => a.text);
  } catch (err) {
    throw bad(relayField, `has a bad address: ${(err as Error).message}`);
  }
  let transport: TransportMode;
  try {
    transport = parseTransportMode(raw.transport === undefined ? undefined : String(raw.transport));
  } catch {
    throw bad('transport', "must be 'tcp', 'wss' or 'auto'");
  }
  if (raw.proxy !== undefined && typeof raw.proxy !== 'string') throw bad('proxy', 'must be a URL');
  if (raw.ca !== undefined && typeof raw.ca !== 'string') throw bad('ca', 'must be the path of a PEM file');
  if (typeof raw.relayKey !== 'string' || !/^[0-9a-f]{64}$/.test(raw.relayKey)) throw bad('relayKey', 'must be 64 hex digits');
  const retention = raw.retention ?? 'remove';
  if (retention !== 'remove' && retention !== 'keep') throw bad('retention', "must be 'remove' or 'keep'");
  if (raw.redirects !== undefined && typeof raw.redirects !== 'boolean') throw bad('redirects', 'must be true or false');
  let rules: Rule[];
  try {
    rules = validateRules(raw.rules ?? []);
  } catch (err) {
    throw new DropwireError('DW_BAD_CONFIG', `${file}: ${(err as Error).message}`, { cause: err });
  }
  return {
    name: raw.name,
    relay: relays[0]!,
    relays,
    transport,
    ...(raw.proxy ? { proxy: raw.proxy as string } : {}),
    ...(raw.ca ? { ca: raw.ca as string } : {}),
    relayKey: raw.relayKey,
    rules,
    retention,
    ...(raw.redirects === false ? { redirects: false } : {}),
  };
}

/**
 * A short fingerprint of a rule list as validated (defaults filled in): the CLI compares the one it wrote with
 * the one the running agent answers after a reload, to know that the agent has exactly these rules.
 */
export function rulesVersion(rules: Rule[]): string {
  return createHash('sha256').update(JSON.stringify(rules)).digest('hex').slice(0, 16);
}
