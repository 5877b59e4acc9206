/**
 * The credential check the gateway calls for every login with an app password.
 *
 * Every path that ends in a refusal costs exactly one argon2 verification,
 * against the real hash or a dummy one, so response time does not tell an
 * attacker whether the account exists, has app passwords, or matched a selector.
 */
import type { AccountRepository } from './accounts.js';
import { canonicalAppPassword, selectorOf } from './app-password-format.js';
import type { AppPasswordRepository } from './app-passwords.js';
import type { AuditLog } from './audit.js';
import type { PasswordHasher } from './hasher.js';
import { appPasswordStatus, type Account, type AppPasswordInfo, type Clock, type Scope } from './types.js';

/** What the verified-login cache remembers of a successful app-password check. */
export interface CachedLogin {
  accountId: number;
  /** Ids can be reused after a row is deleted; the creation times tell the rows apart. */
  accountCreatedAt: number;
  appPasswordId: number;
  appPasswordCreatedAt: number;
  /** The account's TOTP state change time when cached: any change since invalidates the entry. */
  totpChangedAt: number | null;
}

export type VerifyFailureReason = 'unknown-account' | 'wrong-password' | 'revoked' | 'expired' | 'out-of-scope';

export type VerifyResult =
  | { ok: true; account: Account; appPassword: AppPasswordInfo }
  | { ok: false; reason: VerifyFailureReason; account: Account | null };

export interface LoginContext {
  protocol: Scope;
  clientIp: string | null;
  /** "name/version" from the client's ID command, when it sent one. */
  client?: string | null;
}

export class CredentialVerifier {
  constructor(
    private readonly accounts: AccountRepository,
    private readonly appPasswords: AppPasswordRepository,
    private readonly audit: AuditLog,
    private readonly hasher: PasswordHasher,
    private readonly now: Clock,
  ) {}

  /** Checks an app password without recording anything. */
  async check(username: string, password: string, protocol: Scope): Promise<VerifyResult> {
    const account = this.accounts.find(username);
    const canonical = canonicalAppPassword(password);
    const candidate = account && canonical ? this.appPasswords.findCandidate(account.id, selectorOf(canonical)) : null;
    if (!account || !canonical || !candidate) {
      await this.hasher.verifyDummy(password);
      return { ok: false, reason: account ? 'wrong-password' : 'unknown-account', account };
    }
    if (!(await this.hasher.verify(candidate.hash, canonical))) {
      return { ok: false, reason: 'wrong-password', account };
    }
    // Status is checked only after the hash matched: telling "revoked" from
    // "wrong" is for the log, and only the owner of the password can reach it.
    const status = appPasswordStatus(candidate.info, this.now());
    if (status !== 'active') return { ok: false, reason: status, account };
    if (!candidate.info.scopes.includes(protocol)) return { ok: false, reason: 'out-of-scope', account };
    return { ok: true, account, appPassword: candidate.info };
  }

  /**
   * Re-reads an app password that matched before (a verified-login cache hit):
   * still active, in scope, and the account's TOTP state unchanged? Two
   * prepared-statement reads, no hashing.
   */
  recheck(login: CachedLogin, protocol: Scope): VerifyResult | null {
    const account = this.accounts.findById(login.accountId);
    const appPassword = this.appPasswords.findById(login.appPasswordId);
    // Rows deleted and their ids reused by new ones are not the rows that were verified.
    if (!account || account.createdAt !== login.accountCreatedAt || account.totpChangedAt !== login.totpChangedAt) return null;
    if (!appPassword || appPassword.accountId !== account.id || appPassword.createdAt !== login.appPasswordCreatedAt) return null;
    const status = appPasswordStatus(appPassword, this.now());
    if (status !== 'active') return { ok: false, reason: status, account };
    if (!appPassword.scopes.includes(protocol)) return { ok: false, reason: 'out-of-scope', account };
    return { ok: true, account, appPassword };
  }

  /** Checks an app password, then records the outcome (last use, audit). */
  async verify(username: string, password: string, context: LoginContext): Promise<VerifyResult> {
    const result = await this.check(username, password, context.protocol);
    if (result.ok) {
      this.recordSuccess(result.account, result.appPassword, context);
    } else {
      this.recordFailure(result.account?.username ?? username, result.reason, context);
    }
    return result;
  }

  recordSuccess(account: Account, appPassword: AppPasswordInfo | null, context: LoginContext): void {
    if (appPassword) {
      this.appPasswords.recordUse(appPassword.id, { ip: context.clientIp, protocol: context.protocol, client: context.client ?? null });
    }
    this.audit.record('login-ok', {
      username: account.username,
      appPasswordId: appPassword?.id ?? null,
      ip: context.clientIp,
      protocol: context.protocol,
      detail: appPassword ? 'app-password' : 'upstream-password',
    });
  }

  recordFailure(username: string, reason: string, context: LoginContext): void {
    this.audit.record('login-failed', { username, ip: context.clientIp, protocol: context.protocol, detail: reason });
  }
}
