import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  DEFAULT_IMAP_PARSER_LIMITS,
  ImapParser,
  type ImapArg,
  type ImapParseErrorReason,
  type ImapParseEvent,
  type ImapParserLimits,
} from '../../src/protocols/imap/parser.js';
import { FIXED_LIMITS, LIMIT_DEFAULTS, imapMaxCommandBytes } from '../../src/config/limits.js';
import { feedSplits, splitPlans } from '../support/feed.js';
import { eachPartSplit } from './stepwise.js';

// ---- helpers -------------------------------------------------------------

const atom = (value: string): ImapArg => ({ kind: 'atom', value });
const str = (value: string | Buffer): ImapArg => ({ kind: 'string', value: Buffer.from(value), literal: false });
const lit = (value: string | Buffer): ImapArg => ({ kind: 'string', value: Buffer.from(value), literal: true });
const list = (...items: ImapArg[]): ImapArg => ({ kind: 'list', items });
const NIL: ImapArg = { kind: 'nil' };
const cont = (tag = 'a', name = 'LOGIN'): ImapParseEvent => ({ type: 'literal-continuation', tag, name });
const CONT = cont();

function cmd(tag: string, name: string, ...args: ImapArg[]): ImapParseEvent {
  return { type: 'command', tag, name, args };
}

/** Matches an error event on everything but the human-readable message. */
function err(reason: ImapParseErrorReason, tag: string | null, fatal = false): unknown {
  return { type: 'error', reason, tag, fatal, message: expect.any(String) };
}

type Hook = (parser: ImapParser, event: ImapParseEvent) => void;

/** What the session does: after AUTHENTICATE, the next line is the SASL answer. */
const saslHook: Hook = (parser, event) => {
  if (event.type === 'command' && event.name === 'AUTHENTICATE' && event.args.length === 1) parser.expectSaslResponse();
};

function drain(parser: ImapParser, events: ImapParseEvent[], hook?: Hook): void {
  // A parser that keeps returning events without consuming input would hang the test otherwise.
  for (let guard = 0; guard < 10_000; guard++) {
    const event = parser.next();
    if (event === null) return;
    events.push(event);
    hook?.(parser, event);
  }
  throw new Error('parser never returned null');
}

function runChunks(chunks: Buffer[], limits?: Partial<ImapParserLimits>, hook?: Hook): ImapParseEvent[] {
  const parser = new ImapParser(limits);
  const events: ImapParseEvent[] = [];
  for (const chunk of chunks) {
    parser.push(chunk);
    drain(parser, events, hook);
  }
  return events;
}

/** Feed whole, split at every position, and bytewise; all must give the same events, which are returned. */
function parse(input: string | Buffer, limits?: Partial<ImapParserLimits>, hook?: Hook): ImapParseEvent[] {
  const results = feedSplits(input, (chunks) => runChunks(chunks, limits, hook));
  const whole = results[0]!.result;
  for (const { label, result } of results) expect(result, label).toEqual(whole);
  return whole;
}

function expectEvents(input: string | Buffer, expected: unknown[], limits?: Partial<ImapParserLimits>, hook?: Hook): void {
  expect(parse(input, limits, hook)).toEqual(expected);
}

const bytes = (...parts: Array<string | Buffer>): Buffer => Buffer.concat(parts.map((p) => Buffer.from(p)));

/** Pushes each chunk and drains after it, as the session does; the events each chunk brought out. */
function feedEach(parser: ImapParser, chunks: Buffer[], hook?: Hook): ImapParseEvent[][] {
  return chunks.map((chunk) => {
    parser.push(chunk);
    const events: ImapParseEvent[] = [];
    drain(parser, events, hook);
    return events;
  });
}

/** Pushes chunks, pulling after each, until the first event (as the session does until a login or STARTTLS); then only pushes the rest. */
function pushUntilFirstEvent(parser: ImapParser, chunks: Buffer[]): ImapParseEvent[] {
  const events: ImapParseEvent[] = [];
  let index = 0;
  while (index < chunks.length && events.length === 0) {
    parser.push(chunks[index++]!);
    const event = parser.next();
    if (event) events.push(event);
  }
  while (index < chunks.length) parser.push(chunks[index++]!);
  return events;
}

// ---- tests ---------------------------------------------------------------

describe('ImapParser: limits', () => {
  it('defaults to the limits production runs with (src/config/limits.ts)', () => {
    // Catches: defaults restated here that drift from production's (they once said 16,384 command bytes
    // where production used 24,576). test/config/limits.test.ts checks the mapping itself.
    expect(DEFAULT_IMAP_PARSER_LIMITS).toEqual({
      maxLineBytes: LIMIT_DEFAULTS.imap_max_line_bytes,
      maxLiteralBytes: LIMIT_DEFAULTS.imap_max_literal_bytes,
      maxCommandBytes: imapMaxCommandBytes(LIMIT_DEFAULTS.imap_max_line_bytes, LIMIT_DEFAULTS.imap_max_literal_bytes),
      maxNesting: LIMIT_DEFAULTS.imap_max_nesting,
      maxArgs: FIXED_LIMITS.imap_max_args,
    });
  });

  it('refuses nonsensical limits', () => {
    expect(() => new ImapParser({ maxLineBytes: 0 })).toThrow(RangeError);
    expect(() => new ImapParser({ maxArgs: 1.5 })).toThrow(RangeError);
    expect(() => new ImapParser({ maxNesting: -1 })).toThrow(RangeError);
  });
});

describe('ImapParser: simple commands', () => {
  it('parses a command without arguments and upper-cases the name', () => {
    expectEvents('a1 capability\r\n', [cmd('a1', 'CAPABILITY')]);
    expectEvents('x NoOp\r\n', [cmd('x', 'NOOP')]);
  });

  it('parses atoms and preserves their case', () => {
    expectEvents('1 login alice secret\r\n', [cmd('1', 'LOGIN', atom('alice'), atom('secret'))]);
    expectEvents('a LOGIN Alice@Example.ORG S3cr3t]x\r\n', [cmd('a', 'LOGIN', atom('Alice@Example.ORG'), atom('S3cr3t]x'))]);
  });

  it('accepts a bare LF as line end', () => {
    expectEvents('a NOOP\nb LOGOUT\n', [cmd('a', 'NOOP'), cmd('b', 'LOGOUT')]);
  });

  it('tolerates runs of spaces and trailing spaces', () => {
    expectEvents('a  LOGIN   alice    secret   \r\n', [cmd('a', 'LOGIN', atom('alice'), atom('secret'))]);
  });

  it('accepts tags with unusual but legal characters', () => {
    expectEvents('A0001.x]~ NOOP\r\n', [cmd('A0001.x]~', 'NOOP')]);
    const longest = 't'.repeat(FIXED_LIMITS.imap_max_tag_bytes);
    expectEvents(`${longest} NOOP\r\n`, [cmd(longest, 'NOOP')]);
  });

  it('passes unknown commands through for the session to reject', () => {
    expectEvents('a SELECT INBOX\r\n', [cmd('a', 'SELECT', atom('INBOX'))]);
  });

  it('treats NIL in any case as nil, but a quoted "NIL" as a string', () => {
    expectEvents('a ID nil\r\n', [cmd('a', 'ID', NIL)]);
    expectEvents('a X NiL "NIL"\r\n', [cmd('a', 'X', NIL, str('NIL'))]);
  });

  it('does not take a four-token line ending in HTTP/1.1 for an HTTP request', () => {
    expectEvents('a LOGIN http/1.1 secret\r\n', [cmd('a', 'LOGIN', atom('http/1.1'), atom('secret'))]);
  });
});

describe('ImapParser: quoted strings', () => {
  it('unescapes \\" and \\\\', () => {
    expectEvents('A2 LOGIN "al\\"ice" "pa\\\\ss"\r\n', [cmd('A2', 'LOGIN', str('al"ice'), str('pa\\ss'))]);
  });

  it('keeps UTF-8 bytes', () => {
    expectEvents('a LOGIN "jürgen@exämple.org" "pässwörd"\r\n', [
      cmd('a', 'LOGIN', str(Buffer.from('jürgen@exämple.org', 'utf8')), str(Buffer.from('pässwörd', 'utf8'))),
    ]);
  });

  it('keeps spaces, parentheses, braces and the empty string', () => {
    expectEvents('a LOGIN "" "my secret (pass) {5}"\r\n', [cmd('a', 'LOGIN', str(''), str('my secret (pass) {5}'))]);
  });

  it('rejects other backslash escapes', () => {
    expectEvents('a LOGIN "a\\nb" x\r\nb NOOP\r\n', [err('syntax', 'a'), cmd('b', 'NOOP')]);
  });

  it('rejects an unterminated string, and a CR inside one', () => {
    expectEvents('a LOGIN "alice\r\nb NOOP\r\n', [err('syntax', 'a'), cmd('b', 'NOOP')]);
    expectEvents('a LOGIN "al\rice" x\r\nb NOOP\r\n', [err('syntax', 'a'), cmd('b', 'NOOP')]);
  });

  it('reports NUL in a quoted string with the tag', () => {
    expectEvents('a LOGIN "al\0ice" x\r\nb NOOP\r\n', [err('nul', 'a'), cmd('b', 'NOOP')]);
  });
});

describe('ImapParser: literals', () => {
  it('emits a continuation per synchronising literal, then the command', () => {
    expectEvents('a LOGIN {5}\r\nalice {6}\r\nsecret\r\n', [CONT, CONT, cmd('a', 'LOGIN', lit('alice'), lit('secret'))]);
  });

  it('emits no continuation for non-synchronising literals', () => {
    expectEvents('a LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n', [cmd('a', 'LOGIN', lit('alice'), lit('secret'))]);
  });

  it('keeps CR, LF, quotes and backslashes inside literal data', () => {
    const password = Buffer.from('p"a\r\ns\\s\n{3}\r\n', 'latin1');
    expectEvents(bytes(`a LOGIN alice {${password.length}}\r\n`, password, '\r\n'), [
      CONT,
      cmd('a', 'LOGIN', atom('alice'), lit(password)),
    ]);
  });

  it('accepts an empty literal and a literal inside a list', () => {
    expectEvents('a LOGIN {0}\r\n {0+}\r\n\r\n', [CONT, cmd('a', 'LOGIN', lit(''), lit(''))]);
    expectEvents('a ID ("name" {3}\r\nfoo "version" NIL)\r\n', [
      cont('a', 'ID'),
      cmd('a', 'ID', list(str('name'), lit('foo'), str('version'), NIL)),
    ]);
  });

  it('emits the continuation once and then waits for the data', () => {
    const result = eachPartSplit(['a LOGIN {5}\r\n', 'alice x\r\n'], ([head, data]) => {
      const parser = new ImapParser();
      const announced = feedEach(parser, head!).flat();
      const waiting = [parser.next(), parser.next()];
      const perChunk = feedEach(parser, data!);
      return { announced, waiting, early: perChunk.slice(0, -1).flat(), last: perChunk.at(-1), after: parser.next() };
    });
    expect(result).toEqual({ announced: [CONT], waiting: [null, null], early: [], last: [cmd('a', 'LOGIN', lit('alice'), atom('x'))], after: null });
  });

  it('accepts a literal of exactly maxLiteralBytes', () => {
    const data = 'x'.repeat(16);
    expectEvents(`a LOGIN {16}\r\n${data} y\r\n`, [CONT, cmd('a', 'LOGIN', lit(data), atom('y'))], { maxLiteralBytes: 16 });
  });

  it('refuses an oversized synchronising literal at once, without waiting for data', () => {
    const result = eachPartSplit(['a LOGIN {104857600}\r\n', 'b NOOP\r\n'], ([head, next]) => {
      const parser = new ImapParser();
      const refused = feedEach(parser, head!).flat();
      const buffered = parser.bufferedBytes;
      // The client got no "+", so what it sends next is a new command.
      const after = feedEach(parser, next!).flat();
      return { refused, buffered, after };
    });
    expect(result).toEqual({ refused: [err('literal-too-large', 'a', false)], buffered: 0, after: [cmd('b', 'NOOP')] });
    expectEvents('a LOGIN {104857600}\r\nb NOOP\r\n', [err('literal-too-large', 'a'), cmd('b', 'NOOP')]);
  });

  it('treats an oversized non-synchronising literal as fatal', () => {
    expectEvents('a LOGIN {104857600+}\r\nxxxxxxxx\r\nb NOOP\r\n', [err('literal-too-large', 'a', true)]);
    expectEvents('a LOGIN {17+}\r\n', [err('literal-too-large', 'a', true)], { maxLiteralBytes: 16 });
  });

  it('rejects malformed literal announcements', () => {
    for (const marker of ['{12345678901}', '{-5}', '{ 5}', '{5x}', '{}', '{+}', '{5']) {
      expectEvents(`a LOGIN ${marker}\r\nb NOOP\r\n`, [err('syntax', 'a'), cmd('b', 'NOOP')]);
    }
    // Anything after the "}" on the same line.
    expectEvents('a LOGIN {5} x\r\nb NOOP\r\n', [err('syntax', 'a'), cmd('b', 'NOOP')]);
  });

  it('rejects literal8', () => {
    expectEvents('a LOGIN ~{5}\r\nb NOOP\r\n', [err('syntax', 'a'), cmd('b', 'NOOP')]);
  });

  it('reports NUL in a literal and skips the rest of that command', () => {
    expectEvents('a LOGIN {3}\r\na\0b {6}\r\nb NOOP\r\n', [CONT, err('nul', 'a'), cmd('b', 'NOOP')]);
    // A non-synchronising literal later on the line is sent regardless and must not be taken for a command.
    expectEvents('a LOGIN {3+}\r\na\0b {8+}\r\nc NOOP\r\n\r\nb NOOP\r\n', [err('nul', 'a'), cmd('b', 'NOOP')]);
  });

  it('requires a space after literal data', () => {
    expectEvents('a LOGIN {5}\r\nalicex\r\nb NOOP\r\n', [CONT, err('syntax', 'a'), cmd('b', 'NOOP')]);
  });
});

describe('ImapParser: AUTHENTICATE and SASL responses', () => {
  it('parses an initial response atom, including "="', () => {
    expectEvents('a AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n', [
      cmd('a', 'AUTHENTICATE', atom('PLAIN'), atom('AGFsaWNlAHNlY3JldA==')),
    ]);
    expectEvents('a AUTHENTICATE PLAIN =\r\n', [cmd('a', 'AUTHENTICATE', atom('PLAIN'), atom('='))]);
  });

  it('accepts a lone "*" initial response (a cancel) as an atom, so the session can cancel instead of calling it a syntax error', () => {
    expectEvents('a AUTHENTICATE PLAIN *\r\n', [cmd('a', 'AUTHENTICATE', atom('PLAIN'), atom('*'))]);
    expectEvents('a authenticate login * \r\nb NOOP\r\n', [cmd('a', 'AUTHENTICATE', atom('login'), atom('*')), cmd('b', 'NOOP')]);
    // Nothing is expected after it: the next line is a command, not a SASL response.
    expectEvents('a AUTHENTICATE PLAIN *\r\n*\r\n', [cmd('a', 'AUTHENTICATE', atom('PLAIN'), atom('*')), err('bad-tag', null)], undefined, saslHook);
  });

  it.each([
    ['a AUTHENTICATE *\r\n'],
    ['a AUTHENTICATE PLAIN *x\r\n'],
    ['a AUTHENTICATE PLAIN x*\r\n'],
    ['a AUTHENTICATE PLAIN **\r\n'],
    ['a AUTHENTICATE PLAIN x *\r\n'],
    ['a AUTHENTICATE PLAIN (*)\r\n'],
    ['a AUTHENTICATE PLAIN *)\r\n'],
    ['a LOGIN alice *\r\n'],
    ['a ID *\r\n'],
  ])('still rejects "*" anywhere but as AUTHENTICATE\'s lone second argument: %j', (line) => {
    expectEvents(`${line}b NOOP\r\n`, [err('syntax', 'a'), cmd('b', 'NOOP')]);
  });

  it('returns the line after expectSaslResponse() raw', () => {
    expectEvents(
      'a AUTHENTICATE PLAIN\r\nAGFsaWNlAHNlY3JldA==\r\nb NOOP\r\n',
      [cmd('a', 'AUTHENTICATE', atom('PLAIN')), { type: 'sasl-response', line: Buffer.from('AGFsaWNlAHNlY3JldA==') }, cmd('b', 'NOOP')],
      undefined,
      saslHook,
    );
  });

  it('returns a "*" cancel, an empty line, and odd bytes raw', () => {
    expectEvents(
      'a AUTHENTICATE PLAIN\r\n*\r\n',
      [cmd('a', 'AUTHENTICATE', atom('PLAIN')), { type: 'sasl-response', line: Buffer.from('*') }],
      undefined,
      saslHook,
    );
    expectEvents(
      'a AUTHENTICATE PLAIN\r\n\r\n',
      [cmd('a', 'AUTHENTICATE', atom('PLAIN')), { type: 'sasl-response', line: Buffer.alloc(0) }],
      undefined,
      saslHook,
    );
    expectEvents(
      bytes('a AUTHENTICATE PLAIN\r\n', Buffer.from([0x22, 0x7b, 0x00, 0xff, 0x20]), '\n'),
      [cmd('a', 'AUTHENTICATE', atom('PLAIN')), { type: 'sasl-response', line: Buffer.from([0x22, 0x7b, 0x00, 0xff, 0x20]) }],
      undefined,
      saslHook,
    );
  });

  it('applies maxLineBytes to a SASL response, fatally', () => {
    expectEvents(
      `a AUTHENTICATE PLAIN\r\n${'A'.repeat(40)}\r\n`,
      [cmd('a', 'AUTHENTICATE', atom('PLAIN')), err('line-too-long', null, true)],
      { maxLineBytes: 32 },
      saslHook,
    );
  });
});

describe('ImapParser: ID and lists', () => {
  it('parses an ID list and ID NIL', () => {
    expectEvents('a ID ("name" "Thunderbird" "version" NIL)\r\n', [
      cmd('a', 'ID', list(str('name'), str('Thunderbird'), str('version'), NIL)),
    ]);
    expectEvents('a ID NIL\r\n', [cmd('a', 'ID', NIL)]);
    expectEvents('a ID ()\r\n', [cmd('a', 'ID', list())]);
  });

  it('parses nested lists and tolerates inner spaces', () => {
    expectEvents('a X (a (b "c") ( ) ) d\r\n', [cmd('a', 'X', list(atom('a'), list(atom('b'), str('c')), list()), atom('d'))]);
  });

  it('rejects unbalanced parentheses', () => {
    expectEvents('a ID ("name" "x"\r\nb NOOP\r\n', [err('syntax', 'a'), cmd('b', 'NOOP')]);
    expectEvents('a ID "name")\r\nb NOOP\r\n', [err('syntax', 'a'), cmd('b', 'NOOP')]);
  });

  it('allows maxNesting levels and rejects one more', () => {
    const ok = `a X ${'('.repeat(8)}x${')'.repeat(8)}\r\n`;
    let expected: ImapArg = atom('x');
    for (let i = 0; i < 8; i++) expected = list(expected);
    expectEvents(ok, [cmd('a', 'X', expected)]);
    expectEvents(`a X ${'('.repeat(9)}x${')'.repeat(9)}\r\nb NOOP\r\n`, [err('nesting-too-deep', 'a'), cmd('b', 'NOOP')]);
  });

  it('rejects a hostile depth without recursion trouble', () => {
    const depth = 100_000;
    const input = Buffer.from(`a X ${'('.repeat(depth)}\r\nb NOOP\r\n`);
    const limits = { maxLineBytes: 200_000, maxCommandBytes: 200_000 };
    // Every cut of 100 KB would take minutes, and cuts inside the run of "(" are
    // all alike: every cut near either end of the run, every 997th in between,
    // plus the whole input and one byte at a time.
    const runEnd = 4 + depth;
    const cuts = new Set<number>();
    for (let at = 1; at < input.length; at++) {
      if (at < 4 + 64 || at > runEnd - 64 || at % 997 === 0) cuts.add(at);
    }
    const plans = [[input], [...input].map((b) => Buffer.from([b])), ...[...cuts].map((at) => [input.subarray(0, at), input.subarray(at)])];
    const expected = [err('nesting-too-deep', 'a'), cmd('b', 'NOOP')];
    for (const chunks of plans) expect(runChunks(chunks, limits)).toEqual(expected);
  });

  it('counts nested arguments against maxArgs', () => {
    expectEvents('a X (a b) c\r\n', [cmd('a', 'X', list(atom('a'), atom('b')), atom('c'))], { maxArgs: 4 });
    expectEvents('a X (a b) c d\r\nb NOOP\r\n', [err('too-many-args', 'a'), cmd('b', 'NOOP')], { maxArgs: 4 });
    expectEvents('a X a b c d e\r\nb NOOP\r\n', [err('too-many-args', 'a'), cmd('b', 'NOOP')], { maxArgs: 4 });
  });
});

describe('ImapParser: tags and command names', () => {
  it.each([
    ['+ x\r\n'],
    ['"a" LOGIN x y\r\n'],
    [`${'t'.repeat(FIXED_LIMITS.imap_max_tag_bytes + 1)} NOOP\r\n`],
    ['a1\r\n'],
    ['a1 \r\n'],
    [' a1 NOOP\r\n'],
    ['a(1 NOOP\r\n'],
    ['a*1 NOOP\r\n'],
    ['a{1 NOOP\r\n'],
    ['a%1 NOOP\r\n'],
    ['a\\1 NOOP\r\n'],
    ['t\u00e4g NOOP\r\n'],
    ['a\x01 NOOP\r\n'],
    ['a\0 NOOP\r\n'],
  ])('rejects bad tag %j without echoing it', (line) => {
    expectEvents(`${line}b NOOP\r\n`, [err('bad-tag', null), cmd('b', 'NOOP')]);
  });

  it('rejects an invalid command name with the tag', () => {
    for (const line of ['a LOG"IN x\r\n', 'a LOGIN] x\r\n', 'a LOGIN(x)\r\n', 'a LOGIN{5}\r\n', 'a L\u00d6GIN x\r\n', 'a *\r\n']) {
      expectEvents(`${line}b NOOP\r\n`, [err('syntax', 'a'), cmd('b', 'NOOP')]);
    }
  });

  it('reports an empty line without a tag', () => {
    expectEvents('\r\nb NOOP\r\n', [err('empty-line', null), cmd('b', 'NOOP')]);
    expectEvents('\nb NOOP\n', [err('empty-line', null), cmd('b', 'NOOP')]);
  });
});

describe('ImapParser: argument syntax errors', () => {
  it.each([
    ['a LOGIN "a""b"\r\n'],
    ['a LOGIN x"y" z\r\n'],
    ['a LOGIN al%ice x\r\n'],
    ['a LOGIN al*ice x\r\n'],
    ['a LOGIN \\Seen x\r\n'],
    ['a LOGIN j\u00fcrgen x\r\n'],
    ['a LOGIN al\x01ice x\r\n'],
    ['a LOGIN (a)(b)\r\n'],
  ])('rejects %j with the tag and resyncs', (line) => {
    expectEvents(`${line}b NOOP\r\n`, [err('syntax', 'a'), cmd('b', 'NOOP')]);
  });

  it('reports a NUL outside strings as nul', () => {
    expectEvents('a LOGIN \0 x\r\nb NOOP\r\n', [err('nul', 'a'), cmd('b', 'NOOP')]);
  });

  it('skips the non-synchronising literal announced at the end of a rejected line', () => {
    expectEvents('a LOGIN "x\\q" {7+}\r\nb NOOP\n y\r\nc NOOP\r\n', [err('syntax', 'a'), cmd('c', 'NOOP')]);
    expectEvents('+ x {5+}\r\nb OOP\r\nc NOOP\r\n', [err('bad-tag', null), cmd('c', 'NOOP')]);
  });

  it('gives up on a rejected line whose non-synchronising literal cannot be skipped', () => {
    expectEvents('a LOGIN "x\\q" {99999+}\r\nb NOOP\r\n', [err('syntax', 'a', true)]);
  });

  it('does not skip anything after a rejected line ending in a synchronising literal', () => {
    expectEvents('a LOGIN "x\\q" {7}\r\nb NOOP\r\n', [err('syntax', 'a'), cmd('b', 'NOOP')]);
  });
});

describe('ImapParser: size limits', () => {
  it('accepts a line of exactly maxLineBytes and rejects one byte more, fatally', () => {
    const line = `a X ${'y'.repeat(28)}`;
    expect(line.length).toBe(32);
    expectEvents(`${line}\r\n`, [cmd('a', 'X', atom('y'.repeat(28)))], { maxLineBytes: 32 });
    expectEvents(`${line}z\r\nb NOOP\r\n`, [err('line-too-long', null, true)], { maxLineBytes: 32 });
  });

  it('reports a long line without LF as soon as it exceeds the limit', () => {
    expectEvents('a'.repeat(50), [err('line-too-long', null, true)], { maxLineBytes: 32 });
    // With the default limit: reported by the chunk that takes the line past
    // maxLineBytes + 1 (one byte is left for a CR), and nothing kept.
    const certain = DEFAULT_IMAP_PARSER_LIMITS.maxLineBytes + 2;
    const flood = Buffer.alloc(DEFAULT_IMAP_PARSER_LIMITS.maxLineBytes + 10, 0x61);
    for (const { label, chunks } of splitPlans(flood)) {
      const parser = new ImapParser();
      let pushed = 0;
      let reportedAt = -1;
      const events: ImapParseEvent[] = [];
      for (const chunk of chunks) {
        parser.push(chunk);
        pushed += chunk.length;
        drain(parser, events);
        if (events.length > 0 && reportedAt < 0) reportedAt = pushed;
      }
      const crossedAt = chunks.reduce((acc, c) => (acc.total >= certain ? acc : { total: acc.total + c.length }), { total: 0 }).total;
      if (events.length !== 1 || reportedAt !== crossedAt || parser.bufferedBytes !== 0) {
        expect({ events, reportedAt, buffered: parser.bufferedBytes }, label).toEqual({
          events: [err('line-too-long', null, true)],
          reportedAt: crossedAt,
          buffered: 0,
        });
      }
    }
  });

  it('applies maxLineBytes to the segment after a literal', () => {
    expectEvents(`a X {2}\r\nab ${'c'.repeat(40)}\r\n`, [cont('a', 'X'), err('line-too-long', 'a', true)], { maxLineBytes: 32 });
  });

  it('counts lines and literals against maxCommandBytes, fatally', () => {
    const limits = { maxLineBytes: 40, maxLiteralBytes: 40, maxCommandBytes: 64 };
    const data = 'd'.repeat(30);
    // 13 + 30 + 6 = 49 bytes so far; a second literal of 30 would make 79.
    expectEvents(`a LOGIN {30+}\r\n${data} {30+}\r\n${data}\r\n`, [err('command-too-large', 'a', true)], limits);
    // Same for a synchronising one: refused before the client is told to send it.
    expectEvents(`a LOGIN {30}\r\n${data} {30}\r\n`, [CONT, err('command-too-large', 'a', true)], limits);
    // A trailing segment longer than the room left in the command.
    expectEvents(`a LOGIN {30+}\r\n${data} ${'e'.repeat(25)}\r\n`, [err('command-too-large', 'a', true)], limits);
    // Just within the budget: 13 + 30 + 21 = 64.
    expectEvents(`a LOGIN {30+}\r\n${data} ${'e'.repeat(20)}\r\n`, [cmd('a', 'LOGIN', lit(data), atom('e'.repeat(20)))], limits);
  });
});

describe('ImapParser: HTTP requests', () => {
  it.each([
    ['GET / HTTP/1.1\r\nHost: x\r\n\r\n'],
    ['POST /x HTTP/1.0\r\n'],
    ['post /imap http/1.1\r\n'],
    ['OPTIONS * HTTP/1.1\r\n'],
    ['PRI * HTTP/2.0\r\n'],
    ['GET  /a?b=c  HTTP/1.1  \n'],
  ])('fatally rejects %j', (input) => {
    expectEvents(input, [err('http-request', null, true)]);
  });
});

describe('ImapParser: after a fatal error', () => {
  it('returns null forever and holds nothing', () => {
    const result = eachPartSplit(['GET / HTTP/1.1\r\na NOOP\r\n', 'b NOOP\r\n'], ([first, later]) => {
      const parser = new ImapParser();
      const events = feedEach(parser, first!).flat();
      const heldAfterFatal = parser.bufferedBytes;
      const afterwards = feedEach(parser, later!).flat();
      return { events, heldAfterFatal, afterwards, again: [parser.next(), parser.next()], held: parser.bufferedBytes, taken: parser.takeBuffered().length };
    });
    expect(result).toEqual({ events: [err('http-request', null, true)], heldAfterFatal: 0, afterwards: [], again: [null, null], held: 0, taken: 0 });
  });
});

describe('ImapParser: pipelining and buffer hand-over', () => {
  it('returns pipelined commands one at a time', () => {
    expectEvents('a NOOP\r\nb CAPABILITY\r\nc LOGIN x y\r\n', [cmd('a', 'NOOP'), cmd('b', 'CAPABILITY'), cmd('c', 'LOGIN', atom('x'), atom('y'))]);
  });

  it('leaves the bytes after a login command for takeBuffered()', () => {
    const rest = 'b SELECT INBOX\r\nc FETCH 1 (BODY[])\r\n';
    const input = `a LOGIN alice {6+}\r\nsecret\r\n${rest}`;
    const results = feedSplits(input, (chunks) => {
      const parser = new ImapParser();
      const events = pushUntilFirstEvent(parser, chunks);
      const buffered = parser.bufferedBytes;
      const taken = parser.takeBuffered();
      return { events, buffered, taken: taken.toString('latin1'), after: parser.bufferedBytes };
    });
    for (const { label, result } of results) {
      expect(result, label).toEqual({
        events: [cmd('a', 'LOGIN', atom('alice'), lit('secret'))],
        buffered: rest.length,
        taken: rest,
        after: 0,
      });
    }
  });

  it('drops everything buffered after STARTTLS', () => {
    const results = feedSplits('a STARTTLS\r\nb CAPABILITY\r\n', (chunks) => {
      const parser = new ImapParser();
      const events = pushUntilFirstEvent(parser, chunks);
      const dropped = parser.discardBuffered();
      drain(parser, events);
      parser.push(Buffer.from('c CAPABILITY\r\n'));
      drain(parser, events);
      return { events, dropped };
    });
    for (const { label, result } of results) {
      expect(result, label).toEqual({ events: [cmd('a', 'STARTTLS'), cmd('c', 'CAPABILITY')], dropped: 'b CAPABILITY\r\n'.length });
    }
  });

  it('drops a command whose synchronising literal the session refuses, and parses the next one', () => {
    // As the session does: refuse on the continuation event, whatever is already buffered behind it.
    const refuse: Hook = (parser, event) => {
      if (event.type === 'literal-continuation') parser.refuseLiteral();
    };
    // Without our "+" the client sends no literal: its next line is a new command.
    expectEvents('a LOGIN {5}\r\nb NOOP\r\n', [cont('a', 'LOGIN'), cmd('b', 'NOOP')], undefined, refuse);
    // Refusing is only for a pending literal: anywhere else it changes nothing.
    const refuseAlways: Hook = (parser) => parser.refuseLiteral();
    expectEvents('a LOGIN {5+}\r\nalice x\r\nb NOOP\r\n', [cmd('a', 'LOGIN', lit('alice'), atom('x')), cmd('b', 'NOOP')], undefined, refuseAlways);
  });

  it('resets a half-parsed command on discardBuffered() and takeBuffered()', () => {
    const parts = ['a LOGIN {5}\r\n', 'al', 'b NOOP\r\n', 'c LOGIN {5+}\r\nal', 'd NOOP\r\n'];
    const result = eachPartSplit(parts, ([announce, partial, next, halfLiteral, last]) => {
      const parser = new ImapParser();
      const announced = feedEach(parser, announce!).flat();
      const waiting = feedEach(parser, partial!).flat();
      const discarded = parser.discardBuffered();
      const afterDiscard = feedEach(parser, next!).flat();
      const pending = feedEach(parser, halfLiteral!).flat();
      const taken = parser.takeBuffered().toString('latin1');
      const afterTake = feedEach(parser, last!).flat();
      return { announced, waiting, discarded, afterDiscard, pending, taken, afterTake };
    });
    expect(result).toEqual({
      announced: [CONT],
      waiting: [],
      discarded: 2,
      afterDiscard: [cmd('b', 'NOOP')],
      pending: [],
      taken: 'al',
      afterTake: [cmd('d', 'NOOP')],
    });
  });

  it('reports buffered bytes so the session can apply back-pressure', () => {
    const input = 'a NOOP\r\nb NOOP\r\n';
    for (const { label, result } of feedSplits(input, (chunks) => {
      const parser = new ImapParser();
      // Counted as they arrive, before anything is parsed.
      const arriving = chunks.map((chunk) => (parser.push(chunk), parser.bufferedBytes));
      const first = parser.next();
      return { arriving: arriving.at(-1), first, afterOne: parser.bufferedBytes, growsByChunk: arriving.every((n, i) => n === chunks.slice(0, i + 1).reduce((t, c) => t + c.length, 0)) };
    })) {
      expect(result, label).toEqual({ arriving: 16, first: cmd('a', 'NOOP'), afterOne: 8, growsByChunk: true });
    }
  });
});

describe('ImapParser: hostile input (property)', () => {
  const tokens = [
    'a ', 'b1 ', 'LOGIN', 'AUTHENTICATE PLAIN', 'ID', ' ', '  ', '"', '\\', '\\"', '{3}', '{2+}', '{0}', '{99999}', '{99999+}',
    '\r\n', '\n', '\r', '(', ')', 'NIL', 'x', 'y]', '\0', '\u00fc', '~{1}', 'GET / HTTP/1.1', '*', '+', '%',
  ];
  const limits = { maxLineBytes: 48, maxLiteralBytes: 8, maxCommandBytes: 96, maxNesting: 3, maxArgs: 6 };

  it('gives the same events however the input is cut, and never throws', () => {
    fc.assert(
      fc.property(
        fc.array(fc.constantFrom(...tokens), { maxLength: 60 }),
        fc.array(fc.nat(), { maxLength: 8 }),
        (parts, cuts) => {
          const input = Buffer.from(parts.join(''), 'utf8');
          const points = [...new Set(cuts.map((c) => c % (input.length + 1)))].sort((x, y) => x - y);
          const chunks: Buffer[] = [];
          let from = 0;
          for (const at of [...points, input.length]) {
            chunks.push(input.subarray(from, at));
            from = at;
          }
          const whole = runChunks([input], limits, saslHook);
          expect(runChunks(chunks, limits, saslHook)).toEqual(whole);
          // After a fatal error nothing more may come out.
          const fatal = whole.findIndex((e) => e.type === 'error' && e.fatal);
          if (fatal >= 0) expect(fatal).toBe(whole.length - 1);
          for (const event of whole) {
            if (event.type === 'error' && (event.reason === 'bad-tag' || event.reason === 'empty-line' || event.reason === 'http-request')) {
              expect(event.tag).toBeNull();
            }
          }
        },
      ),
      { numRuns: 2000 },
    );
  });
});
