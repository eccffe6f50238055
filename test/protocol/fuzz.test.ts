import { describe, expect, it } from 'vitest';
import { runFuzz } from './fuzz.js';

/** `npm run fuzz` sets FUZZ_CASES=100000; the regular suite runs a quick pass. FUZZ_SEED explores further. */
const cases = Number(process.env.FUZZ_CASES ?? 3000);
const seed = Number(process.env.FUZZ_SEED ?? 0x5eed);

describe('protocol fuzzing', () => {
  it(`${cases} random and mutated inputs end fine or with a DW_* code (seed ${seed})`, { timeout: 20 * 60_000 }, () => {
    const started = performance.now();
    const report = runFuzz({ cases, seed });
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    console.log(`fuzz: ${report.cases} cases, seed ${seed}, ${seconds} s\nby code: ${JSON.stringify(sorted(report.byCode), null, 1)}`);
    console.log(`by target: ${JSON.stringify(Object.fromEntries(Object.entries(report.byTarget).map(([t, c]) => [t, sorted(c)])), null, 1)}`);
    expect(report.cases).toBe(cases);
    const codes = Object.keys(report.byCode).filter((c) => c.startsWith('DW_'));
    expect(codes.length).toBeGreaterThanOrEqual(cases >= 1000 ? 8 : 3);
    expect(report.byCode.ok ?? 0).toBeGreaterThan(0);
  });

  it('is deterministic for a seed and replays single cases', () => {
    const a = runFuzz({ cases: 200, seed: 7 });
    const b = runFuzz({ cases: 200, seed: 7 });
    expect(b).toEqual(a);
    const one = runFuzz({ cases: 1, seed: 7, start: 199 });
    expect(one.cases).toBe(1);
  });
});

function sorted(counts: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(counts).sort(([, x], [, y]) => y - x));
}
