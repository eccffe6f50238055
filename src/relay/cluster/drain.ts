import type { Redis } from 'ioredis';
import { DropwireError } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';
import type { Hub } from '../hub.js';
import { keys } from './keys.js';
import type { MoveResult, Redirects } from './redirect.js';
import { listNodes, setNodeState, type NodeInfo } from './registry.js';

/** What `relay drain` and `relay rebalance` report for the agents one node moved. */
export interface MoveSummary {
  node: string;
  moved: number;
  refused: string[];
  timedOut: string[];
  /** Agents that do not understand REDIRECT (older versions): only a plain disconnect moves them. */
  unsupported: string[];
  failed: string[];
  /** Bytes the targets sent again after the swaps (PROTOCOL 7.16 step 8; goal 0). */
  resentBytes: number;
  /** Bytes the agents had not acknowledged at the swaps (the most that could have been sent again). */
  unacknowledgedBytes: number;
  durationMs: number;
}

/** The nodes agents may be moved to: alive, not draining, not `self`, and `only` when given. */
export async function targetsFor(redis: Redis, self: string, only?: string): Promise<NodeInfo[]> {
  const nodes = await listNodes(redis);
  return nodes.filter((n) => n.alive && !n.draining && n.name !== self && (only === undefined || n.name === only));
}

/**
 * Moves agents of this node to `targets` (least loaded first), starting `rate` moves per second, each with its
 * own time-out; calls `progress` for each result. Shared by drain and rebalance (`count` agents at most).
 */
export async function moveAgents(o: {
  hub: Hub;
  redirects: Redirects;
  redis: Redis;
  node: string;
  targets: NodeInfo[];
  rate: number;
  timeoutMs: number;
  count?: number;
  device?: string;
  progress: (r: MoveResult) => void;
}): Promise<MoveSummary> {
  const started = Date.now();
  const load = new Map(o.targets.map((t) => [t.name, t.connected]));
  const byName = new Map(o.targets.map((t) => [t.name, t]));
  let devices = o.hub.liveDevices();
  if (o.device !== undefined) devices = devices.filter((d) => d.device === o.device);
  // Those that can be redirected first: a rebalance of `count` takes only them.
  devices.sort((a, b) => Number(b.redirectable) - Number(a.redirectable));
  if (o.count !== undefined) devices = devices.filter((d) => d.redirectable).slice(0, o.count);
  const results: MoveResult[] = [];
  const running: Promise<void>[] = [];
  const gap = 1000 / Math.max(0.001, o.rate);
  for (const [i, d] of devices.entries()) {
    if (i > 0) await new Promise((r) => setTimeout(r, gap));
    let target: string | undefined;
    for (const [name, n] of load) if (target === undefined || n < load.get(target)!) target = name;
    if (target === undefined) break;
    const t = byName.get(target)!;
    load.set(target, load.get(target)! + 1);
    running.push(
      o.redirects.move(d.device, t.name, t.agents, o.timeoutMs).then((r) => {
        if (r.outcome !== 'moved') load.set(target, load.get(target)! - 1);
        results.push(r);
        o.progress(r);
      }),
    );
  }
  await Promise.all(running);
  // The old connections deliver what they carried before the agents swap and tell their counts.
  await o.hub.flushed(o.timeoutMs);
  const moved = results.filter((r) => r.outcome === 'moved');
  const counted = await countResent(o.redis, moved.map((r) => r.rid!), o.timeoutMs);
  const pick = (outcome: MoveResult['outcome']) => results.filter((r) => r.outcome === outcome).map((r) => r.device).sort();
  return {
    node: o.node,
    moved: moved.length,
    refused: pick('refused'),
    timedOut: pick('timeout'),
    unsupported: pick('unsupported'),
    failed: [...pick('failed'), ...pick('gone')].sort(),
    ...counted,
    durationMs: Date.now() - started,
  };
}

/** Sums what the targets recorded per request (they record it when the agent's first count arrives). */
async function countResent(redis: Redis, rids: string[], ms: number): Promise<{ resentBytes: number; unacknowledgedBytes: number }> {
  let resentBytes = 0;
  let unacknowledgedBytes = 0;
  let missing = rids;
  for (let i = 0, tries = Math.max(40, Math.ceil(ms / 50)); i < tries && missing.length > 0; i++) {
    const pipe = redis.pipeline();
    for (const rid of missing) pipe.hmget(keys.redirect(rid), 'resent', 'unacked');
    const rows = (await pipe.exec()) ?? [];
    const still: string[] = [];
    rows.forEach(([, v], j) => {
      const [resent, unacked] = (v as (string | null)[]) ?? [];
      if (resent === null || resent === undefined) still.push(missing[j]!);
      else {
        resentBytes += Number(resent);
        unacknowledgedBytes += Number(unacked ?? 0);
      }
    });
    missing = still;
    if (missing.length > 0) await new Promise((r) => setTimeout(r, 50));
  }
  return { resentBytes, unacknowledgedBytes };
}

/**
 * `relay drain` on this node: takes no new agents (`/healthz` 503 `draining`), moves every agent to the other
 * nodes, then disconnects the ones that stayed (refused, timed out, or too old to be redirected).
 */
export async function drainNode(o: {
  hub: Hub;
  redirects: Redirects;
  redis: Redis;
  node: string;
  to?: string;
  rate: number;
  timeoutMs: number;
  log: Logger;
  progress: (r: MoveResult) => void;
}): Promise<MoveSummary> {
  const targets = await targetsFor(o.redis, o.node, o.to);
  if (targets.length === 0) {
    throw new DropwireError('DW_NOWHERE_TO_GO', o.to ? `node '${o.to}' is not an alive, ready node of the cluster` : `nowhere to go: '${o.node}' is the only ready node of the cluster`);
  }
  o.hub.draining = true;
  await setNodeState(o.redis, o.node, 'draining');
  o.log.info({ targets: targets.map((t) => t.name), rate: o.rate, agents: o.hub.liveDevices().length }, 'draining: moving every agent to the other nodes');
  const summary = await moveAgents({ ...o, targets });
  const stay = [...summary.refused, ...summary.timedOut, ...summary.unsupported, ...summary.failed];
  for (const device of stay) o.hub.retireSession(device, 'DW_NODE_DRAINING');
  for (const { device } of o.hub.liveDevices()) o.hub.retireSession(device, 'DW_NODE_DRAINING'); // came meanwhile
  o.log.info({ ...summary }, 'drained');
  return summary;
}
