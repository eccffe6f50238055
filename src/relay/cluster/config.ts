import fs from 'node:fs';
import path from 'node:path';
import type { Redis } from 'ioredis';
import { toHex } from '../../protocol/bytes.js';
import { nodeCrypto } from '../../protocol/crypto-node.js';
import type { KeyPair } from '../../protocol/crypto.js';
import { parseHostPort } from '../../shared/enrollment.js';
import { loadOrCreateKeyPair } from '../../transport/identity.js';
import { ClusterCode, ClusterError } from './errors.js';
import { keys } from './keys.js';

/** What every node and admin command reads of the cluster: the relay's public key and the agents' addresses. */
export interface ClusterConfig {
  publicKey: string;
  /** The addresses agents dial (HOST:PORT), all written into every enrollment token. */
  agents: string[];
  createdAt: number;
}

/** Writes the cluster's description once; a second init on the same database is refused. */
const INIT = `
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'publicKey', ARGV[1], 'agents', ARGV[2], 'createdAt', ARGV[3])
return 1`;

/**
 * `relay cluster init`: the cluster's key pair in `DIR/relay.key` (an existing one is kept: a single relay
 * becoming a cluster keeps its enrolled agents), its public key and the agents' addresses in Redis. The
 * private key never leaves the file.
 */
/** `--public A1,A2,…`: the agents' addresses, each HOST:PORT; at least one. */
export function agentAddresses(list: string[] | string): string[] {
  const agents = (typeof list === 'string' ? list.split(',') : list).map((s) => s.trim()).filter(Boolean);
  if (agents.length === 0) throw new ClusterError(ClusterCode.BAD_ARGUMENT, '--public needs at least one HOST:PORT');
  for (const a of agents) parseHostPort(a, '--public');
  return agents;
}

export async function initCluster(redis: Redis, o: { dataDir: string; agents: string[]; now?: number }): Promise<ClusterConfig & { keyFile: string }> {
  o = { ...o, agents: agentAddresses(o.agents) };
  fs.mkdirSync(o.dataDir, { recursive: true, mode: 0o700 });
  const keyFile = path.join(o.dataDir, 'relay.key');
  const pair = loadOrCreateKeyPair(keyFile, nodeCrypto);
  const cfg: ClusterConfig = { publicKey: toHex(pair.publicKey), agents: o.agents, createdAt: o.now ?? Date.now() };
  const done = (await redis.eval(INIT, 1, keys.cluster, cfg.publicKey, JSON.stringify(cfg.agents), String(cfg.createdAt))) as number;
  if (done !== 1) {
    const existing = await readClusterConfig(redis);
    throw new ClusterError(ClusterCode.ALREADY_INITIALISED, `this Redis database already holds a dropwire cluster (relay key ${existing?.publicKey.slice(0, 16) ?? '?'}…)`);
  }
  return { ...cfg, keyFile };
}

export async function readClusterConfig(redis: Redis): Promise<ClusterConfig | undefined> {
  const h = await redis.hgetall(keys.cluster);
  if (!h.publicKey) return undefined;
  return { publicKey: h.publicKey, agents: JSON.parse(h.agents ?? '[]') as string[], createdAt: Number(h.createdAt ?? 0) };
}

export async function requireClusterConfig(redis: Redis): Promise<ClusterConfig> {
  const cfg = await readClusterConfig(redis);
  if (!cfg) throw new ClusterError(ClusterCode.NOT_INITIALISED, 'this Redis database holds no dropwire cluster: run `dropwire relay cluster init` first');
  return cfg;
}

/**
 * A node's key file must hold the cluster's key: a node with another key could not answer the agents (they
 * pinned the cluster's key), so it refuses to start instead.
 */
export function checkNodeKey(cfg: ClusterConfig, keyFile: string): KeyPair {
  if (!fs.existsSync(keyFile)) throw new ClusterError(ClusterCode.KEY_MISMATCH, `no key file at ${keyFile}: copy the cluster's relay.key there`);
  const pair = loadOrCreateKeyPair(keyFile, nodeCrypto);
  if (toHex(pair.publicKey) !== cfg.publicKey) {
    throw new ClusterError(ClusterCode.KEY_MISMATCH, `${keyFile} is not this cluster's key (its public key ${toHex(pair.publicKey).slice(0, 16)}…, the cluster's ${cfg.publicKey.slice(0, 16)}…)`);
  }
  return pair;
}
