/**
 * POP3 wire formatting, both towards clients (responses) and towards the
 * upstream server (commands). Pure string/byte building.
 *
 * POP3 has no quoting or literals: a CR or LF inside any text ends the line and
 * lets whoever controls that text speak the protocol. Everything here therefore
 * either strips control characters (human text) or refuses (arguments that
 * must arrive byte-exact, such as passwords).
 */

import { FIXED_LIMITS } from '../../config/limits.js';

/** RFC 2449 section 4: a command line, CRLF included, is at most 255 octets. */
export const POP3_MAX_COMMAND_OCTETS = FIXED_LIMITS.pop3_upstream_max_command_bytes;

const KEYWORD = /^[A-Za-z0-9]{1,8}$/;
// C0 controls, DEL and C1 controls. C1 is included because some terminals and
// log viewers act on it, and no human text we send needs it.
const CONTROL_CHARS = /[\u0000-\u001f\u007f-\u009f]/g;
// RFC 2449 response codes are atoms separated by "/"; brackets, spaces or
// anything else would let the code escape its "[...]".
const NOT_RESP_CODE_CHAR = /[^A-Za-z0-9/-]/g;
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/** Remove CR, LF, NUL and every other control character from human text. */
export function sanitizeText(text: string): string {
  return text.replace(CONTROL_CHARS, '');
}

function statusLine(status: '+OK' | '-ERR', text: string, code: string | undefined): string {
  const cleanCode = code === undefined ? '' : code.replace(NOT_RESP_CODE_CHAR, '');
  const cleanText = sanitizeText(text);
  let line = status;
  if (cleanCode !== '') line += ` [${cleanCode}]`;
  if (cleanText !== '') line += ` ${cleanText}`;
  return `${line}\r\n`;
}

/** `+OK text` or `+OK [CODE] text`; an empty text gives a bare `+OK`. */
export function ok(text: string, code?: string): string {
  return statusLine('+OK', text, code);
}

/** `-ERR text` or `-ERR [CODE] text` with RFC 2449 / RFC 3206 codes such as AUTH or SYS/TEMP. */
export function err(text: string, code?: string): string {
  return statusLine('-ERR', text, code);
}

/**
 * SASL server challenge (RFC 5034 section 4). `+ ` keeps its space even when
 * empty: that is the form RFC 5034 specifies for an empty challenge.
 */
export function continuation(base64 = ''): string {
  if (!BASE64.test(base64)) {
    // Only SaslExchange output belongs here; anything else is a programming error.
    throw new TypeError('continuation() expects base64 text');
  }
  return `+ ${base64}\r\n`;
}

/**
 * Body of a multi-line response (RFC 1939 section 3): each line byte-stuffed
 * and CRLF-terminated, then the `.` terminator. The `+OK` status line that
 * precedes it is the caller's.
 */
export function multiline(lines: readonly string[]): string {
  let out = '';
  for (const raw of lines) {
    const line = sanitizeText(raw);
    out += (line.startsWith('.') ? `.${line}` : line) + '\r\n';
  }
  return `${out}.\r\n`;
}

export type EncodeCommandResult = Buffer | { error: 'unsafe' };

const UNSAFE: { error: 'unsafe' } = Object.freeze({ error: 'unsafe' as const });

function hasFramingByte(bytes: Buffer): boolean {
  return bytes.includes(0x0d) || bytes.includes(0x0a) || bytes.includes(0x00);
}

/**
 * A command for the upstream server. Returns `{ error: 'unsafe' }` instead of
 * bytes when the argument would break framing or the line would exceed the
 * RFC 2449 limit; the argument is deliberately not echoed in the result since
 * it may be a password.
 */
export function encodeCommand(name: string, arg?: string | Buffer): EncodeCommandResult {
  if (!KEYWORD.test(name)) {
    // Names are constants in our code; a bad one is a bug, not client input.
    throw new TypeError('encodeCommand: invalid POP3 keyword');
  }
  const head = Buffer.from(name.toUpperCase(), 'latin1');
  const parts: Buffer[] = [head];
  if (arg !== undefined) {
    const argBytes = typeof arg === 'string' ? Buffer.from(arg, 'utf8') : arg;
    if (hasFramingByte(argBytes)) return UNSAFE;
    parts.push(Buffer.from(' '), argBytes);
  }
  parts.push(Buffer.from('\r\n'));
  const line = Buffer.concat(parts);
  if (line.length > POP3_MAX_COMMAND_OCTETS) {
    // The password may be in `line`; do not leave it lying in memory.
    line.fill(0);
    return UNSAFE;
  }
  return line;
}

/**
 * `USER name`. POP3 arguments are space separated, so a name with a space (or
 * any other whitespace/control) would be split or misread by the upstream.
 */
export function encodeUser(name: string): EncodeCommandResult {
  if (name === '' || /[\s\u0000-\u001f\u007f]/.test(name)) return UNSAFE;
  return encodeCommand('USER', name);
}
