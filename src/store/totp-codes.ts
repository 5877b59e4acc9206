/**
 * TOTP (RFC 6238) as mailgate uses it, for every engine: the secret, the
 * enrolment's otpauth URI, and which time step a typed code is good for.
 *
 * Defaults every authenticator app understands: SHA-1, 6 digits, 30 s steps,
 * and one step of clock drift either way. A code is good only for a step
 * after the last one accepted; the engines spend the step by a conditional
 * update, so two processes (or nodes) cannot both accept the same code.
 */
import { generateSecret, generateURI, verifySync } from 'otplib';
import type { Enrolment } from './types.js';

const PERIOD_SECONDS = 30;
/** ±1 step: epochTolerance is in seconds. */
const TOLERANCE_SECONDS = PERIOD_SECONDS;

/** A new secret, base32 (20 bytes). */
export function newTotpSecret(): string {
  return generateSecret({ length: 20 });
}

export function totpEnrolment(issuer: string, username: string, secret: string): Enrolment {
  return { secret, uri: generateURI({ issuer, label: username, secret }) };
}

/** Six digits (spaces around allowed): anything else is refused before the secret is even decrypted. */
export function looksLikeTotpCode(code: string): boolean {
  return /^\d{6}$/.test(code.trim());
}

/**
 * The time step `code` is valid for at `nowMs`, later than `lastStep`; null
 * when it is not a code, wrong, too old, or already used.
 */
export function acceptedStep(secret: string, code: string, nowMs: number, lastStep: number | null): number | null {
  if (!looksLikeTotpCode(code)) return null;
  const token = code.trim();
  const epoch = Math.floor(nowMs / 1000);
  const result = verifySync({
    secret,
    token,
    epoch,
    epochTolerance: TOLERANCE_SECONDS,
    ...(lastStep === null ? {} : { afterTimeStep: lastStep }),
  });
  if (!result.valid) return null;
  return Math.floor(epoch / PERIOD_SECONDS) + result.delta;
}
