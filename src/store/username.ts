/**
 * Account names as mailgate stores and compares them.
 *
 * Mail programs send the name the user typed, with whatever case and stray
 * spaces, so both sides of every comparison go through normaliseUsername.
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

/** The same rule, as a test that does not throw (for the login path). */
export function tryNormaliseUsername(raw: string): string | null {
  try {
    return normaliseUsername(raw);
  } catch {
    return null;
  }
}
