import { describe, expect, it } from 'vitest';
import { scopeAllows } from '../../src/relay/events.js';

describe('token scopes', () => {
  it('match device names by * and ? globs, everything else literally, the same on every call', () => {
    for (let round = 0; round < 2; round++) {
      expect(scopeAllows('*', 'kitchen-1')).toBe(true);
      expect(scopeAllows('kitchen-*', 'kitchen-1')).toBe(true);
      expect(scopeAllows('kitchen-*', 'office-1')).toBe(false);
      expect(scopeAllows('shop-?', 'shop-7')).toBe(true);
      expect(scopeAllows('shop-?', 'shop-17')).toBe(false);
      expect(scopeAllows('a.b', 'a.b')).toBe(true);
      expect(scopeAllows('a.b', 'axb')).toBe(false);
      expect(scopeAllows('(x)+', '(x)+')).toBe(true);
      expect(scopeAllows('(x)+', 'xx')).toBe(false);
      expect(scopeAllows('office', 'office-2')).toBe(false);
    }
  });
});
