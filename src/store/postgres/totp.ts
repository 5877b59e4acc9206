/**
 * Two-step verification on PostgreSQL. The codes are totp-codes.ts's, the
 * secret sealed as on SQLite (the same key file, the same bytes). A code is
 * spent by `UPDATE ... WHERE totp_last_step < $step`: a code used on one
 * node is refused on every other. Turning it on or off makes or deletes the
 * recovery codes and ends the other page sessions in the same transaction.
 */
import { ErrorCodes, MailgateError } from '../../errors.js';
import { open, seal } from '../secret-box.js';
import { acceptedStep, looksLikeTotpCode, newTotpSecret, totpEnrolment } from '../totp-codes.js';
import type { Account, Clock, Enrolment } from '../types.js';
import type { PgAccounts } from './accounts.js';
import type { PgAudit } from './audit.js';
import type { Sql, Tx } from './database.js';
import type { PgRecoveryCodes } from './recovery-codes.js';
import type { PgWebSessions } from './web-sessions.js';

export interface PgTotpChange {
  account: Account;
  webSessionsEnded: number;
}

export class PgTotp {
  constructor(
    private readonly accounts: PgAccounts,
    private readonly audit: PgAudit,
    private readonly recoveryCodes: PgRecoveryCodes,
    private readonly webSessions: PgWebSessions,
    private readonly key: Buffer,
    private readonly now: Clock,
    private readonly issuer: string,
  ) {}

  async enroll(tx: Tx, username: string): Promise<Enrolment> {
    const account = await this.accounts.lock(tx, username);
    if (account.totpState === 'enabled') {
      throw new MailgateError(ErrorCodes.TOTP_STATE, `two-step verification is already on for ${account.username}; disable it first`);
    }
    const secret = newTotpSecret();
    const sealed = seal(this.key, Buffer.from(secret, 'ascii'), account.username);
    await tx.run("UPDATE accounts SET totp_state = 'pending', totp_secret = $1, totp_last_step = NULL WHERE id = $2", [sealed, account.id]);
    await this.audit.record(tx, 'totp-enrolled', { username: account.username });
    return totpEnrolment(this.issuer, account.username, secret);
  }

  async pending(sql: Sql, username: string): Promise<Enrolment | null> {
    const account = await this.accounts.get(sql, username);
    if (account.totpState !== 'pending') return null;
    const row = await sql.one<{ totp_secret: Buffer | null }>('SELECT totp_secret FROM accounts WHERE id = $1', [account.id]);
    if (!row?.totp_secret) return null;
    return totpEnrolment(this.issuer, account.username, open(this.key, row.totp_secret, account.username).toString('ascii'));
  }

  async confirm(tx: Tx, username: string, code: string, keepWebSession?: string): Promise<PgTotpChange & { recoveryCodes: string[] }> {
    const account = await this.accounts.lock(tx, username);
    if (account.totpState !== 'pending') {
      throw new MailgateError(
        ErrorCodes.TOTP_STATE,
        account.totpState === 'enabled'
          ? `two-step verification is already on for ${account.username}`
          : `${account.username} has no pending enrolment; run "totp enroll" first`,
      );
    }
    if ((await this.acceptCode(tx, account, code)) === null) {
      throw new MailgateError(ErrorCodes.TOTP_CODE, 'the code is not valid (check the phone clock and try the next code)');
    }
    await tx.run("UPDATE accounts SET totp_state = 'enabled', totp_changed_at = $1 WHERE id = $2", [this.now(), account.id]);
    await this.audit.record(tx, 'totp-enabled', { username: account.username });
    const recoveryCodes = await this.recoveryCodes.replace(tx, account);
    const webSessionsEnded = await this.webSessions.endAll(tx, account, keepWebSession);
    return { account: await this.accounts.get(tx, account.username), recoveryCodes, webSessionsEnded };
  }

  async disable(tx: Tx, username: string, keepWebSession?: string): Promise<PgTotpChange> {
    const account = await this.accounts.lock(tx, username);
    if (account.totpState === 'none') throw new MailgateError(ErrorCodes.TOTP_STATE, `two-step verification is not on for ${account.username}`);
    await tx.run("UPDATE accounts SET totp_state = 'none', totp_secret = NULL, totp_last_step = NULL, totp_changed_at = $1 WHERE id = $2", [this.now(), account.id]);
    await this.recoveryCodes.delete(tx, account);
    await this.audit.record(tx, 'totp-disabled', { username: account.username });
    const webSessionsEnded = await this.webSessions.endAll(tx, account, keepWebSession);
    return { account: await this.accounts.get(tx, account.username), webSessionsEnded };
  }

  /** Checks and spends a code of an account with two-step verification on. */
  async verify(tx: Tx, username: string, code: string): Promise<boolean> {
    const account = await this.accounts.find(tx, username);
    if (!account || account.totpState !== 'enabled') return false;
    return (await this.acceptCode(tx, account, code)) !== null;
  }

  /** Checks and spends a code inside the caller's transaction (an app password's create); TOTP_STATE or TOTP_CODE otherwise. */
  async consume(tx: Tx, account: Account, code: string): Promise<void> {
    if (account.totpState !== 'enabled') throw new MailgateError(ErrorCodes.TOTP_STATE, `two-step verification is not on for ${account.username}`);
    if ((await this.acceptCode(tx, account, code)) === null) {
      throw new MailgateError(ErrorCodes.TOTP_CODE, 'the code is wrong, expired or already used; wait for the next one');
    }
  }

  /** Validates and spends a code by a conditional update; the accepted step or null. */
  private async acceptCode(tx: Tx, account: Account, code: string): Promise<number | null> {
    if (!looksLikeTotpCode(code)) return null;
    const row = await tx.one<{ totp_secret: Buffer | null; totp_last_step: number | null }>('SELECT totp_secret, totp_last_step FROM accounts WHERE id = $1', [account.id]);
    if (!row?.totp_secret) return null;
    const secret = open(this.key, row.totp_secret, account.username).toString('ascii');
    const step = acceptedStep(secret, code, this.now(), row.totp_last_step);
    if (step === null) return null;
    const consumed = await tx.run('UPDATE accounts SET totp_last_step = $1 WHERE id = $2 AND (totp_last_step IS NULL OR totp_last_step < $1)', [step, account.id]);
    return consumed === 1 ? step : null;
  }
}
