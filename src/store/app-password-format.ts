/**
 * What an app password looks like.
 *
 * 16 letters a–z from a CSPRNG (about 75 bits), shown in groups of four the way
 * the big mail providers do, because users copy them by hand onto phones. The
 * first four letters double as a non-secret selector, so a login needs one
 * argon2 verification, not one per stored password. The other twelve letters
 * (about 56 bits) stay secret behind argon2id, far beyond online guessing.
 */
import { randomInt } from 'node:crypto';
import { ErrorCodes, MailgateError } from '../errors.js';
import { SCOPES, type Scope } from './types.js';

export const APP_PASSWORD_LENGTH = 16;
export const SELECTOR_LENGTH = 4;
const ALPHABET = 'abcdefghijklmnopqrstuvwxyz';

export interface GeneratedAppPassword {
  /** The 16 letters, as hashed and as accepted. */
  secret: string;
  /** The same letters as shown to the user: "abcd efgh ijkl mnop". */
  display: string;
  selector: string;
}

export function generateAppPassword(): GeneratedAppPassword {
  let secret = '';
  // randomInt rejects biased samples itself, so every letter is uniform.
  for (let i = 0; i < APP_PASSWORD_LENGTH; i++) secret += ALPHABET[randomInt(ALPHABET.length)];
  return { secret, display: formatAppPassword(secret), selector: selectorOf(secret) };
}

export function formatAppPassword(secret: string): string {
  return secret.match(/.{1,4}/g)!.join(' ');
}

export function selectorOf(secret: string): string {
  return secret.slice(0, SELECTOR_LENGTH);
}

/**
 * The canonical form of what a user typed, or null when it cannot be an app
 * password. Spaces (and tabs, which some phones insert when pasting) are
 * dropped and case is folded, since keyboards capitalise the first letter.
 */
export function canonicalAppPassword(typed: string): string | null {
  const candidate = typed.replace(/[ \t]/g, '').toLowerCase();
  return /^[a-z]{16}$/.test(candidate) ? candidate : null;
}

/** Longest name of an app password ("Thunderbird on laptop"). */
export const MAX_NAME_LENGTH = 64;

export function parseScopes(text: string): Scope[] {
  const scopes = new Set<Scope>();
  for (const part of text.split(',').map((s) => s.trim().toLowerCase())) {
    if (!(SCOPES as readonly string[]).includes(part)) {
      throw new MailgateError(ErrorCodes.UNKNOWN_SCOPE, `unknown scope "${part}" (use ${SCOPES.join(', ')})`);
    }
    scopes.add(part as Scope);
  }
  if (scopes.size === 0) throw new MailgateError(ErrorCodes.UNKNOWN_SCOPE, 'at least one scope is needed');
  return SCOPES.filter((s) => scopes.has(s));
}

export function validateName(raw: string): string {
  const name = raw.trim();
  if (name.length === 0) throw new MailgateError(ErrorCodes.INVALID_NAME, 'the app password needs a name');
  if (name.length > MAX_NAME_LENGTH) throw new MailgateError(ErrorCodes.INVALID_NAME, `the name is longer than ${MAX_NAME_LENGTH} characters`);
  if (/[\u0000-\u001f\u007f-\u009f]/u.test(name)) throw new MailgateError(ErrorCodes.INVALID_NAME, 'the name contains a control character');
  return name;
}
