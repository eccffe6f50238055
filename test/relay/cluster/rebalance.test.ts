import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { balanced, planRebalance } from '../../../src/relay/cluster/rebalance.js';

/** Applies a plan to the counts. */
function apply(counts: Map<string, number>, plan: ReturnType<typeof planRebalance>): Map<string, number> {
  const out = new Map(counts);
  for (const m of plan) {
    out.set(m.from, out.get(m.from)! - m.count);
    out.set(m.to, out.get(m.to)! + m.count);
  }
  return out;
}

describe('relay rebalance: the plan', () => {
  it('a fourth node joining three busy ones: each ends at the mean, moves only from the busiest', () => {
    const counts = new Map([['node1', 7], ['node2', 2], ['node3', 3], ['node4', 0]]);
    const plan = planRebalance(counts);
    expect(plan).toEqual([{ from: 'node1', to: 'node4', count: 3 }, { from: 'node1', to: 'node2', count: 1 }]);
    expect([...apply(counts, plan).values()]).toEqual([3, 3, 3, 3]);
    expect(balanced(apply(counts, plan))).toBe(true);
    expect(balanced(counts)).toBe(false);
  });

  it('any counts: every node ends within one agent of the mean (within 10% when the mean is 10 or more), moving the fewest agents, none to itself', () => {
    fc.assert(
      fc.property(fc.array(fc.nat({ max: 5000 }), { minLength: 1, maxLength: 12 }), (values) => {
        const counts = new Map(values.map((v, i) => [`n${i}`, v]));
        const plan = planRebalance(counts);
        const after = apply(counts, plan);
        const total = values.reduce((a, b) => a + b, 0);
        const mean = total / values.length;
        for (const v of after.values()) {
          expect(v).toBeGreaterThanOrEqual(0);
          expect(Math.abs(v - mean)).toBeLessThan(1);
          if (mean >= 10) expect(Math.abs(v - mean)).toBeLessThanOrEqual(0.1 * mean);
        }
        expect([...after.values()].reduce((a, b) => a + b, 0)).toBe(total);
        for (const m of plan) {
          expect(m.count).toBeGreaterThan(0);
          expect(m.from).not.toBe(m.to);
        }
        // The fewest moves: what the nodes above their share hold beyond it.
        const moved = plan.reduce((k, m) => k + m.count, 0);
        const sorted = [...values].sort((a, b) => b - a);
        const base = Math.floor(total / values.length);
        const extra = total % values.length;
        const least = sorted.reduce((k, v, i) => k + Math.max(0, v - (base + (i < extra ? 1 : 0))), 0);
        expect(moved).toBe(least);
      }),
    );
  });
});
