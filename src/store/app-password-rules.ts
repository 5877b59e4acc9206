/**
 * What a new app password must satisfy, for every engine: a valid name,
 * unique among the account's active ones, under the per-account limit, and
 * a TOTP code only for an account with two-step verification on. The engines
 * run these checks before hashing (to fail fast) and again inside the write
 * transaction, which is what counts.
 */
import { ErrorCodes, MailgateError } from '../errors.js';
import { validateName } from './app-password-format.js';
import { SCOPES, appPasswordStatus, type Account, type AppPasswordInfo, type CreateOptions, type Scope } from './types.js';

export interface NewAppPassword {
  name: string;
  scopes: Scope[];
  expiresAt: number | null;
}

/** The name (validated), scopes (all by default) and expiry of a create. */
export function newAppPassword(options: CreateOptions): NewAppPassword {
  return {
    name: validateName(options.name),
    scopes: options.scopes && options.scopes.length > 0 ? [...options.scopes] : [...SCOPES],
    expiresAt: options.expiresAt ?? null,
  };
}

/** Refuses a duplicate name among the active app passwords, or one past the limit. */
export function checkCanCreate(account: Account, name: string, existing: readonly AppPasswordInfo[], maxActive: number, now: number): void {
  const active = existing.filter((p) => appPasswordStatus(p, now) === 'active');
  if (active.some((p) => p.name === name)) {
    throw new MailgateError(ErrorCodes.DUPLICATE_NAME, `${account.username} already has an app password named "${name}"`);
  }
  if (active.length >= maxActive) {
    throw new MailgateError(
      ErrorCodes.TOO_MANY_APP_PASSWORDS,
      `${account.username} already has ${active.length} active app passwords (the limit is ${maxActive}); revoke one first`,
    );
  }
}

/** A self-service create carries a TOTP code: only an account with two-step verification on can have one checked. */
export function checkCodeCanBeChecked(account: Account, options: CreateOptions): void {
  if (options.totpCode !== undefined && account.totpState !== 'enabled') {
    throw new MailgateError(ErrorCodes.TOTP_STATE, `two-step verification is not on for ${account.username}; a code cannot be checked`);
  }
}

/** Selector collisions in one account of at most a few dozen rows (26^4 selectors) beyond this are not bad luck. */
export const CREATE_ATTEMPTS = 5;
