/**
 * Property-based (fast-check) fuzzing of the pre-login POP3 parser: random
 * bytes and POP3-shaped soups, in random chunks, in command and
 * SASL-continuation mode, with the limits production runs (taken from
 * src/config/limits.ts, never restated here), and again with random small
 * limits so random input also reaches every limit's edge. Pure: no sockets.
 *
 * What each property would catch if the protection were removed:
 *  - robustness: a throw (gateway crash), a next() that never returns null
 *    (hung event loop), bytes held past the line limit (client-driven memory
 *    growth), data kept after a fatal error, commands with NUL or a keyword
 *    that is not one, and client bytes echoed in error messages;
 *  - chunking: a result that depends on how TCP cut the bytes;
 *  - production limits: a command or SASL line of exactly the production
 *    limit refused, or one past it accepted (a limit that drifted, or an
 *    off-by-one at the real sizes, such as the early cut-off before a CR);
 *  - provenance: a PASS whose password is not exactly the rest of one input
 *    line (spliced, trimmed, or carrying a line end that would let a
 *    password smuggle a second command upstream).
 */
import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { LIMIT_DEFAULTS } from '../../src/config/limits.js';
import { Pop3Parser, pop3ParserLimits, type Pop3ParseEvent, type Pop3ParserLimits } from '../../src/protocols/pop3/parser.js';
import { byteSoup, cut, describeRandomInput } from '../support/feed.js';

const SEED = Number(process.env.FUZZ_SEED ?? 0x90b3);
fc.configureGlobal({ seed: SEED, numRuns: 300, endOnFailure: true });

const PARSER_SOURCE = readFileSync(new URL('../../src/protocols/pop3/parser.ts', import.meta.url), 'utf8');

/** What the gateway runs with its default configuration. */
const PRODUCTION: Pop3ParserLimits = pop3ParserLimits(LIMIT_DEFAULTS);

type Hook = (parser: Pop3Parser, event: Pop3ParseEvent) => void;

/** What the session does: AUTH with a mechanism and no initial response waits for a continuation line. */
const saslHook: Hook = (parser, event) => {
  if (event.type === 'command' && event.name === 'AUTH' && event.args.length === 1) parser.expectSaslResponse();
};

function feed(chunks: Uint8Array[], limits: Pop3ParserLimits, hook?: Hook): { events: Pop3ParseEvent[]; fatal: boolean } {
  const parser = new Pop3Parser(limits);
  const events: Pop3ParseEvent[] = [];
  let pushed = 0;
  let fatal = false;
  for (const chunk of chunks) {
    parser.push(Buffer.from(chunk));
    pushed += chunk.length;
    if (fatal) {
      expect(parser.bufferedBytes).toBe(0);
      expect(parser.next()).toBeNull();
      continue;
    }
    expect(parser.bufferedBytes).toBeLessThanOrEqual(pushed);
    let guard = pushed + 10;
    for (let event = parser.next(); event !== null; event = parser.next()) {
      if (--guard < 0) throw new Error('next() never returned null');
      checkEvent(event);
      events.push(event);
      hook?.(parser, event);
      if (event.type === 'error' && event.fatal) {
        fatal = true;
        expect(parser.bufferedBytes).toBe(0);
        expect(parser.next()).toBeNull();
        expect(parser.takeBuffered()).toHaveLength(0);
        break;
      }
    }
    if (!fatal) expect(parser.bufferedBytes).toBeLessThanOrEqual(Math.max(limits.maxLineBytes, limits.maxSaslLineBytes) + 1);
  }
  return { events, fatal };
}

function checkEvent(event: Pop3ParseEvent): void {
  if (event.type === 'error') {
    expect(PARSER_SOURCE.includes(`'${event.message}'`), `message ${JSON.stringify(event.message)}`).toBe(true);
  }
  if (event.type === 'command') {
    expect(event.name).toMatch(/^[A-Z0-9]{1,8}$/);
    expect(event.rest.includes(0)).toBe(false);
    expect(event.rest.includes(0x0a)).toBe(false);
    // A CR may only be a byte of the argument, never the line end (LineBuffer strips one before LF).
  }
  if (event.type === 'sasl-response') expect(event.line.includes(0x0a)).toBe(false);
}

/** Small random limits: random input of a few hundred bytes then reaches every limit's edge. */
const smallLimitsArb: fc.Arbitrary<Pop3ParserLimits> = fc.record({
  maxLineBytes: fc.integer({ min: 1, max: 120 }),
  maxSaslLineBytes: fc.integer({ min: 1, max: 200 }),
});

const TOKENS = [
  'USER ', 'PASS ', 'pass ', 'AUTH ', 'AUTH PLAIN', 'AUTH LOGIN', 'STLS', 'CAPA', 'QUIT', 'APOP ', 'RETR 1', 'alice', 'pw', ' ', '  ', '*', '=',
  'AGFsaWNlAHB3', '\r\n', '\n', '\r', '\0', '\xff', 'GET / HTTP/1.1', 'OPTIONS * HTTP/1.0', 'x HTTP/1.1', '.', 'y'.repeat(60),
];

const soupArb = byteSoup(TOKENS, { parts: 60, partBytes: 10 });

const inputArb = fc.oneof(fc.uint8Array({ maxLength: 500 }), soupArb);

describeRandomInput({
  name: 'POP3',
  inputArb,
  productionLimits: PRODUCTION,
  smallLimitsArb,
  feed: (chunks, limits, withSasl) => feed(chunks, limits, withSasl ? saslHook : undefined),
  // Past the command line limit by at least 2 bytes, so no CR before a coming LF could explain it.
  flood: { minLength: PRODUCTION.maxLineBytes + 2, maxLength: 6 * PRODUCTION.maxLineBytes, lfStandIn: 0x41, runs: 200 },
  runs: { anyInput: 4000, chunking: 2000 },
});

describe('POP3 parser at the production limits', () => {
  it('accepts a command line and a SASL line of exactly the production limit and refuses one byte more, however chunked', () => {
    const lineEndArb = fc.constantFrom('\r\n', '\n');
    fc.assert(
      fc.property(fc.boolean(), fc.integer({ min: -2, max: 2 }), lineEndArb, fc.array(fc.nat(), { maxLength: 12 }), fc.boolean(), (sasl, over, end, points, cutAtEnd) => {
        // The line's length without its end is the limit plus `over`; then a QUIT the parser must reach if it accepted.
        const line = sasl
          ? `AUTH PLAIN\r\n${'Q'.repeat(PRODUCTION.maxSaslLineBytes + over)}`
          : `USER ${'y'.repeat(PRODUCTION.maxLineBytes - 'USER '.length + over)}`;
        // Chunks ending right before the line end (and between its CR and LF) are where an early cut-off goes wrong.
        const at = cutAtEnd ? [...points, line.length, line.length + 1] : points;
        const run = feed(cut(new Uint8Array(Buffer.from(`${line}${end}QUIT\r\n`, 'latin1')), at), PRODUCTION, saslHook);
        const types = run.events.map((e) => (e.type === 'command' ? e.name : e.type === 'error' ? e.reason : e.type));
        const head = sasl ? ['AUTH'] : [];
        if (over <= 0) expect(types).toEqual([...head, sasl ? 'sasl-response' : 'USER', 'QUIT']);
        else expect(types).toEqual([...head, 'line-too-long']);
        expect(run.fatal).toBe(over > 0);
      }),
      { numRuns: 300 },
    );
  });
});

describe('POP3 parser: PASS is exactly the rest of one input line', () => {
  /** Any byte but the framing ones (CR, LF) and NUL, which POP3 cannot carry. */
  const passwordArb = fc.uint8Array({ minLength: 1, maxLength: 40 }).map((u) => Buffer.from(u.filter((b) => b !== 0x0a && b !== 0x0d && b !== 0)));
  const garbageLineArb = fc.uint8Array({ maxLength: 40 }).map((u) => Buffer.concat([Buffer.from(u.filter((b) => b !== 0x0a)), Buffer.from('\r\n')]));

  it('every PASS event carries bytes that follow "PASS " on one line of the input', () => {
    fc.assert(
      fc.property(fc.array(fc.oneof(passwordArb.map((p) => Buffer.concat([Buffer.from('PASS '), p, Buffer.from('\r\n')])), soupArb.map((u) => Buffer.from(u))), { maxLength: 12 }), fc.array(fc.nat(), { maxLength: 10 }), (parts, points) => {
        const input = Buffer.concat(parts);
        const run = feed(cut(new Uint8Array(input), points), PRODUCTION, saslHook);
        const lower = Buffer.from(input.toString('latin1').toLowerCase(), 'latin1');
        for (const e of run.events) {
          if (e.type !== 'command' || e.name !== 'PASS') continue;
          const needle = Buffer.concat([Buffer.from('pass '), Buffer.from(e.rest.toString('latin1').toLowerCase(), 'latin1')]);
          const ends = [Buffer.from('\r\n'), Buffer.from('\n')].map((end) => Buffer.concat([needle, end]));
          expect(ends.some((n) => lower.includes(n)), `PASS ${JSON.stringify(e.rest.toString('latin1'))} not in input`).toBe(true);
        }
      }),
      { numRuns: 2000 },
    );
  });

  it('PASS lines between garbage lines yield exactly their passwords, in order', () => {
    fc.assert(
      fc.property(
        fc.array(fc.oneof({ weight: 2, arbitrary: passwordArb.map((p) => ({ password: p as Buffer | null, bytes: Buffer.concat([Buffer.from('PASS '), p, Buffer.from('\r\n')]) })) }, garbageLineArb.map((g) => ({ password: null as Buffer | null, bytes: g }))), {
          maxLength: 14,
        }),
        fc.array(fc.nat(), { maxLength: 10 }),
        (parts, points) => {
          const input = Buffer.concat(parts.map((p) => p.bytes));
          const run = feed(cut(new Uint8Array(input), points), PRODUCTION);
          const expected = parts.filter((p) => p.password).map((p) => p.password!.toString('latin1'));
          const got = run.events.filter((e) => e.type === 'command' && e.name === 'PASS').map((e) => (e as Extract<Pop3ParseEvent, { type: 'command' }>).rest.toString('latin1'));
          if (run.fatal) expect(expected.slice(0, got.length)).toEqual(got);
          else expect(got).toEqual(expected);
        },
      ),
      { numRuns: 1500 },
    );
  });
});
