import { describe, expect, it } from 'vitest';
import { canonicalAppPassword, formatAppPassword, generateAppPassword, selectorOf } from '../../src/store/app-password-format.js';

describe('app password format', () => {
  it('generates 16 letters a-z shown in groups of four', () => {
    for (let i = 0; i < 200; i++) {
      const p = generateAppPassword();
      expect(p.secret).toMatch(/^[a-z]{16}$/);
      expect(p.display).toMatch(/^[a-z]{4} [a-z]{4} [a-z]{4} [a-z]{4}$/);
      expect(p.display.replace(/ /g, '')).toBe(p.secret);
      expect(p.selector).toBe(p.secret.slice(0, 4));
    }
  });

  it('draws letters uniformly enough that every letter appears', () => {
    const seen = new Set<string>();
    for (let i = 0; i < 100; i++) for (const c of generateAppPassword().secret) seen.add(c);
    expect(seen.size).toBe(26);
  });

  it('never repeats in practice', () => {
    const all = new Set(Array.from({ length: 1000 }, () => generateAppPassword().secret));
    expect(all.size).toBe(1000);
  });

  it('accepts the password with or without spaces, and in any case', () => {
    expect(canonicalAppPassword('abcd efgh ijkl mnop')).toBe('abcdefghijklmnop');
    expect(canonicalAppPassword('abcdefghijklmnop')).toBe('abcdefghijklmnop');
    expect(canonicalAppPassword('Abcd Efgh\tijkl  mnop')).toBe('abcdefghijklmnop');
  });

  it('says when a password cannot be an app password', () => {
    expect(canonicalAppPassword('abcdefghijklmno')).toBeNull();
    expect(canonicalAppPassword('abcdefghijklmnopq')).toBeNull();
    expect(canonicalAppPassword('abcd-efgh-ijkl-mnop')).toBeNull();
    expect(canonicalAppPassword('abcdefghijklmno1')).toBeNull();
    expect(canonicalAppPassword('')).toBeNull();
  });

  it('formats and selects', () => {
    expect(formatAppPassword('abcdefghijklmnop')).toBe('abcd efgh ijkl mnop');
    expect(selectorOf('abcdefghijklmnop')).toBe('abcd');
  });
});
