/**
 * What a recovery code looks like, and its form at rest.
 *
 * 16 characters of the lower-case base32 alphabet (a-z, 2-7) from a CSPRNG:
 * 80 bits, shown as xxxx-xxxx-xxxx-xxxx because people copy them onto paper.
 * That is far beyond guessing, online or against a stolen table, so a keyed
 * hash (HMAC-SHA-256 under a subkey of the store key file) is all the
 * protection at rest they need: a slow hash buys nothing against 2^80, and
 * the key keeps a copy of the database alone from checking a candidate code.
 * A keyed hash can also be looked up directly, so spending a code is one
 * conditional UPDATE.
 */
import { createHmac, randomInt } from 'node:crypto';

/** How many codes an account gets each time (the interface's RecoveryCodeStore.regenerate). */
export const RECOVERY_CODE_COUNT = 10;
export const RECOVERY_CODE_LENGTH = 16;
/** RFC 4648 base32, lower-cased: no 0/1/8/9, which read like o/l/b/g. */
const ALPHABET = 'abcdefghijklmnopqrstuvwxyz234567';
/** The HKDF label of the HMAC subkey; changing it makes every stored code unusable. */
export const RECOVERY_CODE_KEY_LABEL = 'mailgate recovery codes';

export interface GeneratedRecoveryCode {
  /** The 16 characters, as hashed. */
  canonical: string;
  /** As shown: "abcd-efgh-ijkl-mnop". */
  display: string;
}

/** `count` distinct codes. */
export function generateRecoveryCodes(count = RECOVERY_CODE_COUNT): GeneratedRecoveryCode[] {
  const codes = new Map<string, GeneratedRecoveryCode>();
  while (codes.size < count) {
    let canonical = '';
    // randomInt rejects biased samples itself, so every character is uniform.
    for (let i = 0; i < RECOVERY_CODE_LENGTH; i++) canonical += ALPHABET[randomInt(ALPHABET.length)];
    codes.set(canonical, { canonical, display: formatRecoveryCode(canonical) });
  }
  return [...codes.values()];
}

export function formatRecoveryCode(canonical: string): string {
  return canonical.match(/.{1,4}/g)!.join('-');
}

/**
 * The canonical form of what a user typed, or null when it cannot be a
 * recovery code: dashes and white space dropped, case folded (phones
 * capitalise the first letter, people copy the groups with spaces).
 */
export function canonicalRecoveryCode(typed: string): string | null {
  const candidate = typed.replace(/[\s-]/g, '').toLowerCase();
  return candidate.length === RECOVERY_CODE_LENGTH && /^[a-z2-7]+$/.test(candidate) ? candidate : null;
}

/**
 * The stored form: HMAC-SHA-256 under the recovery-code subkey, over the
 * account name and the code, hex. The name binds the hash to its account
 * (names cannot contain a NUL, so the input is unambiguous): a hash copied
 * onto another account's row does not match that account's codes.
 */
export function recoveryCodeDigest(subkey: Buffer, username: string, canonical: string): string {
  return createHmac('sha256', subkey).update(`${username}\u0000${canonical}`, 'utf8').digest('hex');
}
