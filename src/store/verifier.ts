/**
 * The app-password check, the same for every storage backend: each backend
 * provides the few rows it reads (CredentialRows), this decides.
 *
 * Every path that ends in a refusal costs exactly one argon2 verification,
 * against the real hash or a dummy one, so response time does not tell an
 * attacker whether the account exists, has app passwords, or matched a selector.
 */
import { canonicalAppPassword, selectorOf } from './app-password-format.js';
import type { PasswordHasher } from './hasher.js';
import { appPasswordStatus, type Account, type AppPasswordCandidate, type AppPasswordInfo, type CachedLogin, type Clock, type CredentialLookup, type Scope, type VerifyResult } from './types.js';

/** The reads a credential check needs, by name, id and selector. */
export interface CredentialRows {
  findAccount(name: string): Promise<Account | null>;
  findAccountById(id: number): Promise<Account | null>;
  /** The row a login's selector points at, preferring a live one. */
  findCandidate(accountId: number, selector: string): Promise<AppPasswordCandidate | null>;
  findAppPasswordById(id: number): Promise<AppPasswordInfo | null>;
  /**
   * Both rows of a verified login at once, only when the app password is the
   * account's (null otherwise): a backend with a round trip per read gives
   * this, and a cache hit costs it one read instead of two.
   */
  findLogin?(accountId: number, appPasswordId: number): Promise<{ account: Account; appPassword: AppPasswordInfo } | null>;
  /** findAccount and then findCandidate, in one read where the backend has it (as findLogin). */
  findAccountWithCandidate?(name: string, selector: string): Promise<{ account: Account | null; candidate: AppPasswordCandidate | null }>;
}

export class CredentialVerifier {
  constructor(
    private readonly rows: CredentialRows,
    private readonly hasher: PasswordHasher,
    /** The engines' logins (which extend this) time their records by it too. */
    protected readonly now: Clock,
  ) {}

  /** Checks an app password without recording anything. */
  async check(username: string, password: string, protocol: Scope): Promise<VerifyResult> {
    return this.verifyFound(await this.lookup(username, password), password, protocol);
  }

  /** The account and the candidate app password, in one read where the backend has it: check's read, alone. */
  lookup(username: string, password: string): Promise<CredentialLookup> {
    return this.accountAndCandidate(username, canonicalAppPassword(password));
  }

  /** check's decision on what lookup read: one argon2 run (or a dummy one), no read. */
  async verifyFound(found: CredentialLookup, password: string, protocol: Scope): Promise<VerifyResult> {
    const canonical = canonicalAppPassword(password);
    const { account, candidate } = found;
    if (!account || !canonical || !candidate) {
      await this.hasher.verifyDummy(password);
      return { ok: false, reason: account ? 'wrong-password' : 'unknown-account', account };
    }
    if (!(await this.hasher.verify(candidate.hash, canonical))) {
      return { ok: false, reason: 'wrong-password', account };
    }
    // Status is checked only after the hash matched: telling "revoked" from
    // "wrong" is for the log, and only the owner of the password can reach it.
    return this.usable(account, candidate.info, protocol);
  }

  /**
   * Re-reads an app password that matched before (a verified-login cache hit):
   * still active, in scope, and the account's TOTP state unchanged? Two
   * reads (one where the backend has findLogin), no hashing; null when the
   * rows are not the ones verified.
   */
  async recheck(login: CachedLogin, protocol: Scope): Promise<VerifyResult | null> {
    const found = await this.loginRows(login);
    if (!found) return null;
    const { account, appPassword } = found;
    // Rows deleted and their ids reused by new ones are not the rows that were verified.
    if (account.createdAt !== login.accountCreatedAt || account.totpChangedAt !== login.totpChangedAt) return null;
    if (appPassword.createdAt !== login.appPasswordCreatedAt) return null;
    return this.usable(account, appPassword, protocol);
  }

  /** The account, and the app password the selector points at (none without an app-password-shaped password). */
  private async accountAndCandidate(username: string, canonical: string | null): Promise<{ account: Account | null; candidate: AppPasswordCandidate | null }> {
    if (canonical && this.rows.findAccountWithCandidate) return this.rows.findAccountWithCandidate(username, selectorOf(canonical));
    const account = await this.rows.findAccount(username);
    const candidate = account && canonical ? await this.rows.findCandidate(account.id, selectorOf(canonical)) : null;
    return { account, candidate };
  }

  /** The account and the app password of a verified login, when both exist and the one is the other's. */
  private async loginRows(login: CachedLogin): Promise<{ account: Account; appPassword: AppPasswordInfo } | null> {
    if (this.rows.findLogin) return this.rows.findLogin(login.accountId, login.appPasswordId);
    const account = await this.rows.findAccountById(login.accountId);
    const appPassword = await this.rows.findAppPasswordById(login.appPasswordId);
    return account && appPassword && appPassword.accountId === account.id ? { account, appPassword } : null;
  }

  private usable(account: Account, appPassword: AppPasswordInfo, protocol: Scope): VerifyResult {
    const status = appPasswordStatus(appPassword, this.now());
    if (status !== 'active') return { ok: false, reason: status, account };
    if (!appPassword.scopes.includes(protocol)) return { ok: false, reason: 'out-of-scope', account };
    return { ok: true, account, appPassword };
  }
}
