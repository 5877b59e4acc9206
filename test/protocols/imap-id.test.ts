import { describe, expect, it } from 'vitest';
import { FIXED_LIMITS } from '../../src/config/limits.js';
import { clientIdSummary, parseIdArgs } from '../../src/protocols/imap/id.js';
import { ImapParser, type ImapArg } from '../../src/protocols/imap/parser.js';

/** Arguments of an ID command exactly as the parser produces them. */
function idArgs(rest: string | Buffer): ImapArg[] {
  const parser = new ImapParser();
  parser.push(Buffer.concat([Buffer.from('a ID '), Buffer.from(rest), Buffer.from('\r\n')]));
  for (let event = parser.next(); event !== null; event = parser.next()) {
    if (event.type === 'command') return event.args;
    if (event.type === 'error') throw new Error(`parse error: ${event.reason}`);
  }
  throw new Error('no command');
}

function fieldsOf(rest: string | Buffer): Map<string, string | null> {
  const result = parseIdArgs(idArgs(rest));
  if (!result.ok) throw new Error(`unexpected failure: ${result.message}`);
  return result.fields;
}

function failure(rest: string | Buffer): string {
  const result = parseIdArgs(idArgs(rest));
  if (result.ok) throw new Error('expected a failure');
  return result.message;
}

describe('parseIdArgs', () => {
  it('accepts NIL and the empty list as no fields', () => {
    expect(fieldsOf('NIL')).toEqual(new Map());
    expect(fieldsOf('nil')).toEqual(new Map());
    expect(fieldsOf('()')).toEqual(new Map());
  });

  it('reads field/value pairs, lower-casing the field names', () => {
    expect(fieldsOf('("Name" "Thunderbird" "VERSION" "115.3.1" "vendor" NIL)')).toEqual(
      new Map<string, string | null>([
        ['name', 'Thunderbird'],
        ['version', '115.3.1'],
        ['vendor', null],
      ]),
    );
  });

  it('accepts atoms and literals leniently', () => {
    expect(fieldsOf('(name iPhone version 17.1)')).toEqual(
      new Map([
        ['name', 'iPhone'],
        ['version', '17.1'],
      ]),
    );
    expect(fieldsOf('({4+}\r\nname {6+}\r\nMutt\u00e9)')).toEqual(new Map([['name', 'Mutté']]));
  });

  it('decodes UTF-8 and strips control characters from stored values', () => {
    expect(fieldsOf('("name" "K-9 \u00e9\u2713" "os" "line1\tline2\x01")')).toEqual(
      new Map([
        ['name', 'K-9 é✓'],
        ['os', 'line1line2'],
      ]),
    );
    // A literal can smuggle CR/LF; it must not survive into a log line.
    expect(fieldsOf('("name" {7+}\r\nx\r\ny\nzz)').get('name')).toBe('xyzz');
  });

  it('keeps the first of duplicate fields, case-insensitively', () => {
    expect(fieldsOf('("name" "first" "NAME" "second" "name" NIL)')).toEqual(new Map([['name', 'first']]));
  });

  it('accepts the RFC 2971 maxima', () => {
    const pairs = Array.from({ length: 30 }, (_, i) => `"f${i}" "v"`).join(' ');
    expect(fieldsOf(`(${pairs})`).size).toBe(30);
    expect(fieldsOf(`("${'f'.repeat(30)}" "${'v'.repeat(1024)}")`).get('f'.repeat(30))).toBe('v'.repeat(1024));
  });

  it('rejects anything beyond them', () => {
    const pairs = Array.from({ length: 31 }, (_, i) => `"f${i}" "v"`).join(' ');
    expect(failure(`(${pairs})`)).toMatch(/too many/i);
    expect(failure(`("${'f'.repeat(31)}" "v")`)).toMatch(/field name too long/i);
    expect(failure(`("f" "${'v'.repeat(1025)}")`)).toMatch(/value too long/i);
    // Octets, not characters: 513 two-byte characters are 1026 octets.
    expect(failure(`("f" "${'\u00e9'.repeat(513)}")`)).toMatch(/value too long/i);
  });

  it('rejects malformed argument lists', () => {
    expect(parseIdArgs([]).ok).toBe(false);
    expect(failure('NIL NIL')).toMatch(/exactly one/);
    expect(failure('"name"')).toMatch(/list or NIL/);
    expect(failure('("name")')).toMatch(/pairs/);
    expect(failure('("name" "x" "version")')).toMatch(/pairs/);
    expect(failure('(NIL "x")')).toMatch(/field name/);
    expect(failure('(("name") "x")')).toMatch(/field name/);
    expect(failure('("name" ("x"))')).toMatch(/value/);
  });
});

describe('clientIdSummary', () => {
  it('picks name and version', () => {
    expect(clientIdSummary(fieldsOf('("name" "Thunderbird" "version" "115.3.1" "os" "Linux")'))).toEqual({
      name: 'Thunderbird',
      version: '115.3.1',
    });
  });

  it('omits missing and NIL values', () => {
    expect(clientIdSummary(fieldsOf('("name" "Mutt" "version" NIL)'))).toEqual({ name: 'Mutt' });
    expect(clientIdSummary(new Map())).toEqual({});
  });

  const MAX = FIXED_LIMITS.imap_id_log_max_chars;

  it(`truncates to ${MAX} characters without splitting a surrogate pair`, () => {
    const long = `${'n'.repeat(MAX - 1)}😀😀`;
    const summary = clientIdSummary(new Map([['name', long], ['version', 'v'.repeat(MAX + 36)]]));
    expect(summary.name).toBe(`${'n'.repeat(MAX - 1)}😀`);
    expect(summary.version).toBe('v'.repeat(MAX));
  });
});
