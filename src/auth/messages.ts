/**
 * What mail programs show their users. Every credential failure gets the same
 * words, so the answer never tells whether the account exists or has 2FA;
 * the specific reason goes to the log only.
 */

export function loginFailedAlert(helpUrl: string): string {
  const help = helpUrl ? `: ${helpUrl}` : '.';
  return `Sign-in failed. If your account has 2-step verification, sign in with an app password, not your account password${help}`;
}

/**
 * The farewell to a session that logged in with the account password when
 * 2-step verification is turned on: nothing was revoked, so the user needs
 * to hear what changed and what to do instead.
 */
export function twoFactorEnabledFarewell(helpUrl: string): string {
  const help = helpUrl ? `: ${helpUrl}` : '.';
  return `2-step verification was turned on for this account; sign in again with an app password${help}`;
}

/** The farewell to a session that used the account password, once the account needs app passwords. */
export function appPasswordRequiredFarewell(helpUrl: string): string {
  const help = helpUrl ? `: ${helpUrl}` : '.';
  return `This account now signs in with app passwords only; sign in again with an app password${help}`;
}

export const ACCOUNT_BLOCKED = 'This account is temporarily blocked after repeated failed sign-ins; try again later.';
export const TEMPORARY_FAILURE = 'The mail service is temporarily unavailable; try again in a few minutes.';
export const MAILBOX_IN_USE = 'The mailbox is in use by another session; try again later.';
export const APP_PASSWORD_REVOKED = 'This app password was revoked or has expired; sign in again with a valid one.';
export const SHUTTING_DOWN = 'The server is shutting down; reconnect in a moment.';
export const SESSION_KICKED = 'An administrator closed this session.';
export const TOO_MANY_ERRORS = 'Too many invalid commands.';
export const IDLE_TIMEOUT = 'Disconnected for inactivity.';
