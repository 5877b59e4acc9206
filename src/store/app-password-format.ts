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
