/**
 * Recovery codes: one-time codes for an account with two-step verification,
 * for the day its authenticator app is lost. Stored as keyed hashes
 * (recovery-code-format.ts says why that is enough), each good once: a code
 * is spent by one conditional UPDATE, so two processes cannot both accept it.
 */
import { ErrorCodes, MailgateError } from '../../errors.js';
import { canonicalRecoveryCode, generateRecoveryCodes, RECOVERY_CODE_COUNT, recoveryCodeDigest } from '../recovery-code-format.js';
import type { Account, Clock } from '../types.js';
import type { AccountRepository } from './accounts.js';
import type { AuditLog } from './audit.js';
import type { Db } from './database.js';

export class RecoveryCodeRepository {
  private readonly deleteOfAccount;
  private readonly insert;
  private readonly spend;
  private readonly countUnused;

  constructor(
    private readonly db: Db,
    private readonly accounts: AccountRepository,
    private readonly audit: AuditLog,
    /** The HMAC subkey, derived from the store key file. */
    private readonly subkey: Buffer,
    private readonly now: Clock,
  ) {
    this.deleteOfAccount = db.prepare('DELETE FROM recovery_codes WHERE account_id = ?');
    this.insert = db.prepare('INSERT INTO recovery_codes (account_id, code_hash, created_at) VALUES (?, ?, ?)');
    this.spend = db.prepare('UPDATE recovery_codes SET used_at = ? WHERE account_id = ? AND code_hash = ? AND used_at IS NULL');
    this.countUnused = db.prepare('SELECT count(*) FROM recovery_codes WHERE account_id = ? AND used_at IS NULL').pluck();
  }

  /** Replaces the account's codes with new ones; returns them as shown, once. */
  regenerate(username: string): string[] {
    return this.db
      .transaction(() => {
        const account = this.accounts.get(username);
        if (account.totpState !== 'enabled') {
          throw new MailgateError(ErrorCodes.TOTP_STATE, `two-step verification is not on for ${account.username}; recovery codes are only for accounts with it`);
        }
        return this.replaceIn(account);
      })
      .immediate();
  }

  /** Replaces the codes inside the caller's transaction (turning two-step verification on); audited. */
  replaceIn(account: Account): string[] {
    this.deleteOfAccount.run(account.id);
    const now = this.now();
    const codes = generateRecoveryCodes(RECOVERY_CODE_COUNT);
    for (const code of codes) this.insert.run(account.id, recoveryCodeDigest(this.subkey, account.username, code.canonical), now);
    this.audit.record('recovery-codes-created', { username: account.username, detail: String(codes.length) });
    return codes.map((code) => code.display);
  }

  /** Deletes the account's codes inside the caller's transaction (turning two-step verification off). */
  deleteIn(account: Account): void {
    this.deleteOfAccount.run(account.id);
  }

  /**
   * Spends one code: true once for each code, false when it is wrong, used,
   * or not a code at all, or the account is unknown or has two-step
   * verification off. Audited when spent, the detail being how many are left.
   */
  consume(username: string, typed: string): boolean {
    const canonical = canonicalRecoveryCode(typed);
    if (canonical === null) return false;
    return this.db
      .transaction(() => {
        const account = this.accounts.find(username);
        if (!account || account.totpState !== 'enabled') return false;
        const spent = this.spend.run(this.now(), account.id, recoveryCodeDigest(this.subkey, account.username, canonical)).changes === 1;
        if (spent) this.audit.record('recovery-code-used', { username: account.username, detail: String(this.unused(account)) });
        return spent;
      })
      .immediate();
  }

  /** How many of the account's codes are unused. */
  remaining(username: string): number {
    return this.unused(this.accounts.get(username));
  }

  private unused(account: Account): number {
    return this.countUnused.get(account.id) as number;
  }
}
