/** One step of a rebalance: move `count` agents from node `from` to node `to`. */
export interface RebalanceMove {
  from: string;
  to: string;
  count: number;
}

/** How far from the mean a node may be after a rebalance (`relay rebalance`: 10%). */
export const REBALANCE_TOLERANCE = 0.1;

/** True when every node's count is within `tolerance` of the mean (or within one agent of it). */
export function balanced(counts: Map<string, number>, tolerance = REBALANCE_TOLERANCE): boolean {
  const values = [...counts.values()];
  if (values.length === 0) return true;
  const mean = values.reduce((a, b) => a + b, 0) / values.length;
  return values.every((v) => Math.abs(v - mean) <= Math.max(tolerance * mean, mean % 1 === 0 ? 0 : 1));
}

/**
 * The moves that bring every node to the mean (the rest of the division goes to the busiest nodes, so the
 * fewest agents move): from the busiest nodes to the least loaded, greedily. Pure.
 */
export function planRebalance(counts: Map<string, number>): RebalanceMove[] {
  const nodes = [...counts.entries()].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
  const n = nodes.length;
  if (n < 2) return [];
  const total = nodes.reduce((a, [, c]) => a + c, 0);
  const base = Math.floor(total / n);
  const extra = total % n;
  const want = new Map(nodes.map(([name], i) => [name, base + (i < extra ? 1 : 0)]));
  const over = nodes.map(([name, c]) => ({ name, left: c - want.get(name)! })).filter((x) => x.left > 0);
  const under = nodes.map(([name, c]) => ({ name, left: want.get(name)! - c })).filter((x) => x.left > 0).reverse();
  const moves: RebalanceMove[] = [];
  for (const o of over) {
    for (const u of under) {
      if (o.left === 0) break;
      const k = Math.min(o.left, u.left);
      if (k <= 0) continue;
      moves.push({ from: o.name, to: u.name, count: k });
      o.left -= k;
      u.left -= k;
    }
  }
  return moves;
}
