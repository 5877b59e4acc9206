import { isDeepStrictEqual } from 'node:util';
import { describe, expect, it } from 'vitest';
import {
  DEFAULT_POP3_PARSER_LIMITS,
  Pop3Parser,
  type Pop3ParseEvent,
  type Pop3ParserLimits,
} from '../../src/protocols/pop3/parser.js';
import { FIXED_LIMITS, LIMIT_DEFAULTS } from '../../src/config/limits.js';
import { feedSplits } from '../support/feed.js';
import { eachPartSplit } from './stepwise.js';

interface DriveOptions {
  limits?: Partial<Pop3ParserLimits>;
  /** Called per event, like the session; return false to stop pulling (login in flight). */
  onEvent?: (parser: Pop3Parser, event: Pop3ParseEvent) => boolean | void;
}

interface Driven {
  events: Pop3ParseEvent[];
  parser: Pop3Parser;
}

/** Push each chunk and drain next() after it, the way the session does. */
function drive(chunks: Buffer[], opts: DriveOptions = {}): Driven {
  const parser = new Pop3Parser(opts.limits);
  const events: Pop3ParseEvent[] = [];
  let pulling = true;
  for (const chunk of chunks) {
    parser.push(chunk);
    while (pulling) {
      const event = parser.next();
      if (event === null) break;
      events.push(event);
      if (opts.onEvent?.(parser, event) === false) pulling = false;
    }
  }
  return { events, parser };
}

/**
 * Run a scenario under every chunking (whole, each two-way split, bytewise),
 * assert all chunkings agree, and return the agreed result.
 */
function everySplit<T>(input: Buffer | string, run: (chunks: Buffer[]) => T): T {
  const results = feedSplits(input, run);
  expect(results.length).toBeGreaterThanOrEqual(2);
  const whole = results[0]!.result;
  for (const { label, result } of results) {
    // vitest's toEqual walks Buffers element by element, far too slow for
    // thousands of chunkings of a 2 KiB line; use it only to explain a mismatch.
    if (!isDeepStrictEqual(result, whole)) expect(result, label).toEqual(whole);
  }
  return whole;
}

function eventsOf(input: Buffer | string, opts: DriveOptions = {}): Pop3ParseEvent[] {
  return everySplit(input, (chunks) => drive(chunks, opts).events);
}

/** Pushes each chunk and drains after it; the events that chunk brought out. */
function feedEach(parser: Pop3Parser, chunks: Buffer[]): Pop3ParseEvent[][] {
  return chunks.map((chunk) => {
    parser.push(chunk);
    const events: Pop3ParseEvent[] = [];
    for (let event = parser.next(); event !== null; event = parser.next()) events.push(event);
    return events;
  });
}

function command(name: string, args: string[], rest: string | Buffer): Pop3ParseEvent {
  return { type: 'command', name, args, rest: typeof rest === 'string' ? Buffer.from(rest, 'utf8') : rest };
}

function error(reason: string, fatal: boolean): unknown {
  return { type: 'error', reason, message: expect.any(String), fatal };
}

/** Session-like reaction: a SASL AUTH without an initial response wants one continuation line. */
function saslAfterBareAuth(parser: Pop3Parser, event: Pop3ParseEvent): void {
  if (event.type === 'command' && event.name === 'AUTH' && event.args.length === 1) parser.expectSaslResponse();
}

describe('Pop3Parser commands', () => {
  it('parses CAPA, in any case', () => {
    expect(eventsOf('CAPA\r\ncapa\r\nCaPa\r\n')).toEqual([
      command('CAPA', [], ''),
      command('CAPA', [], ''),
      command('CAPA', [], ''),
    ]);
  });

  it('accepts a bare LF as line end', () => {
    expect(eventsOf('QUIT\n')).toEqual([command('QUIT', [], '')]);
  });

  it('parses USER with its argument', () => {
    expect(eventsOf('USER alice\r\n')).toEqual([command('USER', ['alice'], 'alice')]);
  });

  it('decodes UTF-8 arguments', () => {
    expect(eventsOf(Buffer.from('USER jürgen@example.org\r\n', 'utf8'))).toEqual([
      command('USER', ['jürgen@example.org'], 'jürgen@example.org'),
    ]);
  });

  it('keeps the spaces of a PASS argument in rest', () => {
    expect(eventsOf('PASS abcd efgh ijkl mnop\r\n')).toEqual([
      command('PASS', ['abcd', 'efgh', 'ijkl', 'mnop'], 'abcd efgh ijkl mnop'),
    ]);
  });

  it('starts rest after exactly one separating space', () => {
    expect(eventsOf('PASS  two  spaces \r\n')).toEqual([command('PASS', ['two', 'spaces'], ' two  spaces ')]);
  });

  it('gives an empty rest for a keyword with a single trailing space', () => {
    expect(eventsOf('PASS \r\n')).toEqual([command('PASS', [], '')]);
  });

  it('passes non-UTF-8 password bytes through rest untouched', () => {
    const line = Buffer.concat([Buffer.from('PASS '), Buffer.from([0xff, 0xfe, 0x20, 0xe9]), Buffer.from('\r\n')]);
    const [event] = eventsOf(line);
    expect(event).toMatchObject({ type: 'command', name: 'PASS' });
    expect((event as { rest: Buffer }).rest).toEqual(Buffer.from([0xff, 0xfe, 0x20, 0xe9]));
  });

  it('does not mistake a PASS argument for an HTTP request line', () => {
    expect(eventsOf('PASS x HTTP/1.1\r\n')).toEqual([command('PASS', ['x', 'HTTP/1.1'], 'x HTTP/1.1')]);
  });

  it('parses AUTH with mechanism and initial response', () => {
    expect(eventsOf('AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n')).toEqual([
      command('AUTH', ['PLAIN', 'AGFsaWNlAHNlY3JldA=='], 'PLAIN AGFsaWNlAHNlY3JldA=='),
    ]);
  });

  it('passes a "*" initial response through as an argument, for the session to cancel', () => {
    expect(eventsOf('AUTH PLAIN *\r\nAUTH LOGIN *\r\n', { onEvent: saslAfterBareAuth })).toEqual([
      command('AUTH', ['PLAIN', '*'], 'PLAIN *'),
      command('AUTH', ['LOGIN', '*'], 'LOGIN *'),
    ]);
  });

  it('parses bare AUTH (mechanism listing)', () => {
    expect(eventsOf('AUTH\r\n')).toEqual([command('AUTH', [], '')]);
  });

  it('parses QUIT', () => {
    expect(eventsOf('QUIT\r\n')).toEqual([command('QUIT', [], '')]);
  });

  it('leaves known-vs-unknown keywords to the session', () => {
    expect(eventsOf('XYZZY1 a\r\nSTAT\r\n')).toEqual([command('XYZZY1', ['a'], 'a'), command('STAT', [], '')]);
  });

  it('produces nothing for a line still missing its LF', () => {
    const result = eachPartSplit(['CAPA\r', '\n'], ([line, lf]) => {
      const parser = new Pop3Parser();
      const before = feedEach(parser, line!).flat();
      const held = parser.bufferedBytes;
      const after = feedEach(parser, lf!).flat();
      return { before, held, after, left: parser.bufferedBytes };
    });
    expect(result).toEqual({ before: [], held: 5, after: [command('CAPA', [], '')], left: 0 });
  });
});

describe('Pop3Parser errors', () => {
  it('reports an empty line, non-fatal', () => {
    expect(eventsOf('\r\nCAPA\r\n')).toEqual([error('empty-line', false), command('CAPA', [], '')]);
  });

  it('reports a NUL byte, non-fatal', () => {
    expect(eventsOf(Buffer.from('USER al\0ice\r\nQUIT\r\n', 'latin1'))).toEqual([
      error('nul', false),
      command('QUIT', [], ''),
    ]);
  });

  it('reports a NUL byte in the keyword as nul, not syntax', () => {
    expect(eventsOf(Buffer.from('CA\0PA\r\n', 'latin1'))).toEqual([error('nul', false)]);
  });

  it.each([
    ['leading space', ' CAPA'],
    ['punctuation', 'CA-PA'],
    ['keyword longer than 8', 'ABCDEFGHI'],
    ['tab separator', 'USER\talice'],
    ['non-ASCII keyword', 'ÜSER alice'],
    ['lone CR', '\r'],
  ])('reports a bad keyword (%s) as syntax, non-fatal, without echoing it', (_name, line) => {
    const events = eventsOf(Buffer.from(`${line}\r\nQUIT\r\n`, 'utf8'));
    expect(events).toEqual([error('syntax', false), command('QUIT', [], '')]);
    const message = (events[0] as { message: string }).message;
    const trimmed = line.trim();
    if (trimmed.length > 0) expect(message).not.toContain(trimmed);
  });

  it.each([
    'GET / HTTP/1.1',
    'get / http/1.0',
    'POST /submit HTTP/1.1',
    'OPTIONS * HTTP/1.1',
    'PRI * HTTP/2.0',
    'FOO-BAR /x HTTP/1.1',
  ])('treats "%s" as a fatal HTTP request', (line) => {
    const events = eventsOf(`${line}\r\nHost: mail.example.org\r\n\r\nUSER alice\r\n`);
    expect(events).toEqual([error('http-request', true)]);
  });

  it('does not flag lines that merely mention HTTP', () => {
    expect(eventsOf('USER HTTP/1.1\r\n')).toEqual([command('USER', ['HTTP/1.1'], 'HTTP/1.1')]);
  });

  // The production line limit (512), as the default parser has it.
  const MAX = DEFAULT_POP3_PARSER_LIMITS.maxLineBytes;

  it(`reports a ${MAX + 1}-byte line as soon as byte ${MAX + 1} arrives, without LF`, () => {
    const result = eachPartSplit([Buffer.alloc(MAX, 0x41), 'A'], ([full, extra]) => {
      const parser = new Pop3Parser();
      const atLimit = feedEach(parser, full!).flat();
      const over = feedEach(parser, extra!).flat();
      return { atLimit, over, held: parser.bufferedBytes };
    });
    expect(result).toEqual({ atLimit: [], over: [error('line-too-long', true)], held: 0 });
  });

  it(`reports a ${MAX + 1}-byte line the same under every chunking`, () => {
    expect(eventsOf(Buffer.alloc(MAX + 1, 0x41))).toEqual([error('line-too-long', true)]);
  });

  it(`accepts a ${MAX}-byte line, and waits on ${MAX} bytes plus CR`, () => {
    const arg = 'a'.repeat(MAX - 'USER '.length);
    const line = `USER ${arg}`;
    expect(Buffer.byteLength(line)).toBe(MAX);
    expect(eventsOf(`${line}\r\n`)).toEqual([command('USER', [arg], arg)]);

    const result = eachPartSplit([`${line}\r`, '\n'], ([withCr, lf]) => {
      const parser = new Pop3Parser();
      return { waiting: feedEach(parser, withCr!).flat(), done: feedEach(parser, lf!).flat() };
    });
    expect(result).toEqual({ waiting: [], done: [command('USER', [arg], arg)] });
  });

  it(`reports ${MAX} bytes plus CR plus a non-LF byte as too long`, () => {
    expect(eventsOf(`${'A'.repeat(MAX)}\rX`)).toEqual([error('line-too-long', true)]);
  });

  it('honours a custom maxLineBytes', () => {
    expect(eventsOf('CAPA\r\nUSER alice\r\n', { limits: { maxLineBytes: 8 } })).toEqual([
      command('CAPA', [], ''),
      error('line-too-long', true),
    ]);
  });

  it('returns null forever after a fatal error and drops all buffers', () => {
    const result = eachPartSplit(['GET / HTTP/1.1\r\nCAPA\r\n', 'CAPA\r\n'], ([first, later]) => {
      const parser = new Pop3Parser();
      const events = feedEach(parser, first!).flat();
      const heldAfterFatal = parser.bufferedBytes;
      const afterwards = feedEach(parser, later!).flat();
      const held = parser.bufferedBytes;
      const taken = parser.takeBuffered();
      const discarded = parser.discardBuffered();
      parser.expectSaslResponse();
      return { events, heldAfterFatal, afterwards, held, taken, discarded, sasl: parser.next() };
    });
    expect(result).toEqual({
      events: [error('http-request', true)],
      heldAfterFatal: 0,
      afterwards: [],
      held: 0,
      taken: Buffer.alloc(0),
      discarded: 0,
      sasl: null,
    });
  });

  it('never throws on arbitrary bytes', () => {
    let seed = 0x1234567;
    const random = (): number => {
      // xorshift: deterministic so a failure is reproducible.
      seed ^= seed << 13;
      seed ^= seed >>> 17;
      seed ^= seed << 5;
      return (seed >>> 0) / 0x1_0000_0000;
    };
    for (let round = 0; round < 300; round++) {
      const parser = new Pop3Parser({ maxLineBytes: 64, maxSaslLineBytes: 128 });
      for (let c = 0; c < 10; c++) {
        const chunk = Buffer.alloc(Math.floor(random() * 40));
        for (let i = 0; i < chunk.length; i++) {
          // Bias towards separators so lines actually complete.
          const r = random();
          chunk[i] = r < 0.1 ? 0x0a : r < 0.2 ? 0x20 : Math.floor(random() * 256);
        }
        parser.push(chunk);
        if (random() < 0.2) parser.expectSaslResponse();
        for (let event = parser.next(); event !== null; event = parser.next()) {
          expect(['command', 'sasl-response', 'error']).toContain(event.type);
        }
      }
    }
  });
});

describe('Pop3Parser buffering around login and STLS', () => {
  it('leaves pipelined bytes after the login command for takeBuffered()', () => {
    const input = 'AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nSTAT\r\nLIST\r\nRETR 1';
    const result = everySplit(input, (chunks) => {
      const { events, parser } = drive(chunks, { onEvent: () => false });
      const taken = parser.takeBuffered();
      return { events, taken, after: parser.bufferedBytes };
    });
    expect(result.events).toEqual([command('AUTH', ['PLAIN', 'AGFsaWNlAHNlY3JldA=='], 'PLAIN AGFsaWNlAHNlY3JldA==')]);
    expect(result.taken).toEqual(Buffer.from('STAT\r\nLIST\r\nRETR 1'));
    expect(result.after).toBe(0);
  });

  it('leaves everything after PASS buffered when USER and PASS are pipelined', () => {
    const input = 'USER alice\r\nPASS s3cret pw\r\nSTAT\r\n';
    const result = everySplit(input, (chunks) => {
      const { events, parser } = drive(chunks, {
        onEvent: (_p, event) => !(event.type === 'command' && event.name === 'PASS'),
      });
      return { events, taken: parser.takeBuffered() };
    });
    expect(result.events).toEqual([
      command('USER', ['alice'], 'alice'),
      command('PASS', ['s3cret', 'pw'], 's3cret pw'),
    ]);
    expect(result.taken).toEqual(Buffer.from('STAT\r\n'));
  });

  it('returns an empty buffer from takeBuffered() when nothing is pipelined', () => {
    const result = everySplit('PASS x\r\n', (chunks) => {
      const { events, parser } = drive(chunks, { onEvent: () => false });
      return { events, taken: parser.takeBuffered() };
    });
    expect(result).toEqual({ events: [command('PASS', ['x'], 'x')], taken: Buffer.alloc(0) });
  });

  it('drops commands injected after STLS', () => {
    const input = 'STLS\r\nUSER evil\r\n';
    const result = everySplit(input, (chunks) => {
      const { events, parser } = drive(chunks, {
        onEvent: (_p, event) => !(event.type === 'command' && event.name === 'STLS'),
      });
      const discarded = parser.discardBuffered();
      const afterDiscard = parser.next();
      // What arrives after the TLS handshake is parsed normally again.
      parser.push(Buffer.from('CAPA\r\n'));
      const later = [parser.next(), parser.next()];
      return { events, discarded, afterDiscard, later };
    });
    expect(result.events).toEqual([command('STLS', [], '')]);
    expect(result.discarded).toBe('USER evil\r\n'.length);
    expect(result.afterDiscard).toBeNull();
    expect(result.later).toEqual([command('CAPA', [], ''), null]);
  });
});

describe('Pop3Parser SASL responses', () => {
  it('hands the line after AUTH <mech> over raw', () => {
    expect(eventsOf('AUTH PLAIN\r\nAGFsaWNlAHNlY3JldA==\r\nCAPA\r\n', { onEvent: saslAfterBareAuth })).toEqual([
      command('AUTH', ['PLAIN'], 'PLAIN'),
      { type: 'sasl-response', line: Buffer.from('AGFsaWNlAHNlY3JldA==') },
      command('CAPA', [], ''),
    ]);
  });

  it.each(['*', '=', ''])('passes %j through as a SASL response, not a command or error', (answer) => {
    expect(eventsOf(`AUTH LOGIN\r\n${answer}\r\n`, { onEvent: saslAfterBareAuth })).toEqual([
      command('AUTH', ['LOGIN'], 'LOGIN'),
      { type: 'sasl-response', line: Buffer.from(answer) },
    ]);
  });

  it('does not judge SASL lines as commands (NUL, HTTP shape, spaces)', () => {
    const input = Buffer.from('AUTH LOGIN\r\nGET / HTTP/1.1\r\nAUTH LOGIN\r\n a\0b \r\n', 'latin1');
    expect(eventsOf(input, { onEvent: saslAfterBareAuth })).toEqual([
      command('AUTH', ['LOGIN'], 'LOGIN'),
      { type: 'sasl-response', line: Buffer.from('GET / HTTP/1.1') },
      command('AUTH', ['LOGIN'], 'LOGIN'),
      { type: 'sasl-response', line: Buffer.from(' a\0b ', 'latin1') },
    ]);
  });

  it('allows SASL lines longer than command lines, up to maxSaslLineBytes', () => {
    const long = 'Q'.repeat(DEFAULT_POP3_PARSER_LIMITS.maxSaslLineBytes);
    expect(eventsOf(`AUTH PLAIN\r\n${long}\r\n`, { onEvent: saslAfterBareAuth })).toEqual([
      command('AUTH', ['PLAIN'], 'PLAIN'),
      { type: 'sasl-response', line: Buffer.from(long) },
    ]);
  });

  it('rejects a SASL line over maxSaslLineBytes as fatal', () => {
    const tooLong = 'Q'.repeat(DEFAULT_POP3_PARSER_LIMITS.maxSaslLineBytes + 1);
    expect(eventsOf(`AUTH PLAIN\r\n${tooLong}`, { onEvent: saslAfterBareAuth })).toEqual([
      command('AUTH', ['PLAIN'], 'PLAIN'),
      error('line-too-long', true),
    ]);
  });

  it('applies maxLineBytes again after the SASL line', () => {
    const limits = { maxLineBytes: 16, maxSaslLineBytes: 64 };
    const input = `AUTH PLAIN\r\n${'Q'.repeat(40)}\r\n${'A'.repeat(20)}\r\n`;
    expect(eventsOf(input, { limits, onEvent: saslAfterBareAuth })).toEqual([
      command('AUTH', ['PLAIN'], 'PLAIN'),
      { type: 'sasl-response', line: Buffer.from('Q'.repeat(40)) },
      error('line-too-long', true),
    ]);
  });
});

describe('Pop3Parser construction', () => {
  it('defaults to the limits production runs with (src/config/limits.ts)', () => {
    // Catches: defaults restated here that drift from production's.
    expect(DEFAULT_POP3_PARSER_LIMITS).toEqual({
      maxLineBytes: LIMIT_DEFAULTS.pop3_max_line_bytes,
      maxSaslLineBytes: FIXED_LIMITS.pop3_max_sasl_line_bytes,
    });
  });

  it('refuses nonsensical limits', () => {
    expect(() => new Pop3Parser({ maxLineBytes: 0 })).toThrow(RangeError);
    expect(() => new Pop3Parser({ maxSaslLineBytes: Number.NaN })).toThrow(RangeError);
  });
});
