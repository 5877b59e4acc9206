/**
 * Two-step verification (TOTP, RFC 6238) for accounts.
 *
 * The codes themselves are totp-codes.ts's. A code is accepted at most once:
 * the last accepted time step is stored and only later steps pass, and the
 * update is conditional so two processes cannot both accept the same code.
 *
 * Turning it on or off changes what the account's sessions were signed in
 * with, so the same commit ends its page sessions (but the one making the
 * change) and makes or deletes its recovery codes.
 */
import { ErrorCodes, MailgateError } from '../../errors.js';
import type { AccountRepository } from './accounts.js';
import type { AuditLog } from './audit.js';
import type { Db } from './database.js';
import type { RecoveryCodeRepository } from './recovery-codes.js';
import type { WebSessionRepository } from './web-sessions.js';
import { open, seal } from '../secret-box.js';
import { acceptedStep, looksLikeTotpCode, newTotpSecret, totpEnrolment } from '../totp-codes.js';
import type { Account, Clock, TotpState, Enrolment } from '../types.js';

/** What turning two-step verification on or off did. */
export interface TotpChange {
  account: Account;
  /** The page sessions it ended (the facade announces them). */
  webSessionsEnded: number;
}

export interface TotpOptions {
  /** The hash of the page session making the change: it stays signed in. */
  keepWebSession?: string;
}

export class TotpService {
  constructor(
    private readonly db: Db,
    private readonly accounts: AccountRepository,
    private readonly audit: AuditLog,
    private readonly recoveryCodes: RecoveryCodeRepository,
    private readonly webSessions: WebSessionRepository,
    private readonly key: Buffer,
    private readonly now: Clock,
    private readonly issuer: string,
  ) {}

  status(username: string): TotpState {
    return this.accounts.get(username).totpState;
  }

  /** Starts (or restarts) enrolment: a new secret, state `pending` until confirmed. */
  enroll(username: string): Enrolment {
    return this.db
      .transaction(() => {
        const account = this.accounts.get(username);
        if (account.totpState === 'enabled') {
          throw new MailgateError(ErrorCodes.TOTP_STATE, `two-step verification is already on for ${account.username}; disable it first`);
        }
        const secret = newTotpSecret();
        const sealed = seal(this.key, Buffer.from(secret, 'ascii'), account.username);
        this.db
          .prepare("UPDATE accounts SET totp_state = 'pending', totp_secret = ?, totp_last_step = NULL WHERE id = ?")
          .run(sealed, account.id);
        this.audit.record('totp-enrolled', { username: account.username });
        return this.enrolment(account.username, secret);
      })
      .immediate();
  }

  /** The enrolment in progress (to show its QR code again after a wrong code), or null when there is none. */
  pending(username: string): Enrolment | null {
    const account = this.accounts.get(username);
    if (account.totpState !== 'pending') return null;
    const row = this.db.prepare('SELECT totp_secret FROM accounts WHERE id = ?').get(account.id) as { totp_secret: Buffer | null } | undefined;
    if (!row?.totp_secret) return null;
    return this.enrolment(account.username, open(this.key, row.totp_secret, account.username).toString('ascii'));
  }

  private enrolment(username: string, secret: string): Enrolment {
    return totpEnrolment(this.issuer, username, secret);
  }

  /**
   * Turns two-step verification on, if `code` is valid for the pending
   * secret (and spends it); makes the recovery codes, returned to be shown
   * once; ends the other page sessions. All or nothing.
   */
  confirm(username: string, code: string, options: TotpOptions = {}): TotpChange & { recoveryCodes: string[] } {
    return this.db
      .transaction(() => {
        const account = this.accounts.get(username);
        if (account.totpState !== 'pending') {
          throw new MailgateError(
            ErrorCodes.TOTP_STATE,
            account.totpState === 'enabled'
              ? `two-step verification is already on for ${account.username}`
              : `${account.username} has no pending enrolment; run "totp enroll" first`,
          );
        }
        const step = this.acceptCode(account, code);
        if (step === null) throw new MailgateError(ErrorCodes.TOTP_CODE, 'the code is not valid (check the phone clock and try the next code)');
        this.db
          .prepare("UPDATE accounts SET totp_state = 'enabled', totp_changed_at = ? WHERE id = ?")
          .run(this.now(), account.id);
        this.audit.record('totp-enabled', { username: account.username });
        const recoveryCodes = this.recoveryCodes.replaceIn(account);
        const webSessionsEnded = this.webSessions.endAllIn(account, options.keepWebSession);
        return { account: this.accounts.get(account.username), recoveryCodes, webSessionsEnded };
      })
      .immediate();
  }

  /** Turns it off: forgets the secret, deletes the recovery codes, ends the other page sessions. All or nothing. */
  disable(username: string, options: TotpOptions = {}): TotpChange {
    return this.db
      .transaction(() => {
        const account = this.accounts.get(username);
        if (account.totpState === 'none') {
          throw new MailgateError(ErrorCodes.TOTP_STATE, `two-step verification is not on for ${account.username}`);
        }
        this.db
          .prepare("UPDATE accounts SET totp_state = 'none', totp_secret = NULL, totp_last_step = NULL, totp_changed_at = ? WHERE id = ?")
          .run(this.now(), account.id);
        this.recoveryCodes.deleteIn(account);
        this.audit.record('totp-disabled', { username: account.username });
        const webSessionsEnded = this.webSessions.endAllIn(account, options.keepWebSession);
        return { account: this.accounts.get(account.username), webSessionsEnded };
      })
      .immediate();
  }

  /**
   * Checks a code for an account whose two-step verification is on, and
   * consumes it: the same code (or an older one) is refused afterwards.
   */
  verify(username: string, code: string): boolean {
    return this.db
      .transaction(() => {
        const account = this.accounts.find(username);
        if (!account || account.totpState !== 'enabled') return false;
        return this.acceptCode(account, code) !== null;
      })
      .immediate();
  }

  /**
   * Checks and consumes a code of an account whose two-step verification is
   * on, inside the caller's transaction (so that a create that fails with it
   * does not burn the code). Throws TOTP_STATE when it is not on, TOTP_CODE
   * when the code is wrong, old or used.
   */
  consumeIn(account: Account, code: string): void {
    if (account.totpState !== 'enabled') {
      throw new MailgateError(ErrorCodes.TOTP_STATE, `two-step verification is not on for ${account.username}`);
    }
    if (this.acceptCode(account, code) === null) {
      throw new MailgateError(ErrorCodes.TOTP_CODE, 'the code is wrong, expired or already used; wait for the next one');
    }
  }

  /** Validates and consumes a code; returns the accepted time step or null. */
  private acceptCode(account: Account, code: string): number | null {
    if (!looksLikeTotpCode(code)) return null;
    const row = this.db.prepare('SELECT totp_secret, totp_last_step FROM accounts WHERE id = ?').get(account.id) as
      | { totp_secret: Buffer | null; totp_last_step: number | null }
      | undefined;
    if (!row?.totp_secret) return null;
    const secret = open(this.key, row.totp_secret, account.username).toString('ascii');
    const step = acceptedStep(secret, code, this.now(), row.totp_last_step);
    if (step === null) return null;
    const consumed = this.db
      .prepare('UPDATE accounts SET totp_last_step = ? WHERE id = ? AND (totp_last_step IS NULL OR totp_last_step < ?)')
      .run(step, account.id, step);
    return consumed.changes === 1 ? step : null;
  }
}
