/**
 * Pull parser for the pre-login part of an IMAP client conversation
 * (RFC 9051 / RFC 3501 command syntax, RFC 7888 LITERAL+, enough for RFC 2971 ID).
 *
 * Pure: bytes go in through push(), events come out of next(), one at a time.
 * The session stops pulling while a login is in flight, so next() never
 * consumes bytes beyond the event it returns: whatever the client pipelined
 * after the login command is still buffered for takeBuffered().
 *
 * Every size is bounded before bytes are waited for, nothing is allocated from
 * an announced literal size, and error messages are fixed strings so client
 * bytes are never echoed back or logged through them.
 */

import { LineBuffer } from '../line-buffer.js';
import { FIXED_LIMITS, LIMIT_DEFAULTS, imapMaxCommandBytes } from '../../config/limits.js';

export interface ImapParserLimits {
  /** One line segment up to CRLF, excluding literal data (`imap_max_line_bytes`). */
  maxLineBytes: number;
  /** One literal (`imap_max_literal_bytes`). */
  maxLiteralBytes: number;
  /** A whole command: all its line segments (without CRLF) plus literals (`imapMaxCommandBytes`). */
  maxCommandBytes: number;
  /** Parenthesised list depth (`imap_max_nesting`). */
  maxNesting: number;
  /** Total number of arguments in a command, nested ones and lists included (`imap_max_args`). */
  maxArgs: number;
}

/** The configurable IMAP keys of `[limits]` (a loaded configuration's, or LIMIT_DEFAULTS). */
export interface ImapLimitSettings {
  imap_max_line_bytes: number;
  imap_max_literal_bytes: number;
  imap_max_nesting: number;
}

/**
 * The parser limits for a `[limits]` configuration: the one mapping from
 * src/config/limits.ts to the parser, for a session to build its parser
 * with; the parser's defaults are this of LIMIT_DEFAULTS, so they cannot
 * drift from what production runs.
 */
export function imapParserLimits(limits: ImapLimitSettings = LIMIT_DEFAULTS): Readonly<ImapParserLimits> {
  return Object.freeze({
    maxLineBytes: limits.imap_max_line_bytes,
    maxLiteralBytes: limits.imap_max_literal_bytes,
    maxCommandBytes: imapMaxCommandBytes(limits.imap_max_line_bytes, limits.imap_max_literal_bytes),
    maxNesting: limits.imap_max_nesting,
    maxArgs: FIXED_LIMITS.imap_max_args,
  });
}

/** What production runs with the default configuration. */
export const DEFAULT_IMAP_PARSER_LIMITS: Readonly<ImapParserLimits> = imapParserLimits();

export type ImapArg =
  /** Also AUTHENTICATE's cancelling initial response "*" (see isSaslCancel). */
  | { kind: 'atom'; value: string }
  | { kind: 'nil' }
  | { kind: 'string'; value: Buffer; literal: boolean }
  | { kind: 'list'; items: ImapArg[] };

export type ImapParseErrorReason =
  | 'syntax'
  | 'bad-tag'
  | 'empty-line'
  | 'nul'
  | 'line-too-long'
  | 'literal-too-large'
  | 'command-too-large'
  | 'nesting-too-deep'
  | 'too-many-args'
  | 'http-request';

export type ImapParseEvent =
  | { type: 'command'; tag: string; name: string; args: ImapArg[] }
  /** A synchronising literal was announced and accepted: the session sends "+", or refuses the command with `refuseLiteral()`. */
  | { type: 'literal-continuation'; tag: string; name: string }
  | { type: 'sasl-response'; line: Buffer }
  | { type: 'error'; reason: ImapParseErrorReason; tag: string | null; message: string; fatal: boolean };

const NUL = 0x00;
const LF = 0x0a;
const CR = 0x0d;
const SP = 0x20;
const DQUOTE = 0x22;
const LPAREN = 0x28;
const RPAREN = 0x29;
const STAR = 0x2a;
const PLUS = 0x2b;
const BACKSLASH = 0x5c;
const LBRACE = 0x7b;
const RBRACE = 0x7d;
const TILDE = 0x7e;

const ATOM_CHAR = 1;
const ASTRING_CHAR = 2;
const TAG_CHAR = 4;

/** Byte class table: RFC 9051 atom-specials are `( ) { SP CTL % * " \ ]`. */
const CHAR_CLASS: Uint8Array = (() => {
  const table = new Uint8Array(256);
  for (let c = 0x21; c <= 0x7e; c++) {
    if ('(){%*"\\]'.includes(String.fromCharCode(c))) continue;
    table[c] = ATOM_CHAR | ASTRING_CHAR | TAG_CHAR;
  }
  // resp-specials are allowed in astrings and tags, just not in plain atoms.
  table[0x5d] = ASTRING_CHAR | TAG_CHAR;
  // "+" would make a tag indistinguishable from a continuation request.
  table[PLUS] = ATOM_CHAR | ASTRING_CHAR;
  return table;
})();

const MAX_TAG_BYTES = FIXED_LIMITS.imap_max_tag_bytes;
/** RFC 9051 number is at most 4294967295, so anything longer is garbage. */
const MAX_LITERAL_DIGITS = 10;

/**
 * An HTTP request line (RFC 9110 method token, target, version). A browser
 * tricked into talking to us (ALPACA) always starts this way. The version is
 * anchored at the end of the line so that a real IMAP command (whose tag and
 * name would also match the first two tokens) is only caught when it is
 * exactly three tokens ending in an HTTP version, which no pre-login IMAP
 * command is.
 */
const HTTP_REQUEST_LINE = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+ +[^ ]+ +HTTP\/[0-9](?:\.[0-9])? *$/i;

/** A line that ends by announcing a literal: the client may send its bytes next. */
const TRAILING_LITERAL = /\{([0-9]+)(\+?)\}$/;

interface CommandState {
  tag: string;
  name: string;
  /** stack[0] holds the top-level arguments; the last entry is the innermost open list. */
  stack: ImapArg[][];
  argCount: number;
  /** Bytes of the command so far, announced literals included. */
  bytes: number;
  /** A literal whose size was accepted but whose bytes are not consumed yet. */
  literal: { size: number } | null;
}

/**
 * Remainder of a rejected command that the client is still going to send:
 * a non-synchronising literal and/or the rest of the line after a literal.
 */
interface SkipState {
  tag: string | null;
  literal: number;
  bytes: number;
}

type ParseFailure = { reason: ImapParseErrorReason; message: string };

export class ImapParser {
  private readonly limits: ImapParserLimits;
  private buffer = new LineBuffer();
  private command: CommandState | null = null;
  private skip: SkipState | null = null;
  private saslPending = false;
  private failed = false;

  constructor(limits?: Partial<ImapParserLimits>) {
    const merged: ImapParserLimits = { ...DEFAULT_IMAP_PARSER_LIMITS, ...limits };
    for (const [key, value] of Object.entries(merged)) {
      // A zero line or command limit would reject everything, so only nesting may be 0.
      const min = key === 'maxNesting' ? 0 : 1;
      if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min) {
        throw new RangeError(`ImapParser: invalid limit ${key}`);
      }
    }
    this.limits = merged;
  }

  get bufferedBytes(): number {
    return this.buffer.bufferedBytes;
  }

  push(chunk: Buffer): void {
    // After a fatal error the connection is being closed; holding more bytes would only waste memory.
    if (this.failed) return;
    this.buffer.push(chunk);
  }

  next(): ImapParseEvent | null {
    if (this.failed) return null;
    try {
      return this.step();
    } catch {
      // The contract is "never throws": an unexpected bug must close the connection, not crash the process.
      return this.fail('syntax', null, 'Internal parser error');
    }
  }

  expectSaslResponse(): void {
    this.saslPending = true;
  }

  /**
   * After a 'literal-continuation' event: the session answers the command
   * with a tagged NO or BAD instead of "+", so the client sends no literal
   * (RFC 9051 section 7.5) and the next line is a new command.
   */
  refuseLiteral(): void {
    if (this.command?.literal) this.command = null;
  }

  discardBuffered(): number {
    this.resetState();
    return this.buffer.discard();
  }

  takeBuffered(): Buffer {
    this.resetState();
    return this.buffer.takeAll();
  }

  private resetState(): void {
    this.command = null;
    this.skip = null;
    this.saslPending = false;
  }

  private step(): ImapParseEvent | null {
    for (;;) {
      if (this.skip) {
        const skipped = this.advanceSkip();
        if (skipped === 'done') continue;
        return skipped;
      }
      if (this.command) return this.continueCommand(this.command);
      if (this.saslPending) return this.readSaslResponse();
      return this.startCommand();
    }
  }

  private readSaslResponse(): ImapParseEvent | null {
    const result = this.buffer.readLine(this.limits.maxLineBytes);
    if (result.kind === 'need-more') return null;
    if (result.kind === 'too-long') return this.fail('line-too-long', null, 'Line too long');
    this.saslPending = false;
    // Copy so the event does not pin the (possibly large) joined receive buffer.
    return { type: 'sasl-response', line: Buffer.from(result.line) };
  }

  private readSegment(bytesSoFar: number, tag: string | null): Buffer | ImapParseEvent | null {
    const commandRoom = this.limits.maxCommandBytes - bytesSoFar;
    const limit = Math.min(this.limits.maxLineBytes, commandRoom);
    const result = this.buffer.readLine(limit);
    if (result.kind === 'need-more') return null;
    if (result.kind === 'too-long') {
      return commandRoom < this.limits.maxLineBytes
        ? this.fail('command-too-large', tag, 'Command too large')
        : this.fail('line-too-long', tag, 'Line too long');
    }
    return result.line;
  }

  private startCommand(): ImapParseEvent | null {
    const read = this.readSegment(0, null);
    if (!Buffer.isBuffer(read)) return read;
    const line = read;

    if (line.length === 0) return { type: 'error', reason: 'empty-line', tag: null, message: 'Empty command line', fatal: false };
    if (HTTP_REQUEST_LINE.test(line.toString('latin1'))) {
      return this.fail('http-request', null, 'HTTP request received on the IMAP port');
    }

    const tagEnd = line.indexOf(SP);
    if (tagEnd <= 0 || tagEnd > MAX_TAG_BYTES || !allOfClass(line, 0, tagEnd, TAG_CHAR)) {
      return this.reject('bad-tag', null, 'Invalid tag', line, line.length);
    }
    const tag = line.toString('latin1', 0, tagEnd);

    let nameStart = tagEnd;
    while (nameStart < line.length && line[nameStart] === SP) nameStart++;
    if (nameStart === line.length) return this.reject('bad-tag', null, 'Missing command name', line, line.length);
    let nameEnd = line.indexOf(SP, nameStart);
    if (nameEnd < 0) nameEnd = line.length;
    if (!allOfClass(line, nameStart, nameEnd, ATOM_CHAR)) {
      return this.reject('syntax', tag, 'Invalid command name', line, line.length);
    }

    const command: CommandState = {
      tag,
      name: line.toString('latin1', nameStart, nameEnd).toUpperCase(),
      stack: [[]],
      argCount: 0,
      bytes: line.length,
      literal: null,
    };
    return this.parseSegment(command, line, nameEnd, true);
  }

  private continueCommand(command: CommandState): ImapParseEvent | null {
    if (command.literal) {
      const data = this.buffer.readBytes(command.literal.size);
      if (data === null) return null;
      command.literal = null;
      if (data.includes(NUL)) {
        // The literal is consumed, but the rest of its line is still to come and belongs to this command.
        this.command = null;
        this.skip = { tag: command.tag, literal: 0, bytes: command.bytes };
        return { type: 'error', reason: 'nul', tag: command.tag, message: 'NUL byte in literal', fatal: false };
      }
      currentItems(command).push({ kind: 'string', value: Buffer.from(data), literal: true });
    }
    const read = this.readSegment(command.bytes, command.tag);
    if (!Buffer.isBuffer(read)) return read;
    command.bytes += read.length;
    return this.parseSegment(command, read, 0, true);
  }

  /**
   * Parse arguments from `line[start..]`. A separator is needed right after a
   * complete argument (such as the literal that precedes a continuation
   * segment): only SP, ")" or the end of the line may follow one.
   */
  private parseSegment(command: CommandState, line: Buffer, start: number, needSeparatorAtStart: boolean): ImapParseEvent | null {
    let pos = start;
    let needSeparator = needSeparatorAtStart;
    const rejectHere = (failure: ParseFailure): ImapParseEvent =>
      this.reject(failure.reason, command.tag, failure.message, line, command.bytes);

    while (pos < line.length) {
      const c = line[pos]!;
      if (c === SP) {
        pos++;
        needSeparator = false;
        continue;
      }
      if (c === RPAREN) {
        if (command.stack.length === 1) return rejectHere({ reason: 'syntax', message: 'Unbalanced ")"' });
        command.stack.pop();
        pos++;
        needSeparator = true;
        continue;
      }
      if (needSeparator) return rejectHere({ reason: 'syntax', message: 'Missing space between arguments' });

      if (++command.argCount > this.limits.maxArgs) return rejectHere({ reason: 'too-many-args', message: 'Too many arguments' });

      if (c === LPAREN) {
        if (command.stack.length > this.limits.maxNesting) {
          return rejectHere({ reason: 'nesting-too-deep', message: 'Lists nested too deeply' });
        }
        const items: ImapArg[] = [];
        currentItems(command).push({ kind: 'list', items });
        command.stack.push(items);
        pos++;
        continue;
      }

      if (c === DQUOTE) {
        const quoted = parseQuoted(line, pos);
        if ('reason' in quoted) return rejectHere(quoted);
        currentItems(command).push({ kind: 'string', value: quoted.value, literal: false });
        pos = quoted.end;
        needSeparator = true;
        continue;
      }

      if (c === LBRACE) return this.acceptLiteral(command, line, pos);

      if (c === STAR && isSaslCancel(command, line, pos)) {
        currentItems(command).push({ kind: 'atom', value: '*' });
        pos++;
        needSeparator = true;
        continue;
      }

      const atomEnd = scanClass(line, pos, ASTRING_CHAR);
      if (atomEnd === pos) return rejectHere(invalidArgumentStart(line, pos));
      if (c === TILDE && line[atomEnd] === LBRACE) {
        return rejectHere({ reason: 'syntax', message: 'literal8 is not supported before login' });
      }
      const value = line.toString('latin1', pos, atomEnd);
      currentItems(command).push(value.toUpperCase() === 'NIL' ? { kind: 'nil' } : { kind: 'atom', value });
      pos = atomEnd;
      needSeparator = true;
    }

    if (command.stack.length > 1) return rejectHere({ reason: 'syntax', message: 'Unclosed "("' });
    this.command = null;
    return { type: 'command', tag: command.tag, name: command.name, args: command.stack[0]! };
  }

  private acceptLiteral(command: CommandState, line: Buffer, pos: number): ImapParseEvent | null {
    const marker = parseLiteralMarker(line, pos);
    if (marker === null) {
      return this.reject('syntax', command.tag, 'Invalid literal announcement', line, command.bytes);
    }
    if (marker.size > this.limits.maxLiteralBytes) {
      if (!marker.sync) return this.fail('literal-too-large', command.tag, 'Literal too large');
      // Without our "+" the client never sends the data, so the next line is a new command.
      this.command = null;
      return { type: 'error', reason: 'literal-too-large', tag: command.tag, message: 'Literal too large', fatal: false };
    }
    if (command.bytes + marker.size > this.limits.maxCommandBytes) {
      return this.fail('command-too-large', command.tag, 'Command too large');
    }
    command.bytes += marker.size;
    command.literal = { size: marker.size };
    this.command = command;
    if (marker.sync) return { type: 'literal-continuation', tag: command.tag, name: command.name };
    return this.continueCommand(command);
  }

  /**
   * Report a non-fatal error for a line that was read completely. If the line
   * ends with a non-synchronising literal, the client sends its bytes anyway:
   * they are skipped (within limits) so they are not taken for a command.
   */
  private reject(
    reason: ImapParseErrorReason,
    tag: string | null,
    message: string,
    line: Buffer,
    bytesSoFar: number,
  ): ImapParseEvent {
    this.command = null;
    const trailing = this.trailingNonSyncLiteral(line, bytesSoFar);
    // Keep the original reason: it is what went wrong first; the literal only makes it unrecoverable.
    if (typeof trailing === 'object' && trailing !== null) return this.fail(reason, tag, message);
    if (trailing !== null) this.skip = { tag, literal: trailing, bytes: bytesSoFar + trailing };
    return { type: 'error', reason, tag, message, fatal: false };
  }

  private trailingNonSyncLiteral(line: Buffer, bytesSoFar: number): number | ParseFailure | null {
    // Only the tail can hold the marker; decoding just that keeps this cheap on long lines.
    const brace = line.lastIndexOf(LBRACE);
    if (brace < 0) return null;
    const match = TRAILING_LITERAL.exec(line.toString('latin1', brace));
    if (!match || match[2] !== '+') return null;
    const digits = match[1]!;
    if (digits.length > MAX_LITERAL_DIGITS) return { reason: 'syntax', message: 'Invalid literal announcement' };
    const size = Number(digits);
    if (size > this.limits.maxLiteralBytes) return { reason: 'literal-too-large', message: 'Literal too large' };
    if (bytesSoFar + size > this.limits.maxCommandBytes) return { reason: 'command-too-large', message: 'Command too large' };
    return size;
  }

  private advanceSkip(): ImapParseEvent | null | 'done' {
    const skip = this.skip!;
    for (;;) {
      if (skip.literal > 0) {
        if (this.buffer.readBytes(skip.literal) === null) return null;
        skip.literal = 0;
      }
      const read = this.readSegment(skip.bytes, skip.tag);
      if (!Buffer.isBuffer(read)) return read;
      skip.bytes += read.length;
      const trailing = this.trailingNonSyncLiteral(read, skip.bytes);
      if (trailing === null) {
        this.skip = null;
        return 'done';
      }
      if (typeof trailing === 'object') return this.fail(trailing.reason, skip.tag, trailing.message);
      skip.literal = trailing;
      skip.bytes += trailing;
    }
  }

  private fail(reason: ImapParseErrorReason, tag: string | null, message: string): ImapParseEvent {
    this.failed = true;
    this.resetState();
    // Release everything: the session is about to close and must not keep client data around.
    this.buffer.discard();
    this.buffer = new LineBuffer();
    return { type: 'error', reason, tag, message, fatal: true };
  }
}

/** True when `tag` can be used as an IMAP command tag (and so echoed in a tagged response). */
export function isValidTag(tag: string): boolean {
  if (tag.length === 0 || tag.length > MAX_TAG_BYTES) return false;
  for (let i = 0; i < tag.length; i++) {
    const c = tag.charCodeAt(i);
    if (c > 0xff || !(CHAR_CLASS[c]! & TAG_CHAR)) return false;
  }
  return true;
}

/** True when `value` is a non-empty RFC 9051 atom. */
export function isValidAtom(value: string): boolean {
  if (value.length === 0) return false;
  for (let i = 0; i < value.length; i++) {
    const c = value.charCodeAt(i);
    if (c > 0xff || !(CHAR_CLASS[c]! & ATOM_CHAR)) return false;
  }
  return true;
}

function currentItems(command: CommandState): ImapArg[] {
  return command.stack[command.stack.length - 1]!;
}

/**
 * "*" is an atom-special, but as AUTHENTICATE's initial response it is how a
 * client cancels (the same as a "*" continuation line), so the session must
 * see it rather than a syntax error. Only a lone "*" right after the
 * mechanism qualifies; it is delivered as an atom whose value is "*".
 */
function isSaslCancel(command: CommandState, line: Buffer, pos: number): boolean {
  const next = line[pos + 1];
  return (
    command.name === 'AUTHENTICATE' &&
    command.stack.length === 1 &&
    command.stack[0]!.length === 1 &&
    (next === undefined || next === SP)
  );
}

function scanClass(line: Buffer, start: number, cls: number): number {
  let i = start;
  while (i < line.length && CHAR_CLASS[line[i]!]! & cls) i++;
  return i;
}

function allOfClass(line: Buffer, start: number, end: number, cls: number): boolean {
  return end > start && scanClass(line, start, cls) >= end;
}

function invalidArgumentStart(line: Buffer, pos: number): ParseFailure {
  const c = line[pos]!;
  if (c === NUL) return { reason: 'nul', message: 'NUL byte in command' };
  if (c >= 0x80) return { reason: 'syntax', message: '8-bit data outside a quoted string or literal' };
  return { reason: 'syntax', message: 'Invalid character in argument' };
}

function parseQuoted(line: Buffer, open: number): { value: Buffer; end: number } | ParseFailure {
  // Validate and measure first, so the value is allocated at its exact size
  // (a line full of short strings must not cost one line-sized buffer each).
  let length = 0;
  let close = -1;
  for (let i = open + 1; i < line.length; i++) {
    const c = line[i]!;
    if (c === DQUOTE) {
      close = i;
      break;
    }
    if (c === NUL) return { reason: 'nul', message: 'NUL byte in quoted string' };
    if (c === CR || c === LF) return { reason: 'syntax', message: 'CR or LF in quoted string' };
    if (c === BACKSLASH) {
      const escaped = line[i + 1];
      if (escaped !== DQUOTE && escaped !== BACKSLASH) return { reason: 'syntax', message: 'Invalid escape in quoted string' };
      i++;
    }
    length++;
  }
  if (close < 0) return { reason: 'syntax', message: 'Unterminated quoted string' };

  const value = Buffer.alloc(length);
  let out = 0;
  for (let i = open + 1; i < close; i++) {
    if (line[i] === BACKSLASH) i++;
    value[out++] = line[i]!;
  }
  return { value, end: close + 1 };
}

/** `{n}` or `{n+}`, which must end the line segment. */
function parseLiteralMarker(line: Buffer, open: number): { size: number; sync: boolean } | null {
  let i = open + 1;
  const digitsStart = i;
  while (i < line.length && line[i]! >= 0x30 && line[i]! <= 0x39) i++;
  const digits = i - digitsStart;
  if (digits === 0 || digits > MAX_LITERAL_DIGITS) return null;
  const size = Number(line.toString('latin1', digitsStart, i));
  let sync = true;
  if (line[i] === PLUS) {
    sync = false;
    i++;
  }
  if (line[i] !== RBRACE || i + 1 !== line.length) return null;
  return { size, sync };
}
