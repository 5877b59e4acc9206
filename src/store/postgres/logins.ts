/**
 * The login path on PostgreSQL: the shared CredentialVerifier over this
 * database's rows, and the records a login leaves, in one transaction.
 */
import type { PasswordHasher } from '../hasher.js';
import type { LoginRecord } from '../store.js';
import type { CachedLogin, Clock, LoginContext, Scope, VerifyResult } from '../types.js';
import { tryNormaliseUsername } from '../username.js';
import { CredentialVerifier } from '../verifier.js';
import type { PgAccounts } from './accounts.js';
import type { PgAppPasswords } from './app-passwords.js';
import type { PgAudit } from './audit.js';
import type { PgDatabase, Tx } from './database.js';

/** Serialises the first-login look at the trail per app password and address (see recordSuccess). */
const NEW_ADDRESS_LOCK = 'mailgate new-address';

export class PgLogins {
  private readonly verifier: CredentialVerifier;

  constructor(
    db: PgDatabase,
    accounts: PgAccounts,
    private readonly appPasswords: PgAppPasswords,
    private readonly audit: PgAudit,
    hasher: PasswordHasher,
    now: Clock,
  ) {
    this.verifier = new CredentialVerifier(
      {
        findAccount: (name) => accounts.find(db.sql, name),
        findAccountById: (id) => accounts.findById(db.sql, id),
        findCandidate: (accountId, selector) => appPasswords.findCandidate(db.sql, accountId, selector),
        findAppPasswordById: (id) => appPasswords.findById(db.sql, id),
      },
      hasher,
      now,
    );
  }

  check(username: string, password: string, protocol: Scope): Promise<VerifyResult> {
    return this.verifier.check(username, password, protocol);
  }

  recheck(login: CachedLogin, protocol: Scope): Promise<VerifyResult | null> {
    return this.verifier.recheck(login, protocol);
  }

  /**
   * Last use, login-ok, and new-address the first time the app password is
   * used from the address: one transaction. A transaction-scoped advisory
   * lock on (app password, address) makes two first logins at once, on any
   * nodes, give one new-address (SQLite gets this from its IMMEDIATE write lock).
   */
  async recordSuccess(tx: Tx, record: LoginRecord): Promise<void> {
    const { account, appPassword, context } = record;
    const username = account?.username ?? record.username;
    let newAddress = false;
    if (appPassword !== null && context.clientIp !== null) {
      await tx.run('SELECT pg_advisory_xact_lock(hashtext($1))', [`${NEW_ADDRESS_LOCK} ${appPassword.id} ${context.clientIp}`]);
      newAddress = !(await this.audit.loginSeenFrom(tx, appPassword.id, context.clientIp));
    }
    if (appPassword) await this.appPasswords.recordUse(tx, appPassword.id, { ip: context.clientIp, protocol: context.protocol, client: context.client ?? null });
    const entry = { username, appPasswordId: appPassword?.id ?? null, ip: context.clientIp, protocol: context.protocol };
    await this.audit.record(tx, 'login-ok', { ...entry, detail: appPassword ? 'app-password' : 'upstream-password' });
    if (newAddress) await this.audit.record(tx, 'new-address', entry);
  }

  /** login-failed, under the normalised name when there is one (sqlite/logins.ts says why). */
  recordFailure(tx: Tx, username: string, reason: string, context: LoginContext): Promise<void> {
    return this.audit.record(tx, 'login-failed', { username: tryNormaliseUsername(username) ?? username, ip: context.clientIp, protocol: context.protocol, detail: reason });
  }
}
