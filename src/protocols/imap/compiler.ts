/**
 * IMAP output: responses mailgate sends to clients, and the few commands it
 * sends upstream (LOGIN, AUTHENTICATE, ID).
 *
 * Responses are strings; every piece of free text goes through sanitizeText()
 * so that nothing, not even an upstream error message or a value derived from
 * client input, can end a response line early and forge the next one.
 * Upstream commands are bytes, because credentials are arbitrary bytes; they
 * are either encoded as exactly one well-formed command or refused.
 */

import { FIXED_LIMITS } from '../../config/limits.js';
import { isValidAtom, isValidTag } from './parser.js';

export type TaggedStatus = 'OK' | 'NO' | 'BAD';
export type UntaggedStatus = 'OK' | 'NO' | 'BAD' | 'BYE' | 'PREAUTH';

/** Arguments of an upstream command: strings are UTF-8 encoded; `{ atom }` is written verbatim. */
export type CommandArg = string | Buffer | { atom: string };

export interface EncodedCommand {
  /**
   * Segment 0 is written first. Without LITERAL+, each following segment may
   * only be written after the server answered the previous one with "+".
   * Every segment ends with CRLF; the last one ends the command.
   */
  segments: Buffer[];
}

/** Longer strings go as literals. */
const MAX_QUOTED_BYTES = FIXED_LIMITS.imap_upstream_max_quoted_bytes;
/** RFC 2971's sizes, the same ones a client's ID is held to (id.ts). */
const ID_MAX_FIELD_BYTES = FIXED_LIMITS.imap_id_max_field_bytes;
const ID_MAX_VALUE_BYTES = FIXED_LIMITS.imap_id_max_value_bytes;
const ID_MAX_PAIRS = FIXED_LIMITS.imap_id_max_pairs;

// C0 controls (CR, LF, NUL included), DEL and C1 controls: none has any business in a response line.
const CONTROL_CHARS = /[\u0000-\u001f\u007f-\u009f]/g;
const NON_PRINTABLE_ASCII = /[^\u0020-\u007e]/g;

/** Remove CR, LF, NUL and every other control character so `text` stays within one response line. */
export function sanitizeText(text: string): string {
  return text.replace(CONTROL_CHARS, '');
}

/**
 * RFC 3501 requires a non-empty text after the status (and after the code), so
 * an empty or all-control text is replaced rather than producing a line some
 * clients cannot parse.
 */
const DEFAULT_TEXT: Record<UntaggedStatus, string> = {
  OK: 'Completed',
  NO: 'Failed',
  BAD: 'Error',
  BYE: 'Logging out',
  PREAUTH: 'Logged in',
};

function respText(status: UntaggedStatus, text: string, code: string | undefined): string {
  const body = sanitizeText(text) || DEFAULT_TEXT[status];
  // A "]" inside the code would close it early and turn the rest into text.
  const cleanCode = code === undefined ? '' : sanitizeText(code).replace(/\]/g, '').trim();
  return cleanCode ? `[${cleanCode}] ${body}` : body;
}

function checkTag(tag: string): void {
  // Tags only ever come from the parser, which validated them; anything else is a programming error.
  if (!isValidTag(tag)) throw new Error('IMAP compiler: invalid tag');
}

/** `A1 NO [AUTHENTICATIONFAILED] text\r\n` */
export function tagged(tag: string, status: TaggedStatus, text: string, code?: string): string {
  checkTag(tag);
  return `${tag} ${status} ${respText(status, text, code)}\r\n`;
}

/** `* NO [ALERT] text\r\n` */
export function untagged(status: UntaggedStatus, text: string, code?: string): string {
  return `* ${status} ${respText(status, text, code)}\r\n`;
}

/** `* CAPABILITY IMAP4rev1 ...\r\n` */
export function untaggedData(text: string): string {
  return `* ${sanitizeText(text)}\r\n`;
}

/** `+ text\r\n`; with no text exactly `+ \r\n`, since some clients (Thunderbird) wait for "+ ". */
export function continuation(text?: string): string {
  return `+ ${text === undefined ? '' : sanitizeText(text)}\r\n`;
}

const CRLF = Buffer.from('\r\n', 'latin1');

/**
 * Encode a command for the upstream server. Strings or buffers containing NUL
 * cannot be expressed in IMAP at all and make the whole command `{ error: 'nul' }`.
 */
export function encodeCommand(
  tag: string,
  name: string,
  args: CommandArg[],
  opts: { literalPlus: boolean },
): EncodedCommand | { error: 'nul' } {
  checkTag(tag);
  if (!isValidAtom(name)) throw new Error('IMAP compiler: invalid command name');

  const segments: Buffer[] = [];
  let current: Buffer[] = [Buffer.from(`${tag} ${name}`, 'latin1')];

  for (const arg of args) {
    current.push(Buffer.from(' ', 'latin1'));
    if (isAtomArg(arg)) {
      if (!isValidAtom(arg.atom)) throw new Error('IMAP compiler: invalid atom argument');
      current.push(Buffer.from(arg.atom, 'latin1'));
      continue;
    }
    const bytes = typeof arg === 'string' ? Buffer.from(arg, 'utf8') : arg;
    if (bytes.includes(0x00)) return { error: 'nul' };
    if (!needsLiteral(bytes)) {
      current.push(quote(bytes));
      continue;
    }
    current.push(Buffer.from(`{${bytes.length}${opts.literalPlus ? '+' : ''}}`, 'latin1'), CRLF);
    if (!opts.literalPlus) {
      // The literal data may only follow the server's "+", so it starts a new segment.
      segments.push(Buffer.concat(current));
      current = [];
    }
    current.push(bytes);
  }
  current.push(CRLF);
  segments.push(Buffer.concat(current));
  return { segments };
}

/**
 * `("name" "mailgate" "version" NIL)`, or `NIL` for no fields. Values are our
 * own data or client addresses, so rather than ever needing a literal they are
 * reduced to printable ASCII and capped at the RFC 2971 sizes.
 */
export function encodeIdList(fields: Array<[string, string | null]>): string {
  const parts: string[] = [];
  for (const [field, value] of fields) {
    if (parts.length >= ID_MAX_PAIRS) break;
    const cleanField = printableAscii(field, ID_MAX_FIELD_BYTES);
    if (cleanField === '') continue;
    const cleanValue = value === null ? 'NIL' : quote(Buffer.from(printableAscii(value, ID_MAX_VALUE_BYTES), 'latin1')).toString('latin1');
    parts.push(`${quote(Buffer.from(cleanField, 'latin1')).toString('latin1')} ${cleanValue}`);
  }
  return parts.length === 0 ? 'NIL' : `(${parts.join(' ')})`;
}

/** `tag ID (...)` as a single segment (an ID list never needs a literal). */
export function encodeIdCommand(tag: string, fields: Array<[string, string | null]>): EncodedCommand {
  checkTag(tag);
  return { segments: [Buffer.from(`${tag} ID ${encodeIdList(fields)}\r\n`, 'latin1')] };
}

function isAtomArg(arg: CommandArg): arg is { atom: string } {
  return typeof arg === 'object' && !Buffer.isBuffer(arg);
}

function needsLiteral(bytes: Buffer): boolean {
  if (bytes.length > MAX_QUOTED_BYTES) return true;
  for (const b of bytes) {
    if (b === 0x0a || b === 0x0d || b >= 0x80) return true;
  }
  return false;
}

function quote(bytes: Buffer): Buffer {
  const out: number[] = [0x22];
  for (const b of bytes) {
    if (b === 0x22 || b === 0x5c) out.push(0x5c);
    out.push(b);
  }
  out.push(0x22);
  return Buffer.from(out);
}

function printableAscii(text: string, maxBytes: number): string {
  return text.replace(NON_PRINTABLE_ASCII, '').slice(0, maxBytes);
}
