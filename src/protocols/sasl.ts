/**
 * Server side of the SASL PLAIN (RFC 4616) and LOGIN (draft-murchison-sasl-login)
 * exchanges, independent of IMAP AUTHENTICATE and POP3 AUTH framing (RFC 4422).
 *
 * The caller feeds base64 lines and sends back the challenges it is given; the
 * result is plain credentials for the session to verify. Passwords only ever
 * live in Buffers handed to the caller: no message or error built here
 * contains them, so nothing can leak them into a log by accident.
 */

import { FIXED_LIMITS } from '../config/limits.js';
import { decodeUtf8 } from './utf8.js';

export type SaslMechanismName = 'PLAIN' | 'LOGIN';

export const SUPPORTED_SASL_MECHANISMS: readonly SaslMechanismName[] = Object.freeze(['PLAIN', 'LOGIN'] as const);

export interface SaslCredentials {
  /**
   * PLAIN's authorization identity as sent ('' when none). Whether it may be
   * used is the login policy's decision (an authzid naming someone else is
   * refused there like any failed login); it never reaches the upstream.
   */
  authzid: string;
  username: string;
  password: Buffer;
}

export type SaslErrorReason =
  | 'cancelled'
  | 'bad-base64'
  | 'malformed'
  | 'unsupported-mechanism'
  | 'too-long';

export type SaslStep =
  | { type: 'challenge'; data: string }
  | { type: 'done'; credentials: SaslCredentials }
  | { type: 'error'; reason: SaslErrorReason };

export interface SaslExchangeOptions {
  /** Largest decoded client response accepted at any step. */
  maxDecodedBytes?: number;
}

const DEFAULT_MAX_DECODED_BYTES = FIXED_LIMITS.sasl_max_decoded_bytes;
const MAX_FIELD_BYTES = FIXED_LIMITS.sasl_max_field_bytes;

const LOGIN_USERNAME_CHALLENGE = 'VXNlcm5hbWU6'; // "Username:"
const LOGIN_PASSWORD_CHALLENGE = 'UGFzc3dvcmQ6'; // "Password:"

const BASE64_SHAPE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/**
 * Strict RFC 4648 base64: alphabet only, canonical padding, length a multiple
 * of 4, and no stray bits in the last group (so each byte string has exactly
 * one accepted encoding). Returns null for anything else, '' gives empty.
 */
export function decodeBase64Strict(text: string): Buffer | null {
  if (!BASE64_SHAPE.test(text)) return null;
  const decoded = Buffer.from(text, 'base64');
  // Node ignores non-zero trailing bits ("QR==" decodes like "QQ=="); re-encoding
  // exposes them.
  if (decoded.toString('base64') !== text) {
    decoded.fill(0);
    return null;
  }
  return decoded;
}

export function encodeBase64(text: string | Buffer): string {
  return (typeof text === 'string' ? Buffer.from(text, 'utf8') : text).toString('base64');
}


type State =
  | 'new'
  | 'plain-awaiting-message'
  | 'login-awaiting-username'
  | 'login-awaiting-password'
  | 'finished';

type Decoded = { ok: true; bytes: Buffer } | { ok: false; reason: SaslErrorReason };

export class SaslExchange {
  private readonly mechanism: SaslMechanismName | null;
  private readonly maxDecodedBytes: number;
  private state: State = 'new';
  private loginUsername = '';

  constructor(mechanism: string, opts?: SaslExchangeOptions) {
    const upper = mechanism.toUpperCase();
    this.mechanism = (SUPPORTED_SASL_MECHANISMS as readonly string[]).includes(upper)
      ? (upper as SaslMechanismName)
      : null;
    const max = opts?.maxDecodedBytes ?? DEFAULT_MAX_DECODED_BYTES;
    if (!Number.isSafeInteger(max) || max < 1) {
      throw new RangeError('SaslExchange: maxDecodedBytes must be a positive integer');
    }
    this.maxDecodedBytes = max;
  }

  get finished(): boolean {
    return this.state === 'finished';
  }

  /**
   * Begin the exchange. `initialResponse` is undefined when the client sent
   * none, and '=' when it sent an explicitly empty one (RFC 4959, RFC 5034).
   */
  start(initialResponse?: string): SaslStep {
    if (this.state !== 'new') return this.fail('malformed');
    if (this.mechanism === null) return this.fail('unsupported-mechanism');

    if (this.mechanism === 'PLAIN') {
      if (initialResponse === undefined) {
        this.state = 'plain-awaiting-message';
        return { type: 'challenge', data: '' };
      }
      return this.finishPlain(initialResponse);
    }

    // LOGIN: a non-empty initial response is the username. An empty one
    // carries no username, so we ask for it as if none had been sent.
    if (initialResponse === undefined || initialResponse === '=') {
      this.state = 'login-awaiting-username';
      return { type: 'challenge', data: LOGIN_USERNAME_CHALLENGE };
    }
    return this.acceptLoginUsername(initialResponse);
  }

  /** One client continuation line, without its line terminator. */
  respond(line: string | Buffer): SaslStep {
    switch (this.state) {
      case 'plain-awaiting-message':
        return this.finishPlain(line);
      case 'login-awaiting-username':
        return this.acceptLoginUsername(line);
      case 'login-awaiting-password':
        return this.finishLogin(line);
      default:
        // Before start() or after the outcome: the caller lost track of the exchange.
        return this.fail('malformed');
    }
  }

  private fail(reason: SaslErrorReason): SaslStep {
    this.state = 'finished';
    this.loginUsername = '';
    return { type: 'error', reason };
  }

  /**
   * Decode one client response with cancellation and size checks first, so a
   * huge line is refused by its length without ever being decoded.
   */
  private decode(input: string | Buffer): Decoded {
    // 4 base64 characters carry 3 bytes; anything longer cannot fit the limit.
    const maxEncoded = Math.ceil(this.maxDecodedBytes / 3) * 4;
    if (input.length > maxEncoded) return { ok: false, reason: 'too-long' };
    // latin1 keeps non-ASCII bytes as non-alphabet characters, so they fail the
    // strict decode instead of being reinterpreted.
    const text = typeof input === 'string' ? input : input.toString('latin1');
    if (text === '*') return { ok: false, reason: 'cancelled' };
    // RFC 4959 / RFC 5034 spell an empty initial response "="; accepting it in
    // a continuation too is harmless (empty is then judged like any other value).
    if (text === '=') return { ok: true, bytes: Buffer.alloc(0) };
    const bytes = decodeBase64Strict(text);
    if (bytes === null) return { ok: false, reason: 'bad-base64' };
    if (bytes.length > this.maxDecodedBytes) {
      bytes.fill(0);
      return { ok: false, reason: 'too-long' };
    }
    return { ok: true, bytes };
  }

  private finishPlain(input: string | Buffer): SaslStep {
    const decoded = this.decode(input);
    if (!decoded.ok) return this.fail(decoded.reason);
    const message = decoded.bytes;
    try {
      return this.parsePlain(message);
    } finally {
      // The password was copied out if it was valid; wipe the decoded message.
      message.fill(0);
    }
  }

  /** RFC 4616: message = [authzid] NUL authcid NUL passwd. */
  private parsePlain(message: Buffer): SaslStep {
    const first = message.indexOf(0);
    const second = first < 0 ? -1 : message.indexOf(0, first + 1);
    if (second < 0 || message.indexOf(0, second + 1) >= 0) return this.fail('malformed');

    const authzidBytes = message.subarray(0, first);
    const authcidBytes = message.subarray(first + 1, second);
    const passwordBytes = message.subarray(second + 1);
    if (authcidBytes.length === 0 || passwordBytes.length === 0) return this.fail('malformed');
    if (
      authzidBytes.length > MAX_FIELD_BYTES ||
      authcidBytes.length > MAX_FIELD_BYTES ||
      passwordBytes.length > MAX_FIELD_BYTES
    ) {
      return this.fail('malformed');
    }

    const authzid = decodeUtf8(authzidBytes);
    const username = decodeUtf8(authcidBytes);
    if (authzid === null || username === null) return this.fail('malformed');

    this.state = 'finished';
    return { type: 'done', credentials: { authzid, username, password: Buffer.from(passwordBytes) } };
  }

  private acceptLoginUsername(input: string | Buffer): SaslStep {
    const decoded = this.decode(input);
    if (!decoded.ok) return this.fail(decoded.reason);
    const bytes = decoded.bytes;
    // Same per-field bound as PLAIN, so the choice of mechanism does not change
    // which usernames can reach the store.
    if (bytes.length === 0 || bytes.length > MAX_FIELD_BYTES) return this.fail('malformed');
    const username = decodeUtf8(bytes);
    if (username === null) return this.fail('malformed');
    this.loginUsername = username;
    this.state = 'login-awaiting-password';
    return { type: 'challenge', data: LOGIN_PASSWORD_CHALLENGE };
  }

  private finishLogin(input: string | Buffer): SaslStep {
    const decoded = this.decode(input);
    if (!decoded.ok) return this.fail(decoded.reason);
    const password = decoded.bytes;
    // An empty password can never verify, and PLAIN rejects it too; bounding it
    // like PLAIN keeps both mechanisms equivalent for the session.
    if (password.length === 0 || password.length > MAX_FIELD_BYTES) {
      password.fill(0);
      return this.fail('malformed');
    }
    const username = this.loginUsername;
    this.loginUsername = '';
    this.state = 'finished';
    return { type: 'done', credentials: { authzid: '', username, password } };
  }
}
