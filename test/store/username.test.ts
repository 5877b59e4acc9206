import { describe, expect, it } from 'vitest';
import { normaliseUsername, tryNormaliseUsername } from '../../src/store/username.js';

describe('normaliseUsername', () => {
  it('trims and lower-cases', () => {
    expect(normaliseUsername('  Alice@Example.ORG \t')).toBe('alice@example.org');
  });

  it('keeps any UTF-8', () => {
    expect(normaliseUsername('Jürgen@Exämple.org')).toBe('jürgen@exämple.org');
    expect(normaliseUsername('用户@例子.中国')).toBe('用户@例子.中国');
  });

  it.each([
    ['NUL', 'ali\u0000ce'],
    ['CR inside', 'ali\rce'],
    ['LF inside', 'ali\nce'],
    ['DEL', 'ali\u007fce'],
    ['C1 control', 'ali\u0085ce'],
    ['line separator', 'ali\u2028ce'],
    ['empty', '   '],
    ['replacement character from bad UTF-8', 'ali\ufffdce'],
    ['over-long', 'a'.repeat(300)],
  ])('rejects %s', (_label, value) => {
    expect(() => normaliseUsername(value)).toThrow();
    expect(tryNormaliseUsername(value)).toBeNull();
  });
});
