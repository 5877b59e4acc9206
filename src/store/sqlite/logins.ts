/**
 * The login path's reads and writes on SQLite: the credential check (the
 * shared CredentialVerifier over this database's rows) and the records a
 * login leaves, each in one commit.
 */
import type { LoginRecord } from '../store.js';
import type { PasswordHasher } from '../hasher.js';
import type { Clock, LoginContext, Scope, VerifyResult } from '../types.js';
import { tryNormaliseUsername } from '../username.js';
import { CredentialVerifier } from '../verifier.js';
import type { AccountRepository } from './accounts.js';
import type { AppPasswordRepository } from './app-passwords.js';
import type { AuditLog } from './audit.js';
import type { Db } from './database.js';

/** The shared credential check (check, lookup, verifyFound, recheck) over this database's rows, and the records a login leaves. */
export class SqliteLogins extends CredentialVerifier {
  constructor(
    private readonly db: Db,
    accounts: AccountRepository,
    private readonly appPasswords: AppPasswordRepository,
    private readonly audit: AuditLog,
    hasher: PasswordHasher,
    now: Clock,
  ) {
    // Synchronous reads, handed to the shared verifier as the promises it expects.
    super(
      {
        findAccount: async (name) => accounts.find(name),
        findAccountById: async (id) => accounts.findById(id),
        findCandidate: async (accountId, selector) => appPasswords.findCandidate(accountId, selector),
        findAppPasswordById: async (id) => appPasswords.findById(id),
      },
      hasher,
      now,
    );
  }

  /**
   * Last use and the login-ok audit event, and `new-address` when the app
   * password had no login from this address in the trail yet: one commit,
   * all or nothing. IMMEDIATE, so that the look at the trail and the writes
   * see the same rows (two first logins from one address give one
   * `new-address`).
   */
  recordSuccess(record: LoginRecord): void {
    const { account, appPassword, context } = record;
    const username = account?.username ?? record.username;
    this.db
      .transaction(() => {
        const newAddress = appPassword !== null && context.clientIp !== null && !this.audit.loginSeenFrom(appPassword.id, context.clientIp);
        if (appPassword) this.appPasswords.recordUse(appPassword.id, { ip: context.clientIp, protocol: context.protocol, client: context.client ?? null });
        const entry = { username, appPasswordId: appPassword?.id ?? null, ip: context.clientIp, protocol: context.protocol };
        this.audit.record('login-ok', { ...entry, detail: appPassword ? 'app-password' : 'upstream-password' });
        if (newAddress) this.audit.record('new-address', entry);
      })
      .immediate();
  }

  /**
   * The login-failed audit event, under the normalised name when there is
   * one: a passthrough login is refused under the name as typed ("Alice"),
   * and the account's activity list finds its rows by the account's name.
   */
  recordFailure(username: string, reason: string, context: LoginContext): void {
    this.audit.record('login-failed', { username: tryNormaliseUsername(username) ?? username, ip: context.clientIp, protocol: context.protocol, detail: reason });
  }

  /** Checks an app password, then records the outcome (for the CLI and tests). */
  async verify(username: string, password: string, context: LoginContext & { protocol: Scope }): Promise<VerifyResult> {
    const result = await this.check(username, password, context.protocol);
    if (result.ok) this.recordSuccess({ account: result.account, appPassword: result.appPassword, username: result.account.username, context });
    else this.recordFailure(result.account?.username ?? username, result.reason, context);
    return result;
  }
}
