import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { FIXED_LIMITS } from '../../src/config/limits.js';
import {
  continuation,
  encodeCommand,
  encodeIdCommand,
  encodeIdList,
  sanitizeText,
  tagged,
  untagged,
  untaggedData,
  type EncodedCommand,
} from '../../src/protocols/imap/compiler.js';
import { parseIdArgs } from '../../src/protocols/imap/id.js';
import { ImapParser, type ImapParseEvent } from '../../src/protocols/imap/parser.js';

function segmentsOf(result: EncodedCommand | { error: 'nul' }): string[] {
  if ('error' in result) throw new Error('unexpected error result');
  return result.segments.map((s) => s.toString('latin1'));
}

function parseAll(input: Buffer): ImapParseEvent[] {
  const parser = new ImapParser();
  parser.push(input);
  const events: ImapParseEvent[] = [];
  for (let event = parser.next(); event !== null; event = parser.next()) events.push(event);
  return events;
}

/** Encode LOGIN, feed it to our own parser, and return what the parser saw. */
function roundTripLogin(user: Buffer | string, pass: Buffer | string, literalPlus: boolean): { events: ImapParseEvent[]; segments: number } {
  const encoded = encodeCommand('A1', 'LOGIN', [user, pass], { literalPlus });
  if ('error' in encoded) throw new Error('unexpected nul');
  return { events: parseAll(Buffer.concat(encoded.segments)), segments: encoded.segments.length };
}

describe('IMAP responses', () => {
  it('formats tagged responses with and without a code', () => {
    expect(tagged('A1', 'NO', 'Authentication failed.', 'AUTHENTICATIONFAILED')).toBe('A1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n');
    expect(tagged('A1', 'OK', 'Pre-login capabilities listed', 'CAPABILITY IMAP4rev1 ID')).toBe(
      'A1 OK [CAPABILITY IMAP4rev1 ID] Pre-login capabilities listed\r\n',
    );
    expect(tagged('x.1', 'BAD', 'Error in IMAP command')).toBe('x.1 BAD Error in IMAP command\r\n');
  });

  it('formats untagged responses and data', () => {
    expect(untagged('NO', 'Watch out', 'ALERT')).toBe('* NO [ALERT] Watch out\r\n');
    expect(untagged('BYE', 'Logging out')).toBe('* BYE Logging out\r\n');
    expect(untagged('OK', 'mailgate ready', 'CAPABILITY IMAP4rev1 STARTTLS')).toBe('* OK [CAPABILITY IMAP4rev1 STARTTLS] mailgate ready\r\n');
    expect(untaggedData('CAPABILITY IMAP4rev1 AUTH=PLAIN')).toBe('* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n');
  });

  it('writes continuations with exactly "+ " before CRLF', () => {
    expect(continuation()).toBe('+ \r\n');
    expect(continuation('')).toBe('+ \r\n');
    expect(continuation('Ready for literal data')).toBe('+ Ready for literal data\r\n');
    expect(continuation('a\r\nb')).toBe('+ ab\r\n');
  });

  it('never lets text or code break the line framing', () => {
    const evil = 'oops\r\nA2 OK [CAPABILITY IMAP4rev1] logged in\n\0';
    for (const line of [
      tagged('A1', 'NO', evil, evil),
      untagged('NO', evil, evil),
      untaggedData(evil),
      continuation(evil),
    ]) {
      expect(line.endsWith('\r\n')).toBe(true);
      expect(line.slice(0, -2)).not.toMatch(/[\r\n\0]/);
    }
    // A "]" would otherwise close the code early.
    expect(tagged('A1', 'NO', 'x', 'ALERT] fake')).toBe('A1 NO [ALERT fake] x\r\n');
  });

  it('substitutes a text when it is empty after sanitising, and drops an empty code', () => {
    expect(tagged('A1', 'OK', '')).toBe('A1 OK Completed\r\n');
    expect(tagged('A1', 'NO', '\r\n', '\0')).toBe('A1 NO Failed\r\n');
    expect(untagged('BYE', '')).toBe('* BYE Logging out\r\n');
  });

  it('refuses a tag the parser would never have produced', () => {
    expect(() => tagged('A 1', 'OK', 'x')).toThrow();
    expect(() => tagged('', 'OK', 'x')).toThrow();
    expect(() => tagged('+', 'OK', 'x')).toThrow();
    expect(() => tagged('a\r\n* OK', 'OK', 'x')).toThrow();
  });
});

describe('sanitizeText', () => {
  it('removes CR, LF, NUL and other control characters but keeps printable UTF-8', () => {
    expect(sanitizeText('a\r\nb\0c\td\x1be\x7ff\u0085g')).toBe('abcdefg');
    expect(sanitizeText('Grüße, jürgen ✓')).toBe('Grüße, jürgen ✓');
    expect(sanitizeText('')).toBe('');
  });
});

describe('encodeCommand', () => {
  const noLp = { literalPlus: false };
  const lp = { literalPlus: true };

  it('always quotes strings, escaping " and \\', () => {
    expect(segmentsOf(encodeCommand('A1', 'LOGIN', ['alice', 'secret'], noLp))).toEqual(['A1 LOGIN "alice" "secret"\r\n']);
    expect(segmentsOf(encodeCommand('A1', 'LOGIN', ['a"b\\c', ''], noLp))).toEqual(['A1 LOGIN "a\\"b\\\\c" ""\r\n']);
    expect(segmentsOf(encodeCommand('A1', 'LOGIN', ['my pass (x) {5}', 'NIL'], noLp))).toEqual(['A1 LOGIN "my pass (x) {5}" "NIL"\r\n']);
  });

  it('writes atoms verbatim', () => {
    expect(segmentsOf(encodeCommand('A1', 'AUTHENTICATE', [{ atom: 'PLAIN' }, { atom: 'AGFsaWNlAHNlY3JldA==' }], noLp))).toEqual([
      'A1 AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n',
    ]);
    expect(segmentsOf(encodeCommand('A1', 'CAPABILITY', [], noLp))).toEqual(['A1 CAPABILITY\r\n']);
  });

  it('throws on programmer errors', () => {
    expect(() => encodeCommand('A1', 'AUTHENTICATE', [{ atom: 'PL AIN' }], noLp)).toThrow();
    expect(() => encodeCommand('A1', 'AUTHENTICATE', [{ atom: '' }], noLp)).toThrow();
    expect(() => encodeCommand('A1', 'AUTHENTICATE', [{ atom: 'x\r\nA2 DELETE INBOX' }], noLp)).toThrow();
    expect(() => encodeCommand('A1', 'LOG IN', [], noLp)).toThrow();
    expect(() => encodeCommand('A 1', 'LOGIN', [], noLp)).toThrow();
  });

  it('uses synchronising literals as separate segments for CR, LF and 8-bit data', () => {
    expect(segmentsOf(encodeCommand('A1', 'LOGIN', ['alice', 'a\r\nb'], noLp))).toEqual(['A1 LOGIN "alice" {4}\r\n', 'a\r\nb\r\n']);
    expect(segmentsOf(encodeCommand('A1', 'LOGIN', ['jürgen', 'x\ry'], noLp))).toEqual([
      'A1 LOGIN {7}\r\n',
      Buffer.from('jürgen {3}\r\n', 'utf8').toString('latin1'),
      'x\ry\r\n',
    ]);
    expect(segmentsOf(encodeCommand('A1', 'LOGIN', [Buffer.from([0x61, 0xff]), 'x\n'], noLp))).toEqual([
      'A1 LOGIN {2}\r\n',
      'a\xff {2}\r\n',
      'x\n\r\n',
    ]);
  });

  it('puts everything in one segment with LITERAL+', () => {
    expect(segmentsOf(encodeCommand('A1', 'LOGIN', ['jürgen', 'x\ry'], lp))).toEqual([
      Buffer.from('A1 LOGIN {7+}\r\njürgen {3+}\r\nx\ry\r\n', 'utf8').toString('latin1'),
    ]);
  });

  it(`switches to a literal above ${FIXED_LIMITS.imap_upstream_max_quoted_bytes} bytes`, () => {
    const max = FIXED_LIMITS.imap_upstream_max_quoted_bytes;
    const at = 'a'.repeat(max);
    expect(segmentsOf(encodeCommand('A1', 'LOGIN', ['u', at], noLp))).toEqual([`A1 LOGIN "u" "${at}"\r\n`]);
    expect(segmentsOf(encodeCommand('A1', 'LOGIN', ['u', `${at}a`], noLp))).toEqual([`A1 LOGIN "u" {${max + 1}}\r\n`, `${at}a\r\n`]);
  });

  it('refuses NUL anywhere', () => {
    expect(encodeCommand('A1', 'LOGIN', ['alice', 'se\0cret'], noLp)).toEqual({ error: 'nul' });
    expect(encodeCommand('A1', 'LOGIN', [Buffer.from([0x00]), 'x'], lp)).toEqual({ error: 'nul' });
    expect(encodeCommand('A1', 'LOGIN', ['x\r\n\0', 'x'], lp)).toEqual({ error: 'nul' });
  });
});

describe('encodeCommand round trip through ImapParser', () => {
  const awkward = [
    'alice',
    '',
    ' ',
    'with space',
    'quote"inside',
    '"',
    '\\',
    '\\"',
    'back\\slash',
    '{5}',
    '{5+}',
    'x {5}',
    '(paren',
    ')',
    'NIL',
    'nil',
    '*',
    '%',
    'a\r\nA2 LOGOUT',
    '\r\n',
    '\n',
    '\r',
    'tab\there',
    'jürgen@exämple.org',
    '日本語パスワード',
    '😀',
    'x'.repeat(1024),
    'y'.repeat(1025),
  ];

  for (const literalPlus of [false, true]) {
    it(`gives back exactly the argument bytes (literalPlus: ${literalPlus})`, () => {
      for (const user of awkward) {
        for (const pass of awkward) {
          const { events, segments } = roundTripLogin(user, pass, literalPlus);
          const continuations = events.filter((e) => e.type === 'literal-continuation').length;
          const commands = events.filter((e) => e.type !== 'literal-continuation');
          expect(continuations, `${JSON.stringify(user)} / ${JSON.stringify(pass)}`).toBe(segments - 1);
          expect(commands).toHaveLength(1);
          const command = commands[0]!;
          if (command.type !== 'command') throw new Error(`expected a command, got ${JSON.stringify(command)}`);
          expect(command.tag).toBe('A1');
          expect(command.name).toBe('LOGIN');
          expect(command.args.map((a) => (a.kind === 'string' ? a.value.toString('utf8') : a))).toEqual([user, pass]);
        }
      }
    });
  }

  it('holds for arbitrary bytes (property)', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 1200 }), fc.uint8Array({ maxLength: 40 }), fc.boolean(), (u, p, literalPlus) => {
        const user = Buffer.from(u);
        const pass = Buffer.from(p);
        const encoded = encodeCommand('A1', 'LOGIN', [user, pass], { literalPlus });
        if (user.includes(0) || pass.includes(0)) {
          expect(encoded).toEqual({ error: 'nul' });
          return;
        }
        if ('error' in encoded) throw new Error('unexpected nul');
        const commands = parseAll(Buffer.concat(encoded.segments)).filter((e) => e.type !== 'literal-continuation');
        expect(commands).toEqual([
          {
            type: 'command',
            tag: 'A1',
            name: 'LOGIN',
            args: [
              { kind: 'string', value: user, literal: expect.any(Boolean) },
              { kind: 'string', value: pass, literal: expect.any(Boolean) },
            ],
          },
        ]);
      }),
      { numRuns: 500 },
    );
  });
});

describe('encodeIdList', () => {
  it('quotes names and values and writes NIL', () => {
    expect(
      encodeIdList([
        ['name', 'mailgate'],
        ['version', null],
      ]),
    ).toBe('("name" "mailgate" "version" NIL)');
    expect(encodeIdList([['x-originating-ip', '2001:db8::1']])).toBe('("x-originating-ip" "2001:db8::1")');
    expect(encodeIdList([['q', 'a"b\\c']])).toBe('("q" "a\\"b\\\\c")');
  });

  it('writes NIL for no fields', () => {
    expect(encodeIdList([])).toBe('NIL');
  });

  it('strips control and non-ASCII characters and caps sizes', () => {
    expect(encodeIdList([['na\r\nme', 'mail\0gäte\x7f ok']])).toBe('("name" "mailgte ok")');
    expect(encodeIdList([['\u00e9', 'dropped because the name is empty']])).toBe('NIL');
    const list = encodeIdList([['f'.repeat(40), 'v'.repeat(2000)]]);
    expect(list).toBe(`("${'f'.repeat(30)}" "${'v'.repeat(1024)}")`);
    const many = encodeIdList(Array.from({ length: 40 }, (_, i): [string, string] => [`k${i}`, 'v']));
    expect(many.match(/"k\d+"/g)).toHaveLength(30);
  });

  it('is accepted back by the parser and parseIdArgs', () => {
    const command = encodeIdCommand('A9', [
      ['name', 'mailgate'],
      ['version', '1.0'],
      ['x-originating-ip', '192.0.2.7'],
      ['vendor', null],
      ['weird', 'a"b\\c\r\nd'],
    ]);
    expect(command.segments).toHaveLength(1);
    const events = parseAll(command.segments[0]!);
    expect(events).toHaveLength(1);
    const event = events[0]!;
    if (event.type !== 'command') throw new Error('expected a command');
    expect(event.name).toBe('ID');
    const parsed = parseIdArgs(event.args);
    expect(parsed).toEqual({
      ok: true,
      fields: new Map<string, string | null>([
        ['name', 'mailgate'],
        ['version', '1.0'],
        ['x-originating-ip', '192.0.2.7'],
        ['vendor', null],
        ['weird', 'a"b\\cd'],
      ]),
    });
  });
});
