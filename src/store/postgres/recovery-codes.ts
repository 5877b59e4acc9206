/**
 * Recovery codes on PostgreSQL: keyed hashes (recovery-code-format.ts), each
 * spent by one conditional UPDATE (`used_at IS NULL`), so two nodes cannot
 * both accept the same code.
 */
import { ErrorCodes, MailgateError } from '../../errors.js';
import { canonicalRecoveryCode, generateRecoveryCodes, RECOVERY_CODE_COUNT, recoveryCodeDigest } from '../recovery-code-format.js';
import type { Account, Clock } from '../types.js';
import type { PgAccounts } from './accounts.js';
import type { PgAudit } from './audit.js';
import type { Sql, Tx } from './database.js';

export class PgRecoveryCodes {
  constructor(
    private readonly accounts: PgAccounts,
    private readonly audit: PgAudit,
    /** The HMAC subkey, derived from the store key file. */
    private readonly subkey: Buffer,
    private readonly now: Clock,
  ) {}

  async regenerate(tx: Tx, username: string): Promise<string[]> {
    const account = await this.accounts.lock(tx, username);
    if (account.totpState !== 'enabled') {
      throw new MailgateError(ErrorCodes.TOTP_STATE, `two-step verification is not on for ${account.username}; recovery codes are only for accounts with it`);
    }
    return this.replace(tx, account);
  }

  /** Replaces the codes inside the caller's transaction; audited. */
  async replace(tx: Tx, account: Account): Promise<string[]> {
    await this.delete(tx, account);
    const now = this.now();
    const codes = generateRecoveryCodes(RECOVERY_CODE_COUNT);
    const hashes = codes.map((code) => recoveryCodeDigest(this.subkey, account.username, code.canonical));
    await tx.run('INSERT INTO recovery_codes (account_id, code_hash, created_at) SELECT $1, unnest($2::text[]), $3', [account.id, hashes, now]);
    await this.audit.record(tx, 'recovery-codes-created', { username: account.username, detail: String(codes.length) });
    return codes.map((code) => code.display);
  }

  async delete(tx: Tx, account: Account): Promise<void> {
    await tx.run('DELETE FROM recovery_codes WHERE account_id = $1', [account.id]);
  }

  /** Spends one code: true once per code; audited when spent, with how many are left. */
  async consume(tx: Tx, username: string, typed: string): Promise<boolean> {
    const canonical = canonicalRecoveryCode(typed);
    if (canonical === null) return false;
    const account = await this.accounts.find(tx, username);
    if (!account || account.totpState !== 'enabled') return false;
    const spent =
      (await tx.run('UPDATE recovery_codes SET used_at = $1 WHERE account_id = $2 AND code_hash = $3 AND used_at IS NULL', [
        this.now(),
        account.id,
        recoveryCodeDigest(this.subkey, account.username, canonical),
      ])) === 1;
    if (spent) await this.audit.record(tx, 'recovery-code-used', { username: account.username, detail: String(await this.unused(tx, account)) });
    return spent;
  }

  async remaining(sql: Sql, username: string): Promise<number> {
    return this.unused(sql, await this.accounts.get(sql, username));
  }

  private async unused(sql: Sql, account: Account): Promise<number> {
    const row = await sql.one<{ n: number }>('SELECT count(*) AS n FROM recovery_codes WHERE account_id = $1 AND used_at IS NULL', [account.id]);
    return row?.n ?? 0;
  }
}
