/**
 * Pull parser for the pre-login part of a POP3 client conversation.
 *
 * Pure: it only turns buffered bytes into events. The session decides which
 * keywords it knows, when to stop pulling (a login in flight must leave the
 * pipelined bytes behind it untouched for the relay), and how to answer.
 */

import { LineBuffer } from '../line-buffer.js';
import { FIXED_LIMITS, LIMIT_DEFAULTS } from '../../config/limits.js';

export interface Pop3ParserLimits {
  /** Longest command line without its CRLF (`pop3_max_line_bytes`). */
  maxLineBytes: number;
  /** Longest SASL continuation line without its CRLF (`pop3_max_sasl_line_bytes`). */
  maxSaslLineBytes: number;
}

/** The configurable POP3 key of `[limits]` (a loaded configuration's, or LIMIT_DEFAULTS). */
export interface Pop3LimitSettings {
  pop3_max_line_bytes: number;
}

/**
 * The parser limits for a `[limits]` configuration: the one mapping from
 * src/config/limits.ts to the parser, for a session to build its parser
 * with; the parser's defaults are this of LIMIT_DEFAULTS, so they cannot
 * drift from what production runs.
 */
export function pop3ParserLimits(limits: Pop3LimitSettings = LIMIT_DEFAULTS): Readonly<Pop3ParserLimits> {
  return Object.freeze({
    maxLineBytes: limits.pop3_max_line_bytes,
    maxSaslLineBytes: FIXED_LIMITS.pop3_max_sasl_line_bytes,
  });
}

/** What production runs with the default configuration. */
export const DEFAULT_POP3_PARSER_LIMITS: Readonly<Pop3ParserLimits> = pop3ParserLimits();

export type Pop3ParseErrorReason = 'syntax' | 'empty-line' | 'nul' | 'line-too-long' | 'http-request';

export type Pop3ParseEvent =
  | { type: 'command'; name: string; args: string[]; rest: Buffer }
  | { type: 'sasl-response'; line: Buffer }
  | { type: 'error'; reason: Pop3ParseErrorReason; message: string; fatal: boolean };

const CR = 0x0d;
const SPACE = 0x20;
const NUL = 0x00;

const KEYWORD = /^[A-Za-z0-9]{1,8}$/;

/**
 * An HTTP request line: RFC 9110 method token, a target, then the version.
 * A browser tricked into talking to us (ALPACA) always starts this way, so
 * seeing it means the peer is not a mail client and nothing it sends can be
 * trusted as a command. Runs of spaces are tolerated: being loose here only
 * widens the net over lines that are not valid POP3 anyway.
 */
const HTTP_REQUEST_LINE = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+ +[^ ]+ +HTTP\/[0-9]/i;

/**
 * PASS takes the rest of the line, so a password such as "x HTTP/1.1" would
 * otherwise look like a request line and get a legitimate user disconnected.
 * A browser cannot send a "PASS" method without a CORS preflight, and the
 * preflight (OPTIONS) is caught, so exempting it costs no protection.
 */
const HTTP_EXEMPT_KEYWORD = /^pass(?: |$)/i;

// Messages are fixed strings: they may be sent to the client or logged, so they
// must never carry client bytes (a password typed into the wrong prompt, say).
const MESSAGES: Record<Pop3ParseErrorReason, string> = {
  syntax: 'Invalid command syntax',
  'empty-line': 'Empty command line',
  nul: 'NUL byte in command line',
  'line-too-long': 'Line too long',
  'http-request': 'HTTP request on a POP3 port',
};

function parseError(reason: Pop3ParseErrorReason, fatal: boolean): Pop3ParseEvent {
  return { type: 'error', reason, message: MESSAGES[reason], fatal };
}

function checkLimit(name: string, value: number): void {
  if (!Number.isSafeInteger(value) || value < 1) {
    throw new RangeError(`Pop3Parser: ${name} must be a positive integer`);
  }
}

export class Pop3Parser {
  private readonly limits: Pop3ParserLimits;
  private readonly buffer = new LineBuffer();
  private fatal = false;
  private saslPending = false;
  /**
   * Last byte pushed. LineBuffer reports a missing-LF line as too long only once
   * it exceeds the limit by two bytes (it reserves one for a possible CR); with
   * the final byte known we can decide one byte earlier, as soon as it is certain.
   */
  private lastByte = -1;

  constructor(limits?: Partial<Pop3ParserLimits>) {
    this.limits = { ...DEFAULT_POP3_PARSER_LIMITS, ...limits };
    checkLimit('maxLineBytes', this.limits.maxLineBytes);
    checkLimit('maxSaslLineBytes', this.limits.maxSaslLineBytes);
  }

  get bufferedBytes(): number {
    return this.buffer.bufferedBytes;
  }

  push(chunk: Buffer): void {
    if (this.fatal || chunk.length === 0) return;
    this.buffer.push(chunk);
    this.lastByte = chunk[chunk.length - 1]!;
  }

  next(): Pop3ParseEvent | null {
    if (this.fatal) return null;
    const max = this.saslPending ? this.limits.maxSaslLineBytes : this.limits.maxLineBytes;
    const result = this.buffer.readLine(max);
    if (result.kind === 'need-more') {
      // No LF is buffered, so everything buffered is the start of one line.
      if (this.buffer.bufferedBytes > max && this.lastByte !== CR) return this.fail('line-too-long');
      return null;
    }
    if (result.kind === 'too-long') return this.fail('line-too-long');

    // Copies: the session may zero a password it holds, and must not pin the
    // socket's whole receive chunk in memory by keeping a slice of it.
    const line = Buffer.from(result.line);
    if (this.saslPending) {
      // Raw on purpose: the SASL layer judges the content (including "*" and "="),
      // and an empty line is a valid (empty) response there, not a syntax slip.
      this.saslPending = false;
      return { type: 'sasl-response', line };
    }
    return this.parseCommand(line);
  }

  expectSaslResponse(): void {
    if (this.fatal) return;
    this.saslPending = true;
  }

  discardBuffered(): number {
    if (this.fatal) return 0;
    return this.buffer.discard();
  }

  takeBuffered(): Buffer {
    if (this.fatal) return Buffer.alloc(0);
    // Copied for the same reason as lines: the relay must not hold a view into
    // a larger socket chunk.
    return Buffer.from(this.buffer.takeAll());
  }

  private fail(reason: Pop3ParseErrorReason): Pop3ParseEvent {
    this.fatal = true;
    this.saslPending = false;
    this.buffer.discard();
    return parseError(reason, true);
  }

  private parseCommand(line: Buffer): Pop3ParseEvent {
    if (line.length === 0) return parseError('empty-line', false);

    // latin1 maps bytes 1:1 to code points, so the regexes see the real bytes
    // and invalid UTF-8 cannot hide or forge an ASCII shape.
    const ascii = line.toString('latin1');
    if (HTTP_REQUEST_LINE.test(ascii) && !HTTP_EXEMPT_KEYWORD.test(ascii)) {
      return this.fail('http-request');
    }
    if (line.includes(NUL)) return parseError('nul', false);

    const space = line.indexOf(SPACE);
    const keyword = space < 0 ? ascii : ascii.slice(0, space);
    if (!KEYWORD.test(keyword)) return parseError('syntax', false);

    // rest starts after exactly one separating space, so PASS keeps leading and
    // trailing spaces of the password byte for byte (RFC 1939 section 7: the
    // argument of PASS is the rest of the line). "PASS  x" has rest " x".
    const rest = space < 0 ? Buffer.alloc(0) : line.subarray(space + 1);
    // Lenient decoding (U+FFFD for bad bytes): args are for commands whose
    // arguments are names or numbers; credentials come from `rest` or SASL.
    const args = rest.length === 0 ? [] : rest.toString('utf8').split(' ').filter((piece) => piece !== '');
    return { type: 'command', name: keyword.toUpperCase(), args, rest };
  }
}
