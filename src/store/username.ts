/**
 * Account names as mailgate stores and compares them.
 *
 * Mail programs send the name the user typed, with whatever case and stray
 * spaces, so both sides of every comparison go through normaliseUsername.
 * Creating an account takes the stricter validateNewUsername: lookups stay
 * lenient (a name that cannot exist is simply not found), but a new account
 * must be one the mail server behind mailgate could log in.
 */
import { MailgateError, ErrorCodes } from '../errors.js';

/** Long enough for any real address (RFC 5321 caps a path at 256 octets). */
export const MAX_USERNAME_BYTES = 256;

// C0 and C1 controls, DEL, and the Unicode line/paragraph separators: none has
// a place in a login name and each can break a log line or a protocol command.
const CONTROL_CHARS = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/u;

export function normaliseUsername(raw: string): string {
  const name = raw.trim().toLowerCase();
  if (name.length === 0) throw new MailgateError(ErrorCodes.INVALID_USERNAME, 'the username is empty');
  if (CONTROL_CHARS.test(name)) throw new MailgateError(ErrorCodes.INVALID_USERNAME, 'the username contains a control character');
  if (Buffer.byteLength(name, 'utf8') > MAX_USERNAME_BYTES) {
    throw new MailgateError(ErrorCodes.INVALID_USERNAME, `the username is longer than ${MAX_USERNAME_BYTES} bytes`);
  }
  if (name.includes('\ufffd')) throw new MailgateError(ErrorCodes.INVALID_USERNAME, 'the username is not valid UTF-8');
  return name;
}

/**
 * SASL PLAIN carries the name in a field of at most 255 octets (RFC 4616), and
 * mailgate logs in upstream that way: a longer name could never log in.
 */
export const MAX_NEW_USERNAME_BYTES = 255;

/**
 * The name for a new account, normalised, or a usage error saying why no mail
 * server would take it. `masterSeparator` is upstream.login.separator: the
 * upstream splits a login name at it into account and master user, so a name
 * containing it would log in as someone else, or not at all.
 */
export function validateNewUsername(raw: string, masterSeparator: string): string {
  const name = normaliseUsername(raw);
  if (Buffer.byteLength(name, 'utf8') > MAX_NEW_USERNAME_BYTES) {
    throw new MailgateError(ErrorCodes.INVALID_USERNAME, `the username is longer than ${MAX_NEW_USERNAME_BYTES} bytes`);
  }
  const refuse = (why: string) => new MailgateError(ErrorCodes.INVALID_USERNAME, `the username ${JSON.stringify(name)} ${why}`);
  // Inner white space (the ends were trimmed above): mail programs split or
  // quote such names inconsistently, and Dovecot's default
  // auth_username_chars refuses them.
  if (/\s/u.test(name)) throw refuse('contains white space');
  if (name.includes(masterSeparator)) {
    throw refuse(`contains ${JSON.stringify(masterSeparator)}, the master user separator (upstream.login.separator)`);
  }
  return name;
}

/** The same rule, as a test that does not throw (for the login path). */
export function tryNormaliseUsername(raw: string): string | null {
  try {
    return normaliseUsername(raw);
  } catch {
    return null;
  }
}
