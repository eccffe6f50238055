import type { Command } from 'commander';
import { DropwireError } from '../shared/errors.js';
import { storeOpt } from './relay-cluster.js';

/**
 * `relay drain`, `relay rebalance`, `relay move` (README "Moving agents between nodes"): commands to the nodes
 * through Redis, so they work from any machine that reaches it.
 */

interface MoveCliOptions {
  store: string;
  rate?: string;
  timeout?: string;
  json?: boolean;
}

const rateOf = (o: MoveCliOptions) => positive(o.rate ?? '50', '--rate');
const timeoutOf = (o: MoveCliOptions) => positive(o.timeout ?? '10', '--timeout') * 1000;

function positive(v: string, flag: string): number {
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new DropwireError('DW_BAD_ARGUMENT', `${flag} must be a positive number, got '${v}'`);
  return n;
}

async function withRedis<T>(url: string, fn: (redis: import('ioredis').Redis, sub: import('ioredis').Redis) => Promise<T>): Promise<T> {
  const { openRedis } = await import('../relay/cluster/connect.js');
  const redis = await openRedis(url, { name: 'dropwire:cli' });
  const sub = await openRedis(url, { subscriber: true, name: 'dropwire:cli:sub' });
  try {
    return await fn(redis, sub);
  } finally {
    sub.disconnect();
    redis.disconnect();
  }
}

type Summary = import('../relay/cluster/drain.js').MoveSummary;
type Reply = import('../relay/cluster/control.js').Reply;

function printResult(r: Extract<Reply, { t: 'result' }>, json: boolean | undefined): void {
  if (json) return;
  const x = r.r;
  console.log(`${x.device}\t${x.outcome}${x.code ? ` (${x.code})` : ''}\t${r.node} -> ${x.to}\t${x.ms} ms`);
}

function printSummary(s: Summary): void {
  console.log(`${s.node}: ${s.moved} moved in ${(s.durationMs / 1000).toFixed(1)} s; bytes re-sent ${s.resentBytes} (unacknowledged at the swaps: ${s.unacknowledgedBytes})`);
  if (s.refused.length) console.log(`refused (disconnected or kept): ${s.refused.join(', ')}`);
  if (s.timedOut.length) console.log(`timed out: ${s.timedOut.join(', ')}`);
  if (s.unsupported.length) console.log(`cannot be redirected (older agents): ${s.unsupported.join(', ')}`);
  if (s.failed.length) console.log(`failed: ${s.failed.join(', ')}`);
}

function fail(r: Reply): never {
  const e = r as Extract<Reply, { t: 'error' }>;
  throw new DropwireError(e.code, e.message);
}

/** Rounds of moves `relay rebalance` makes at most before it reports what it reached. */
const REBALANCE_ROUNDS = 3;

export function registerMoveCommands(relay: Command): void {
  relay
    .command('drain')
    .description('stop a node taking agents, move its agents to the other nodes without a gap, and let it exit once empty')
    .requiredOption('--node <name>', 'the node to drain')
    .option('--to <name>', 'move every agent to this node (default: the least loaded nodes)')
    .option('--rate <n>', 'agents moved per second (default 50)')
    .option('--timeout <s>', 'seconds each agent has to follow its redirect (default 10)')
    .option('--json', 'JSON output (the summary)')
    .addOption(storeOpt().makeOptionMandatory())
    .action(async (o: MoveCliOptions & { node: string; to?: string }) => {
      const { sendCommand } = await import('../relay/cluster/control.js');
      const { listNodes } = await import('../relay/cluster/registry.js');
      const { targetsFor } = await import('../relay/cluster/drain.js');
      await withRedis(o.store, async (redis, sub) => {
        const nodes = await listNodes(redis);
        const node = nodes.find((n) => n.name === o.node && n.alive);
        if (!node) throw new DropwireError('DW_NO_SUCH_NODE', `no alive node '${o.node}' in the cluster (see 'dropwire relay nodes')`);
        if ((await targetsFor(redis, o.node, o.to)).length === 0) {
          throw new DropwireError('DW_NOWHERE_TO_GO', o.to ? `node '${o.to}' is not an alive, ready node of the cluster` : `nowhere to go: '${o.node}' is the only node of the cluster`);
        }
        const timeoutMs = timeoutOf(o);
        const r = await sendCommand({ redis, sub, node: o.node, cmd: { op: 'drain', ...(o.to ? { to: o.to } : {}), rate: rateOf(o), timeoutMs }, silenceMs: timeoutMs + 15_000, onReply: (x) => x.t === 'result' && printResult(x, o.json) });
        if (r.t !== 'done') fail(r);
        if (o.json) console.log(JSON.stringify(r.summary));
        else printSummary(r.summary);
      });
    });

  relay
    .command('move')
    .description('move one agent to another node without a gap')
    .requiredOption('--device <name>', 'the device to move')
    .requiredOption('--to <name>', 'the node to move it to')
    .option('--timeout <s>', 'seconds the agent has to follow its redirect (default 10)')
    .option('--json', 'JSON output (the summary)')
    .addOption(storeOpt().makeOptionMandatory())
    .action(async (o: MoveCliOptions & { device: string; to: string }) => {
      const { sendCommand } = await import('../relay/cluster/control.js');
      const { keys } = await import('../relay/cluster/keys.js');
      await withRedis(o.store, async (redis, sub) => {
        const holder = await redis.hget(keys.owner(o.device), 'node');
        if (!holder) throw new DropwireError('DW_NOT_CONNECTED', `device '${o.device}' is not connected to any node`);
        if (holder === o.to) throw new DropwireError('DW_ALREADY_THERE', `device '${o.device}' is on '${o.to}' already`);
        const timeoutMs = timeoutOf(o);
        const r = await sendCommand({ redis, sub, node: holder, cmd: { op: 'move', to: o.to, device: o.device, rate: 1, timeoutMs }, silenceMs: timeoutMs + 15_000, onReply: (x) => x.t === 'result' && printResult(x, o.json) });
        if (r.t !== 'done') fail(r);
        if (o.json) console.log(JSON.stringify(r.summary));
        else printSummary(r.summary);
      });
    });

  relay
    .command('rebalance')
    .description('move agents from the busiest nodes until every node is within 10% of the mean')
    .option('--rate <n>', 'agents moved per second per node (default 50)')
    .option('--timeout <s>', 'seconds each agent has to follow its redirect (default 10)')
    .option('--json', 'JSON output (counts before and after, and each node\'s summary)')
    .addOption(storeOpt().makeOptionMandatory())
    .action(async (o: MoveCliOptions) => {
      const { sendCommand } = await import('../relay/cluster/control.js');
      const { listNodes } = await import('../relay/cluster/registry.js');
      const { planRebalance, balanced } = await import('../relay/cluster/rebalance.js');
      await withRedis(o.store, async (redis, sub) => {
        const counts = async () => {
          const nodes = (await listNodes(redis)).filter((n) => n.alive && !n.draining);
          const m = new Map<string, number>();
          for (const n of nodes) {
            const r = await sendCommand({ redis, sub, node: n.name, cmd: { op: 'status' }, silenceMs: 5_000 });
            if (r.t === 'status') m.set(n.name, r.connected);
          }
          return m;
        };
        // The counts follow a hand-over once the old connection has closed: give them a few seconds.
        const settled = async (): Promise<Map<string, number>> => {
          let m = await counts();
          for (let i = 0; i < 10 && !balanced(m); i++) {
            await new Promise((r) => setTimeout(r, 500));
            m = await counts();
          }
          return m;
        };
        const before = await counts();
        const timeoutMs = timeoutOf(o);
        const summaries: Summary[] = [];
        const plan: ReturnType<typeof planRebalance> = [];
        let after = before;
        // Rounds until balanced: an agent that reconnected elsewhere meanwhile is counted again next round.
        for (let round = 0; round < REBALANCE_ROUNDS && !balanced(after); round++) {
          const moves = planRebalance(after);
          if (moves.length === 0) break;
          plan.push(...moves);
          // One command per source node; each moves its share to the least loaded targets it is given.
          const bySource = new Map<string, { to: string; count: number }[]>();
          for (const m of moves) bySource.set(m.from, [...(bySource.get(m.from) ?? []), { to: m.to, count: m.count }]);
          await Promise.all(
            [...bySource].map(async ([from, list]) => {
              for (const m of list) {
                const r = await sendCommand({ redis, sub, node: from, cmd: { op: 'move', to: m.to, count: m.count, rate: rateOf(o), timeoutMs }, silenceMs: timeoutMs + 15_000, onReply: (x) => x.t === 'result' && printResult(x, o.json) });
                if (r.t !== 'done') fail(r);
                summaries.push(r.summary);
              }
            }),
          );
          after = await settled();
        }
        const ok = balanced(after);
        if (o.json) {
          console.log(JSON.stringify({ before: Object.fromEntries(before), plan, after: Object.fromEntries(after), balanced: ok, summaries }));
          return;
        }
        for (const s of summaries) printSummary(s);
        console.log(`before: ${[...before].map(([n, c]) => `${n} ${c}`).join(', ')}`);
        console.log(`after:  ${[...after].map(([n, c]) => `${n} ${c}`).join(', ')}${ok ? ' (within 10% of the mean)' : ' (NOT within 10% of the mean: some agents refused or cannot be redirected)'}`);
      });
    });
}
