/**
 * RFC 2971 ID parameter list, as sent by a client before login.
 *
 * The values only ever end up in logs and in the ID we forward upstream, so
 * they are decoded leniently (atoms accepted where strings are required, as
 * some clients send them) but bounded strictly and stripped of control
 * characters, which could otherwise forge log lines.
 */

import { FIXED_LIMITS } from '../../config/limits.js';
import { sanitizeText } from './compiler.js';
import type { ImapArg } from './parser.js';

/** RFC 2971's sizes, the same ones the ID sent upstream is held to (compiler.ts). */
const MAX_FIELD_BYTES = FIXED_LIMITS.imap_id_max_field_bytes;
const MAX_VALUE_BYTES = FIXED_LIMITS.imap_id_max_value_bytes;
const MAX_PAIRS = FIXED_LIMITS.imap_id_max_pairs;
const SUMMARY_MAX_CHARS = FIXED_LIMITS.imap_id_log_max_chars;

export type IdFields = Map<string, string | null>;

export type ParseIdResult = { ok: true; fields: IdFields } | { ok: false; message: string };

export function parseIdArgs(args: ImapArg[]): ParseIdResult {
  if (args.length !== 1) return { ok: false, message: 'ID takes exactly one argument' };
  const arg = args[0]!;
  if (arg.kind === 'nil') return { ok: true, fields: new Map() };
  if (arg.kind !== 'list') return { ok: false, message: 'ID argument must be a list or NIL' };

  const items = arg.items;
  if (items.length % 2 !== 0) return { ok: false, message: 'ID list must hold field/value pairs' };
  if (items.length / 2 > MAX_PAIRS) return { ok: false, message: 'Too many ID fields' };

  const fields: IdFields = new Map();
  for (let i = 0; i < items.length; i += 2) {
    const field = stringBytes(items[i]!);
    if (field === null) return { ok: false, message: 'ID field name must be a string' };
    if (field.length > MAX_FIELD_BYTES) return { ok: false, message: 'ID field name too long' };

    const valueArg = items[i + 1]!;
    let value: string | null = null;
    if (valueArg.kind !== 'nil') {
      const bytes = stringBytes(valueArg);
      if (bytes === null) return { ok: false, message: 'ID value must be a string or NIL' };
      if (bytes.length > MAX_VALUE_BYTES) return { ok: false, message: 'ID value too long' };
      value = sanitizeText(bytes.toString('utf8'));
    }

    const key = sanitizeText(field.toString('utf8')).toLowerCase();
    // RFC 2971 leaves duplicates undefined; the first one wins so a later pair cannot override a logged value.
    if (!fields.has(key)) fields.set(key, value);
  }
  return { ok: true, fields };
}

/** The client's name and version for logs, each at most `imap_id_log_max_chars` characters. */
export function clientIdSummary(fields: IdFields): { name?: string; version?: string } {
  const summary: { name?: string; version?: string } = {};
  const name = fields.get('name');
  const version = fields.get('version');
  if (typeof name === 'string') summary.name = truncate(name);
  if (typeof version === 'string') summary.version = truncate(version);
  return summary;
}

function stringBytes(arg: ImapArg): Buffer | null {
  if (arg.kind === 'string') return arg.value;
  if (arg.kind === 'atom') return Buffer.from(arg.value, 'latin1');
  return null;
}

function truncate(text: string): string {
  // By code point, so a surrogate pair is never cut in half.
  const chars = Array.from(text);
  return chars.length > SUMMARY_MAX_CHARS ? chars.slice(0, SUMMARY_MAX_CHARS).join('') : text;
}
