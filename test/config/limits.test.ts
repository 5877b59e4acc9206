/**
 * Issue 5: every limit is configurable (or fixed), collected in
 * src/config/limits.ts with a line saying why its default is what it is, and
 * the schema takes its defaults from there.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { FIXED_LIMITS, LIMIT_DEFAULTS, LIMIT_MAXIMA, imapMaxCommandBytes } from '../../src/config/limits.js';
import { ConfigError, parseConfig } from '../../src/config/load.js';
import { DEFAULT_IMAP_PARSER_LIMITS, ImapParser, imapParserLimits, type ImapParseEvent, type ImapParserLimits } from '../../src/protocols/imap/parser.js';
import { DEFAULT_POP3_PARSER_LIMITS, Pop3Parser, pop3ParserLimits, type Pop3ParserLimits } from '../../src/protocols/pop3/parser.js';
import { SaslExchange } from '../../src/protocols/sasl.js';
import { ROOT } from '../support/cli.js';

const SOURCE = readFileSync(path.join(ROOT, 'src/config/limits.ts'), 'utf8');

/** The body of `export const NAME = { ... } as const;` in limits.ts. */
function objectBody(name: string): string {
  const match = new RegExp(`export const ${name} = \\{\\n([\\s\\S]*?)\\n\\} as const;`).exec(SOURCE);
  if (!match) throw new Error(`${name} not found in limits.ts`);
  return match[1]!;
}

/** Keys of an object literal whose entry is not directly preceded by a doc comment. */
function keysWithoutWhy(body: string): string[] {
  const lines = body.split('\n');
  const missing: string[] = [];
  lines.forEach((line, i) => {
    const key = /^ {2}([a-z0-9_]+):/.exec(line)?.[1];
    if (!key) return;
    const previous = lines
      .slice(0, i)
      .reverse()
      .find((l) => l.trim() !== '');
    if (!previous?.trim().endsWith('*/')) missing.push(key);
  });
  return missing;
}

/** Where the schema keeps a key: `section.key`, searched over the parsed defaults. */
function defaultsByKey(): Map<string, unknown[]> {
  const config = parseConfig({}, 'defaults') as unknown as Record<string, Record<string, unknown>>;
  const byKey = new Map<string, unknown[]>();
  for (const section of ['store', 'auth', 'timeouts', 'limits']) {
    for (const [key, value] of Object.entries(config[section]!)) byKey.set(key, [...(byKey.get(key) ?? []), value]);
  }
  // The page's keys are named web_<key> there ([web] listen is not [[listen]]).
  for (const [key, value] of Object.entries(config.web!)) byKey.set(`web_${key}`, [...(byKey.get(`web_${key}`) ?? []), value]);
  return byKey;
}

function refusal(raw: unknown): string | null {
  try {
    parseConfig(raw, 'f.toml');
    return null;
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as Error).message;
  }
}

describe('limits in one place', () => {
  it.each(['LIMIT_DEFAULTS', 'LIMIT_MAXIMA', 'FIXED_LIMITS'])('every entry of %s has a line saying why', (name) => {
    const body = objectBody(name);
    const keys = Object.keys({ LIMIT_DEFAULTS, LIMIT_MAXIMA, FIXED_LIMITS }[name]!);
    // The parser above sees exactly the object's keys, so a missing comment cannot hide.
    expect(body.match(/^ {2}[a-z0-9_]+:/gm)?.length).toBe(keys.length);
    expect(keysWithoutWhy(body)).toEqual([]);
  });

  it('the schema takes each configurable default from limits.ts', () => {
    const byKey = defaultsByKey();
    for (const [key, value] of Object.entries(LIMIT_DEFAULTS)) {
      expect(byKey.get(key), `schema default of ${key}`).toEqual([value]);
    }
  });

  it('the timeouts, caches and store wait named in issue 5 are collected there', () => {
    for (const key of [
      'shutdown_grace_seconds',
      'revocation_check_seconds',
      'upstream_connect_seconds',
      'upstream_response_seconds',
      'session_idle_seconds',
      'gateway_busy_timeout_ms',
      'login_cache_max_entries',
      'failed_login_cache_max_entries',
    ]) {
      expect(LIMIT_DEFAULTS, key).toHaveProperty(key);
    }
    for (const key of ['sasl_max_decoded_bytes', 'imap_max_tag_bytes', 'abuse_max_fingerprints', 'proxy_v1_max_bytes', 'proxy_v2_max_bytes']) {
      expect(FIXED_LIMITS, key).toHaveProperty(key);
    }
  });

  it('keeps revocation checks frequent enough to close a revoked session within 5 seconds', () => {
    expect(LIMIT_MAXIMA.revocation_check_seconds).toBeLessThanOrEqual(5);
    expect(LIMIT_DEFAULTS.revocation_check_seconds).toBeLessThanOrEqual(LIMIT_MAXIMA.revocation_check_seconds);
    expect(parseConfig({ timeouts: { revocation_check_seconds: 5 } }, 'f').timeouts.revocation_check_seconds).toBe(5);
    expect(refusal({ timeouts: { revocation_check_seconds: 6 } })).toMatch(/^f\.toml: timeouts\.revocation_check_seconds: .*5/);
    expect(refusal({ timeouts: { revocation_check_seconds: 60 } })).not.toBeNull();
  });

  it('caps how long a gateway write may freeze the event loop', () => {
    expect(refusal({ store: { gateway_busy_timeout_ms: LIMIT_MAXIMA.gateway_busy_timeout_ms } })).toBeNull();
    expect(refusal({ store: { gateway_busy_timeout_ms: LIMIT_MAXIMA.gateway_busy_timeout_ms + 1 } })).toMatch(
      /^f\.toml: store\.gateway_busy_timeout_ms: /,
    );
  });

  it('sizes the refusal cache for every kind of repeated failure, and keeps it bounded (a few MiB)', () => {
    // Catches: a cache so small that a storm's distinct guesses evict the repeats it exists for,
    // or one that grows without bound.
    const { auth } = parseConfig({}, 'defaults');
    expect(auth.failed_login_cache_max_entries).toBe(10_000);
    expect(auth.failed_login_cache_max_entries).toBeLessThanOrEqual(auth.login_cache_max_entries);
  });
});

/** The limits a parser was built with: private, read here only to compare them with production's. */
function limitsOf<T>(parser: ImapParser | Pop3Parser | SaslExchange, field = 'limits'): T {
  return (parser as unknown as Record<string, T>)[field]!;
}

/** Every event a default ImapParser gives for `input`. */
function imapEvents(input: string): ImapParseEvent[] {
  const parser = new ImapParser();
  parser.push(Buffer.from(input, 'latin1'));
  const events: ImapParseEvent[] = [];
  for (let e = parser.next(); e !== null; e = parser.next()) events.push(e);
  return events;
}

describe('the parsers run the limits production runs (issue 11)', () => {
  // What a gateway with the default configuration runs: the schema's defaults, which are LIMIT_DEFAULTS.
  const { limits } = parseConfig({}, 'defaults');

  it('a default ImapParser has the limits of the default configuration: 24,576 command bytes, not a restated 16,384', () => {
    // Catches: parser defaults restated in the parser (they said 16,384 command bytes where production used 24,576).
    const production: ImapParserLimits = {
      maxLineBytes: limits.imap_max_line_bytes,
      maxLiteralBytes: limits.imap_max_literal_bytes,
      maxCommandBytes: imapMaxCommandBytes(limits.imap_max_line_bytes, limits.imap_max_literal_bytes),
      maxNesting: limits.imap_max_nesting,
      maxArgs: FIXED_LIMITS.imap_max_args,
    };
    expect(imapParserLimits(limits)).toEqual(production);
    expect(imapParserLimits(LIMIT_DEFAULTS)).toEqual(production);
    expect(DEFAULT_IMAP_PARSER_LIMITS).toEqual(production);
    expect(limitsOf<ImapParserLimits>(new ImapParser())).toEqual(production);
    // Pinned on purpose: changing what a client may send before login deserves a failing test to update.
    expect(production.maxCommandBytes).toBe(24_576);
  });

  it('a default ImapParser takes a command of exactly the production size, and refuses one byte more', () => {
    // Catches: the same drift, seen from the outside; it does not depend on the parser's field names.
    const { maxLineBytes, maxLiteralBytes, maxCommandBytes } = imapParserLimits(limits);
    const literal = ` {${maxLiteralBytes}+}\r\n${'x'.repeat(maxLiteralBytes)}`;
    const count = Math.floor((maxCommandBytes - 'a X '.length) / (literal.length - 2));
    const last = maxCommandBytes - 'a X'.length - count * (literal.length - 2) - ' '.length;
    expect(last + 1).toBeLessThanOrEqual(maxLineBytes);
    const command = (pad: number) => `a X${literal.repeat(count)} ${'y'.repeat(pad)}\r\n`;
    expect(imapEvents(command(last)).map((e) => e.type)).toEqual(['command']);
    expect(imapEvents(command(last + 1))).toEqual([expect.objectContaining({ type: 'error', reason: 'command-too-large', fatal: true })]);
  });

  it('a default Pop3Parser has the limits of the default configuration, the SASL line limit included', () => {
    // Catches: a POP3 SASL line limit kept in the parser instead of limits.ts, or defaults that drift.
    const production: Pop3ParserLimits = { maxLineBytes: limits.pop3_max_line_bytes, maxSaslLineBytes: FIXED_LIMITS.pop3_max_sasl_line_bytes };
    expect(pop3ParserLimits(limits)).toEqual(production);
    expect(DEFAULT_POP3_PARSER_LIMITS).toEqual(production);
    expect(limitsOf<Pop3ParserLimits>(new Pop3Parser())).toEqual(production);
  });

  it('a default SaslExchange (as sessions make them) caps decoded responses at the fixed limit', () => {
    expect(limitsOf<number>(new SaslExchange('PLAIN'), 'maxDecodedBytes')).toBe(FIXED_LIMITS.sasl_max_decoded_bytes);
  });

  it('a POP3 SASL line can carry the largest decoded SASL response', () => {
    // Catches: a line limit below the base64 of sasl_max_decoded_bytes, which would cut off (fatally)
    // a response SASL itself accepts.
    expect(FIXED_LIMITS.pop3_max_sasl_line_bytes).toBeGreaterThanOrEqual(Math.ceil(FIXED_LIMITS.sasl_max_decoded_bytes / 3) * 4);
  });

  it('src/protocols states no limit of its own: every number there comes from limits.ts or is protocol syntax', () => {
    // Catches: a new bare limit (`const MAX_X = 512`, `maxLineBytes: 8192`) that would drift from production's.
    // Protocol syntax, not limits: byte codes (hex), the parser's character-class bits, and the digits of
    // an RFC 9051 number (a 32-bit value has at most 10).
    const SYNTAX = new Set(['ATOM_CHAR', 'ASTRING_CHAR', 'TAG_CHAR', 'MAX_LITERAL_DIGITS']);
    const dir = path.join(ROOT, 'src/protocols');
    const files = readdirSync(dir, { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.ts'));
    expect(files.length).toBeGreaterThanOrEqual(8);
    const found: string[] = [];
    for (const file of files) {
      const source = readFileSync(path.join(dir, file), 'utf8');
      for (const m of source.matchAll(/^(?:export )?const ([A-Z][A-Z0-9_]*)(?:: [^=]+)? = (\d[\d_]*)\b/gm)) {
        if (!SYNTAX.has(m[1]!)) found.push(`${file}: ${m[1]} = ${m[2]}`);
      }
      for (const m of source.matchAll(/\b(max[A-Za-z]*)\s*:\s*(\d[\d_]*)\b/g)) found.push(`${file}: ${m[1]}: ${m[2]}`);
    }
    expect(found).toEqual([]);
  });
});
