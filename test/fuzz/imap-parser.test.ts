/**
 * Property-based (fast-check) fuzzing of the pre-login IMAP parser: random
 * bytes and protocol-shaped soups, cut into random chunks, with the limits
 * production runs (taken from src/config/limits.ts, never restated here), and
 * again with random small limits so random input also reaches every limit's
 * edge. Pure: no sockets.
 *
 * What each property would catch if the protection were removed:
 *  - robustness: a throw out of push()/next() (a crash of the gateway), a
 *    next() that keeps returning events without consuming input (a hung
 *    event loop), bytes held beyond the line/literal limits (memory growth
 *    driven by the client), a parser that keeps data after a fatal error, a
 *    bug swallowed by the internal catch ("Internal parser error"), a tag the
 *    session would echo but the compiler refuses (an exception in the session),
 *    and client bytes in error messages (echo/log injection);
 *  - chunking: a parser whose result depends on how TCP cut the bytes;
 *  - production limits: a line, literal, command, nesting or argument count
 *    of exactly the production limit refused, or one past it accepted (a
 *    limit that drifted, or an off-by-one at the real sizes);
 *  - provenance: a LOGIN whose credentials are spliced from pieces of the
 *    input, or differ from what the client sent in its wire form.
 */
import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { LIMIT_DEFAULTS } from '../../src/config/limits.js';
import {
  ImapParser,
  imapParserLimits,
  isValidAtom,
  isValidTag,
  type ImapArg,
  type ImapParseErrorReason,
  type ImapParseEvent,
  type ImapParserLimits,
} from '../../src/protocols/imap/parser.js';
import { byteSoup, cut, describeRandomInput } from '../support/feed.js';

const SEED = Number(process.env.FUZZ_SEED ?? 0x1a9);
fc.configureGlobal({ seed: SEED, numRuns: 300, endOnFailure: true });

const PARSER_SOURCE = readFileSync(new URL('../../src/protocols/imap/parser.ts', import.meta.url), 'utf8');

/** What the gateway runs with its default configuration. */
const PRODUCTION: ImapParserLimits = imapParserLimits(LIMIT_DEFAULTS);

type Hook = (parser: ImapParser, event: ImapParseEvent) => void;

/** What the session does after an AUTHENTICATE without an initial response. */
const saslHook: Hook = (parser, event) => {
  if (event.type === 'command' && event.name === 'AUTHENTICATE' && event.args.length === 1) parser.expectSaslResponse();
};

interface Run {
  events: ImapParseEvent[];
  fatal: boolean;
}

/**
 * Feeds the chunks, draining after each, and checks the invariants that must
 * hold at every step. Throws (failing the property) on any violation.
 */
function feed(chunks: Uint8Array[], limits: ImapParserLimits, hook?: Hook): Run {
  const parser = new ImapParser(limits);
  const events: ImapParseEvent[] = [];
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
    // Every event consumes input or changes state; a few more than the bytes
    // pushed (plus one continuation per literal) is a generous bound.
    let guard = 2 * pushed + 10;
    for (let event = parser.next(); event !== null; event = parser.next()) {
      if (--guard < 0) throw new Error('next() never returned null');
      checkEvent(event);
      events.push(event);
      hook?.(parser, event);
      if (event.type === 'error' && event.fatal) {
        fatal = true;
        expect(parser.bufferedBytes).toBe(0);
        expect(parser.next()).toBeNull();
        break;
      }
    }
    if (!fatal) {
      // Drained: what is left is one incomplete line or literal, within limits.
      expect(parser.bufferedBytes).toBeLessThanOrEqual(Math.max(limits.maxLineBytes + 1, limits.maxLiteralBytes));
    }
  }
  return { events, fatal };
}

function checkEvent(event: ImapParseEvent): void {
  if (event.type === 'error') {
    // A fixed string from the parser's source, never client bytes.
    expect(PARSER_SOURCE.includes(`'${event.message}'`), `message ${JSON.stringify(event.message)}`).toBe(true);
    expect(event.message).not.toBe('Internal parser error');
    // The session echoes it in a tagged response; the compiler throws on an invalid tag.
    if (event.tag !== null) expect(isValidTag(event.tag), `tag ${JSON.stringify(event.tag)}`).toBe(true);
  }
  if (event.type === 'command') {
    expect(isValidTag(event.tag)).toBe(true);
    expect(isValidAtom(event.name)).toBe(true);
    expect(event.name).toBe(event.name.toUpperCase());
  }
}

/** Small random limits: random input of a few hundred bytes then reaches every limit's edge. */
const smallLimitsArb: fc.Arbitrary<ImapParserLimits> = fc.record({
  maxLineBytes: fc.integer({ min: 1, max: 200 }),
  maxLiteralBytes: fc.integer({ min: 1, max: 80 }),
  maxCommandBytes: fc.integer({ min: 1, max: 400 }),
  maxNesting: fc.integer({ min: 0, max: 4 }),
  maxArgs: fc.integer({ min: 1, max: 12 }),
});

/** Pieces that steer the parser into its interesting states. */
const TOKENS = [
  'a ', 'A1 ', '* ', '+ ', 'tag ', 'LOGIN ', 'login ', 'AUTHENTICATE PLAIN', 'AUTHENTICATE LOGIN ', 'ID ', 'STARTTLS', 'CAPABILITY',
  'alice', 'pw', 'NIL', ' ', '  ', '"', '\\"', '\\\\', '\\x', '(', ')', '((((((', '))))', '{', '}', '{0}', '{1}', '{3}', '{5}', '{5+}', '{0+}', '{12+}',
  '{99999999999}', '{4294967296+}', '~{3}', '\r\n', '\n', '\r', '\0', '\xff', '\x80', 'GET / HTTP/1.1', 'PROXY TCP4 ', '=', 'AGFsaWNlAHB3',
  ']', '%', '[', 'x'.repeat(70),
];

const soupArb = byteSoup(TOKENS, { parts: 80, partBytes: 12 });

const inputArb = fc.oneof(fc.uint8Array({ maxLength: 600 }), soupArb);

describeRandomInput({
  name: 'IMAP',
  inputArb,
  productionLimits: PRODUCTION,
  smallLimitsArb,
  feed: (chunks, limits, withSasl) => feed(chunks, limits, withSasl ? saslHook : undefined),
  // Past the line limit by at least 2 bytes: one more than a CR before the coming LF would explain.
  flood: { minLength: PRODUCTION.maxLineBytes + 2, maxLength: PRODUCTION.maxLineBytes + 800, lfStandIn: 0x20, runs: 40 },
  runs: { anyInput: 3000, chunking: 2000 },
});

// ---- the production limits, exactly ---------------------------------------

type Edge = 'line' | 'literal' | 'sync-literal' | 'command' | 'nesting' | 'args';

const EDGE_REASON: Record<Edge, ImapParseErrorReason> = {
  line: 'line-too-long',
  literal: 'literal-too-large',
  'sync-literal': 'literal-too-large',
  command: 'command-too-large',
  nesting: 'nesting-too-deep',
  args: 'too-many-args',
};

/**
 * Tag `a`'s command, whose size in the limit `edge` measures is the production
 * limit plus `over`: line bytes, literal bytes, command bytes (lines without
 * CRLF plus literals), list depth, or arguments. Then `b NOOP`, which must be
 * parsed whenever the refusal is not fatal.
 */
function atTheLimit(edge: Edge, over: number, data: (n: number) => Buffer): Buffer {
  const L = PRODUCTION;
  const parts: Buffer[] = [];
  const text = (s: string) => parts.push(Buffer.from(s, 'latin1'));
  switch (edge) {
    case 'line':
      text(`a X ${'y'.repeat(L.maxLineBytes - 'a X '.length + over)}\r\n`);
      break;
    case 'literal':
      text(`a X {${L.maxLiteralBytes + over}+}\r\n`);
      parts.push(data(L.maxLiteralBytes + over));
      text('\r\n');
      break;
    case 'sync-literal':
      text(`a X {${L.maxLiteralBytes + over}}\r\n`);
      // A refused synchronising literal gets no "+", so the client never sends its bytes.
      if (over <= 0) {
        parts.push(data(L.maxLiteralBytes + over));
        text('\r\n');
      }
      break;
    case 'command': {
      // Full-size literals, then a last line segment that brings the total to the limit.
      const marker = ` {${L.maxLiteralBytes}+}`;
      const perLiteral = marker.length + L.maxLiteralBytes;
      const count = Math.floor((L.maxCommandBytes - 'a X '.length - 1) / perLiteral);
      const last = L.maxCommandBytes + over - 'a X'.length - count * perLiteral - ' '.length;
      expect(last).toBeGreaterThan(0);
      expect(last + 1).toBeLessThanOrEqual(L.maxLineBytes);
      text('a X');
      for (let i = 0; i < count; i++) {
        text(`${marker}\r\n`);
        parts.push(data(L.maxLiteralBytes));
      }
      text(` ${'y'.repeat(last)}\r\n`);
      break;
    }
    case 'nesting':
      text(`a X ${'('.repeat(L.maxNesting + over)}${')'.repeat(L.maxNesting + over)}\r\n`);
      break;
    case 'args':
      text(`a X${' z'.repeat(L.maxArgs + over)}\r\n`);
      break;
  }
  text('b NOOP\r\n');
  return Buffer.concat(parts);
}

describe('IMAP parser at the production limits', () => {
  it('accepts a command at each production limit and refuses one past it, however the bytes are chunked', () => {
    // Literal bytes: anything but NUL (which IMAP cannot carry), CR and LF included.
    const dataArb = fc.integer({ min: 0, max: 0xffff_ffff }).map((seed) => (n: number) => {
      const out = Buffer.alloc(n);
      let x = seed | 1;
      for (let i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >>> 17;
        x ^= x << 5;
        out[i] = (x & 0xff) || 0x61;
      }
      return out;
    });
    const edgeArb = fc.constantFrom<Edge>('line', 'literal', 'sync-literal', 'command', 'nesting', 'args');
    fc.assert(
      fc.property(edgeArb, fc.integer({ min: -2, max: 2 }), dataArb, fc.array(fc.nat(), { maxLength: 12 }), (edge, over, data, points) => {
        const input = atTheLimit(edge, over, data);
        const run = feed(cut(new Uint8Array(input), points), PRODUCTION);
        // Everything about `a` (a line too long to read has no tag yet): all but its "+" and b's NOOP.
        const ofA = run.events.filter((e) => e.type !== 'literal-continuation' && !(e.type === 'command' && e.tag === 'b'));
        if (over <= 0) {
          expect(ofA.map((e) => e.type)).toEqual(['command']);
        } else {
          expect(ofA).toEqual([expect.objectContaining({ type: 'error', reason: EDGE_REASON[edge] })]);
        }
        // Past the line, literal or command limit the client is cut off (it would send the bytes anyway);
        // a refused synchronising literal (never sent), list depth or argument count costs just the command.
        const fatal = over > 0 && (edge === 'line' || edge === 'literal' || edge === 'command');
        expect(run.fatal).toBe(fatal);
        if (!fatal) expect(run.events.at(-1)).toMatchObject({ type: 'command', tag: 'b', name: 'NOOP' });
      }),
      { numRuns: 300 },
    );
  });
});

// ---- credential provenance ------------------------------------------------

/** How a credential is written on the wire. */
type Form = 'atom' | 'quoted' | 'literal' | 'literal+';

/** RFC 9051 ASTRING-CHAR minus the few that make an atom ambiguous. */
const atomArb = fc.stringMatching(/^[A-Za-z0-9._@!#$&'+,\-/:;<=>?^`|~]{1,12}$/).filter((a) => a.toUpperCase() !== 'NIL');
/** Any bytes but NUL (impossible in IMAP), so literals carry CR, LF, quotes, braces... */
const credentialBytesArb = fc.uint8Array({ minLength: 1, maxLength: 24 }).filter((u) => !u.includes(0));
const quotableArb = fc.stringMatching(/^[\x20-\x7e]{0,16}$/);

function encodeArg(value: Buffer, form: Form): Buffer {
  switch (form) {
    case 'atom':
      return value;
    case 'quoted':
      return Buffer.from(`"${value.toString('latin1').replace(/[\\"]/g, (c) => `\\${c}`)}"`, 'latin1');
    case 'literal':
      return Buffer.concat([Buffer.from(`{${value.length}}\r\n`, 'latin1'), value]);
    case 'literal+':
      return Buffer.concat([Buffer.from(`{${value.length}+}\r\n`, 'latin1'), value]);
  }
}

const credentialArb: fc.Arbitrary<{ value: Buffer; form: Form }> = fc.oneof(
  atomArb.map((a) => ({ value: Buffer.from(a, 'latin1'), form: 'atom' as Form })),
  quotableArb.map((q) => ({ value: Buffer.from(q, 'latin1'), form: 'quoted' as Form })),
  fc.tuple(credentialBytesArb, fc.constantFrom<Form>('literal', 'literal+')).map(([u, form]) => ({ value: Buffer.from(u), form })),
);

const loginArb = fc.record({ tag: fc.stringMatching(/^[A-Za-z0-9]{1,6}$/), user: credentialArb, pass: credentialArb });
type Login = { tag: string; user: { value: Buffer; form: Form }; pass: { value: Buffer; form: Form } };

function loginBytes(l: Login): Buffer {
  return Buffer.concat([Buffer.from(`${l.tag} LOGIN `, 'latin1'), encodeArg(l.user.value, l.user.form), Buffer.from(' '), encodeArg(l.pass.value, l.pass.form), Buffer.from('\r\n')]);
}

/** Garbage that ends its own line and cannot announce a literal, so it never swallows the next command. */
const lineGarbageArb = fc
  .uint8Array({ maxLength: 40 })
  .map((u) => Buffer.concat([Buffer.from(u.filter((b) => b !== 0x7b && b !== 0x0a && b !== 0x0d)), Buffer.from('\r\n')]));

/** Anything at all, literals announcements included. */
const wildGarbageArb = fc.oneof(fc.uint8Array({ maxLength: 40 }).map((u) => Buffer.from(u)), soupArb.map((u) => Buffer.from(u)));

function argValue(arg: ImapArg | undefined): { bytes: Buffer; wire: Buffer[] } | null {
  if (!arg) return null;
  if (arg.kind === 'atom') return { bytes: Buffer.from(arg.value, 'latin1'), wire: [Buffer.from(arg.value, 'latin1')] };
  if (arg.kind !== 'string') return null;
  if (!arg.literal) return { bytes: arg.value, wire: [encodeArg(arg.value, 'quoted')] };
  // A literal's bytes follow its announcement and the line end (CRLF or a bare LF).
  const n = arg.value.length;
  return {
    bytes: arg.value,
    wire: [`{${n}}\r\n`, `{${n}}\n`, `{${n}+}\r\n`, `{${n}+}\n`].map((head) => Buffer.concat([Buffer.from(head, 'latin1'), arg.value])),
  };
}

/**
 * Every LOGIN's and AUTHENTICATE's arguments occur in the input exactly in the
 * form the parser says it read them, and every SASL response is one input line.
 */
function assertProvenance(input: Buffer, events: ImapParseEvent[]): void {
  for (const event of events) {
    if (event.type === 'sasl-response') {
      const ends = [Buffer.from('\r\n'), Buffer.from('\n')].map((end) => Buffer.concat([event.line, end]));
      expect(ends.some((line) => input.includes(line)), `SASL line ${JSON.stringify(event.line.toString('latin1'))} is not in the input`).toBe(true);
      continue;
    }
    if (event.type !== 'command' || (event.name !== 'LOGIN' && event.name !== 'AUTHENTICATE')) continue;
    for (const arg of event.args) {
      const v = argValue(arg);
      if (!v) continue;
      const found = v.wire.some((w) => input.includes(w));
      expect(found, `LOGIN argument ${JSON.stringify(v.bytes.toString('latin1'))} is not in the input`).toBe(true);
    }
  }
}

describe('IMAP parser: LOGIN credentials come from the input, verbatim', () => {
  it.each([
    ['with the production limits', fc.constant(PRODUCTION)],
    ['with small random limits', smallLimitsArb],
  ])('%s: every LOGIN/AUTHENTICATE argument and SASL line appears in the input in its wire form, whatever garbage surrounds it', (_label, limitsArb) => {
    fc.assert(
      fc.property(
        fc.array(fc.oneof(loginArb.map((l) => loginBytes(l)), wildGarbageArb), { maxLength: 12 }),
        fc.array(fc.nat(), { maxLength: 10 }),
        limitsArb,
        (parts, points, limits) => {
          const input = Buffer.concat(parts);
          // The session answers "+" to synchronising literals; the parser does not care, the bytes just follow.
          const run = feed(cut(new Uint8Array(input), points), limits, saslHook);
          assertProvenance(input, run.events);
        },
      ),
      { numRuns: 2000 },
    );
  });

  it('valid LOGINs between garbage lines yield exactly their credentials, in order', () => {
    fc.assert(
      fc.property(
        fc.array(fc.oneof({ weight: 2, arbitrary: loginArb.map((l) => ({ login: l as Login | null, bytes: loginBytes(l) })) }, lineGarbageArb.map((g) => ({ login: null as Login | null, bytes: g }))), {
          maxLength: 14,
        }),
        fc.array(fc.nat(), { maxLength: 10 }),
        (parts, points) => {
          const input = Buffer.concat(parts.map((p) => p.bytes));
          const run = feed(cut(new Uint8Array(input), points), PRODUCTION);
          const expected = parts.filter((p) => p.login).map((p) => [p.login!.tag, p.login!.user.value.toString('latin1'), p.login!.pass.value.toString('latin1')]);
          const got = run.events
            .filter((e): e is Extract<ImapParseEvent, { type: 'command' }> => e.type === 'command' && e.name === 'LOGIN')
            .map((e) => [e.tag, argValue(e.args[0])!.bytes.toString('latin1'), argValue(e.args[1])!.bytes.toString('latin1')]);
          // Garbage lines can only fail themselves (or, if fatal, end the stream): valid LOGINs are
          // never altered, merged or invented.
          if (run.fatal) expect(expected.slice(0, got.length)).toEqual(got);
          else expect(got).toEqual(expected);
          for (const e of run.events) if (e.type === 'command' && e.name === 'LOGIN') expect(e.args).toHaveLength(2);
        },
      ),
      { numRuns: 700 },
    );
  });
});
