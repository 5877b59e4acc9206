import { describe, expect, it } from 'vitest';
import type { MailgateError } from '../../src/errors.js';
import { normaliseUsername, tryNormaliseUsername, validateNewUsername } from '../../src/store/username.js';

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

describe('validateNewUsername (creating an account)', () => {
  it('normalises a name any mail server takes', () => {
    expect(validateNewUsername('  Alice@Example.ORG ', '*')).toBe('alice@example.org');
    expect(validateNewUsername(`${'a'.repeat(249)}@b.org`, '*')).toHaveLength(255);
  });

  it.each([
    ['a space inside', 'bad user', /white space/],
    ['a no-break space inside', 'bad\u00a0user', /white space/],
    ['the master user separator', 'alice*gwmaster', /master user separator/],
    ['more than 255 bytes', `${'a'.repeat(250)}@b.org`, /longer than 255 bytes/],
    ['more than 255 bytes of UTF-8', 'ü'.repeat(128), /longer than 255 bytes/],
    ['a control character', 'ali\u0000ce', /control character/],
  ])('refuses %s, as a usage error', (_label, name, message) => {
    // Catches: accounts created under names no upstream login can ever use.
    expect(() => validateNewUsername(name, '*')).toThrow(message);
    try {
      validateNewUsername(name, '*');
    } catch (err) {
      expect((err as MailgateError).isUsageError).toBe(true);
    }
  });

  it('refuses the separator it is given, whatever it is', () => {
    expect(() => validateNewUsername('alice+master', '+')).toThrow(/"\+", the master user separator/);
    expect(validateNewUsername('alice*x', '+')).toBe('alice*x');
  });

  it('leaves lookups lenient: the login path still finds nothing rather than throwing', () => {
    // Names an account can never have are simply not found at login; only creation refuses them.
    expect(tryNormaliseUsername('bad user')).toBe('bad user');
  });
});
