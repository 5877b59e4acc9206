/**
 * Property-based (fast-check) fuzzing of the SASL layer shared by IMAP
 * AUTHENTICATE and POP3 AUTH: the strict base64 decoder and the PLAIN and
 * LOGIN exchanges. Pure: no sockets.
 *
 * What each property would catch if the protection were removed:
 *  - decoder: a throw on hostile text, or a lenient decode (two encodings
 *    of one byte string, stray bits, whitespace) that lets filters be dodged;
 *  - PLAIN: credentials that are not exactly the fields of the decoded
 *    message (a NUL-split bug that shifts bytes from password into username,
 *    an authzid handed over exactly as sent, for the login policy to judge, over-long fields);
 *  - LOGIN: a state machine that takes more turns than it should, accepts
 *    input after it finished, or returns credentials not sent by the client;
 *  - size: an over-long response decoded before it is refused, or a limit
 *    other than production's (src/config/limits.ts, never restated here):
 *    a response of exactly the decoded limit refused as too long, or one
 *    byte past it accepted.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { FIXED_LIMITS } from '../../src/config/limits.js';
import { decodeBase64Strict, SaslExchange, type SaslStep } from '../../src/protocols/sasl.js';

/** Production's limits: sessions construct SaslExchange without options, as these tests do. */
const MAX_FIELD = FIXED_LIMITS.sasl_max_field_bytes;
const MAX_DECODED = FIXED_LIMITS.sasl_max_decoded_bytes;
/** The longest base64 text that can decode to at most MAX_DECODED bytes. */
const MAX_ENCODED = Math.ceil(MAX_DECODED / 3) * 4;

const SEED = Number(process.env.FUZZ_SEED ?? 0x5a51);
fc.configureGlobal({ seed: SEED, numRuns: 1000, endOnFailure: true });

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
function isUtf8(bytes: Uint8Array): boolean {
  try {
    utf8.decode(bytes);
    return true;
  } catch {
    return false;
  }
}

const base64CharsArb = fc.stringMatching(/^[A-Za-z0-9+/=*\-_ \r\n.]{0,60}$/);
const anyTextArb = fc.oneof(base64CharsArb, fc.string({ maxLength: 60 }), fc.uint8Array({ maxLength: 60 }).map((u) => Buffer.from(u).toString('latin1')));

describe('strict base64', () => {
  it('never throws, and whatever it accepts re-encodes to exactly the input', () => {
    fc.assert(
      fc.property(anyTextArb, (text) => {
        const decoded = decodeBase64Strict(text);
        if (decoded !== null) expect(decoded.toString('base64')).toBe(text);
      }),
      { numRuns: 5000 },
    );
  });

  it('round-trips any bytes', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => {
        expect(decodeBase64Strict(Buffer.from(bytes).toString('base64'))).toEqual(Buffer.from(bytes));
      }),
    );
  });
});

/** Field bytes biased towards the interesting ones: NUL, CR, LF, quotes, non-UTF-8, long runs. */
const fieldArb = fc.oneof(
  fc.uint8Array({ maxLength: 20 }),
  fc.array(fc.constantFrom(0x00, 0x0d, 0x0a, 0x22, 0x5c, 0x41, 0x61, 0x20, 0xc3, 0xa9, 0xff, 0xfe), { maxLength: 12 }).map((a) => Uint8Array.from(a)),
  fc.integer({ min: MAX_FIELD - 5, max: MAX_FIELD + 45 }).map((n) => new Uint8Array(n).fill(0x61)),
  fc.constantFrom(new Uint8Array(0), Uint8Array.from(Buffer.from('alice')), Uint8Array.from(Buffer.from('ALICE '))),
);

/** The RFC 4616 verdict, computed independently of the implementation. */
function plainOracle(authzid: Uint8Array, authcid: Uint8Array, passwd: Uint8Array): 'done' | 'error' {
  if ([authzid, authcid, passwd].some((f) => f.includes(0))) return 'error';
  if (authcid.length === 0 || passwd.length === 0) return 'error';
  if (authzid.length > MAX_FIELD || authcid.length > MAX_FIELD || passwd.length > MAX_FIELD) return 'error';
  if (!isUtf8(authzid) || !isUtf8(authcid)) return 'error';
  return 'done';
}

function expectNoThrow(run: () => SaslStep): SaslStep {
  let step: SaslStep | undefined;
  expect(() => {
    step = run();
  }).not.toThrow();
  return step!;
}

describe('SASL PLAIN', () => {
  it('returns exactly the fields of the decoded message, and only for a valid one', () => {
    fc.assert(
      fc.property(fieldArb, fieldArb, fieldArb, fc.boolean(), (authzid, authcid, passwd, asInitial) => {
        const message = Buffer.concat([authzid, Buffer.from([0]), authcid, Buffer.from([0]), passwd]);
        const exchange = new SaslExchange('plain');
        let step = expectNoThrow(() => exchange.start(asInitial ? message.toString('base64') : undefined));
        if (!asInitial) {
          expect(step).toEqual({ type: 'challenge', data: '' });
          step = expectNoThrow(() => exchange.respond(Buffer.from(message.toString('base64'), 'latin1')));
        }
        // Over-long fields may exceed the decoded cap first: either way it is an error.
        expect(step.type).toBe(plainOracle(authzid, authcid, passwd));
        if (step.type === 'done') {
          // The authzid is handed over as sent; the login policy refuses one naming someone else.
          expect(Buffer.from(step.credentials.authzid, 'utf8')).toEqual(Buffer.from(authzid));
          expect(Buffer.from(step.credentials.username, 'utf8')).toEqual(Buffer.from(authcid));
          expect(step.credentials.password).toEqual(Buffer.from(passwd));
        }
        expect(exchange.finished).toBe(true);
        expect(exchange.respond('x').type).toBe('error');
      }),
      { numRuns: 3000 },
    );
  });

  it('never throws on arbitrary text, and any credentials it returns are in the decoded input', () => {
    fc.assert(
      fc.property(anyTextArb, fc.boolean(), (text, asInitial) => {
        const exchange = new SaslExchange('PLAIN');
        const step = asInitial ? expectNoThrow(() => exchange.start(text)) : (exchange.start(), expectNoThrow(() => exchange.respond(text)));
        if (step.type === 'done') {
          const decoded = Buffer.from(text, 'base64');
          expect(decoded.toString('base64')).toBe(text);
          const tail = Buffer.concat([Buffer.from([0]), Buffer.from(step.credentials.username, 'utf8'), Buffer.from([0]), step.credentials.password]);
          expect(decoded.subarray(decoded.length - tail.length)).toEqual(tail);
        }
      }),
      { numRuns: 3000 },
    );
  });
});

describe('SASL LOGIN', () => {
  it('takes at most two challenges, returns exactly what was sent, and accepts nothing after it finished', () => {
    const lineArb = fc.oneof(fc.uint8Array({ maxLength: 30 }).map((u) => Buffer.from(u).toString('base64')), anyTextArb, fc.constantFrom('*', '=', ''));
    fc.assert(
      fc.property(fc.option(lineArb, { nil: undefined }), fc.array(lineArb, { maxLength: 5 }), (initial, lines) => {
        const exchange = new SaslExchange('login');
        let step = expectNoThrow(() => exchange.start(initial));
        const sent: string[] = initial === undefined || initial === '=' ? [] : [initial];
        let challenges = step.type === 'challenge' ? 1 : 0;
        let i = 0;
        while (step.type === 'challenge') {
          if (i >= lines.length) return; // the client went quiet: nothing to check
          const line = lines[i++]!;
          sent.push(line);
          step = expectNoThrow(() => exchange.respond(line));
          if (step.type === 'challenge') challenges += 1;
        }
        expect(challenges).toBeLessThanOrEqual(2);
        if (step.type === 'done') {
          expect(sent).toHaveLength(2);
          expect(Buffer.from(step.credentials.username, 'utf8')).toEqual(decodeBase64Strict(sent[0]!));
          expect(step.credentials.password).toEqual(decodeBase64Strict(sent[1]!));
          expect(step.credentials.password.length).toBeGreaterThan(0);
          expect(step.credentials.password.length).toBeLessThanOrEqual(MAX_FIELD);
        }
        for (const extra of lines.slice(i)) expect(exchange.respond(extra)).toEqual({ type: 'error', reason: 'malformed' });
      }),
      { numRuns: 3000 },
    );
  });
});

describe('SASL framing', () => {
  it('refuses an over-long response by its length alone', () => {
    fc.assert(
      fc.property(fc.integer({ min: MAX_ENCODED + 1, max: 200_000 }), fc.constantFrom('PLAIN', 'LOGIN'), (length, mechanism) => {
        const exchange = new SaslExchange(mechanism);
        exchange.start();
        expect(exchange.respond('A'.repeat(length))).toEqual({ type: 'error', reason: 'too-long' });
      }),
      { numRuns: 100 },
    );
  });

  it('judges a response of up to the production decoded limit by its content, and refuses one byte more as too long', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: -3, max: 3 }),
        fc.uint8Array({ minLength: MAX_DECODED + 3, maxLength: MAX_DECODED + 3 }),
        fc.constantFrom('PLAIN', 'LOGIN'),
        fc.boolean(),
        (over, bytes, mechanism, asInitial) => {
          const text = Buffer.from(bytes.subarray(0, MAX_DECODED + over)).toString('base64');
          const exchange = new SaslExchange(mechanism);
          const step = asInitial && mechanism === 'PLAIN' ? exchange.start(text) : (exchange.start(), exchange.respond(text));
          // Whatever else is wrong with it (fields too long for PLAIN or LOGIN), only the size may say "too long".
          if (over <= 0) expect(step).not.toEqual({ type: 'error', reason: 'too-long' });
          else expect(step).toEqual({ type: 'error', reason: 'too-long' });
        },
      ),
      { numRuns: 300 },
    );
  });

  it('only PLAIN and LOGIN are mechanisms, whatever the client names', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string({ maxLength: 20 }), fc.constantFrom('plain', 'Login', 'PLAIN ', 'CRAM-MD5', 'XOAUTH2', 'GSSAPI', 'ANONYMOUS', 'EXTERNAL')), fc.option(anyTextArb, { nil: undefined }), (name, initial) => {
        const step = expectNoThrow(() => new SaslExchange(name).start(initial));
        if (!['PLAIN', 'LOGIN'].includes(name.toUpperCase())) expect(step).toEqual({ type: 'error', reason: 'unsupported-mechanism' });
      }),
    );
  });
});
