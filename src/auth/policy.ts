/**
 * The account policy, in one place: given what a client typed, decide how (or
 * whether) it may log in. Both protocols call this; nothing else decides.
 *
 *  - A known account with TOTP on logs in only with an active app password
 *    scoped to the protocol.
 *  - A known account without 2FA may use an app password, or its upstream
 *    password when `main_password_without_2fa = "passthrough"`.
 *  - An unknown account is refused, or passed through, per `unknown_users`.
 *  - While the account is blocked (a client with no failures of its own, see
 *    AbuseGuard), only its app passwords are checked: nothing goes upstream.
 *
 * Every local refusal costs one argon2 verification (real or dummy), so time
 * does not reveal whether an account exists or has 2FA.
 */
import type { Config } from '../config/schema.js';
import { ErrorCodes, errorMessage, isMailgateError } from '../errors.js';
import { clipName } from '../log/logger.js';
import { canonicalAppPassword } from '../store/app-password-format.js';
import type { Store } from '../store/store.js';
import type { StoreHandle } from '../store/store-handle.js';
import type { Account, AppPasswordInfo, Scope } from '../store/types.js';
import { tryNormaliseUsername } from '../store/username.js';
import type { UpstreamCredentials } from '../upstream/credentials.js';
import type { VerifyResult } from '../store/verifier.js';
import type { LoginCache } from './login-cache.js';

export type CacheLookup = 'hit' | 'miss' | 'stale' | 'known-failure';

export interface PolicyOptions {
  /** The verified-login cache; none means every app-password login runs argon2. */
  cache?: LoginCache;
  onCacheLookup?: (result: CacheLookup) => void;
}

export interface AuthAttempt {
  /** The username exactly as the client sent it. */
  username: string;
  password: Buffer;
  protocol: Scope;
  clientIp: string;
  /** "name/version" from the client's ID, if any. */
  client: string | null;
  /**
   * The account is blocked and this client may only try an app password:
   * its main password is never checked, here or by the upstream.
   */
  appPasswordsOnly?: boolean;
}

/** Why a login was refused or failed; for the log and fail2ban, never for the client. */
export type RefusalReason =
  | 'invalid-username'
  | 'unknown-account'
  | 'wrong-password'
  | 'revoked'
  | 'expired'
  | 'out-of-scope'
  | 'two-factor-required'
  | 'main-password-disabled'
  | 'upstream-rejected';

export type TemporaryReason = 'store-unavailable' | 'hash-busy' | 'master-password-missing' | 'upstream-unavailable' | 'blocked';

export type AuthDecision =
  | { outcome: 'accept'; mode: 'app-password'; account: Account; appPassword: AppPasswordInfo; upstream: UpstreamCredentials }
  /** Tentative: the upstream checks the password itself. */
  | { outcome: 'accept'; mode: 'upstream-password'; account: Account | null; upstream: UpstreamCredentials }
  | { outcome: 'refuse'; reason: RefusalReason; username: string }
  | { outcome: 'temporary'; reason: TemporaryReason; username: string; detail?: string };

export class AuthPolicy {
  constructor(
    private readonly handle: StoreHandle,
    private readonly config: Pick<Config, 'policy' | 'upstream'>,
    private readonly masterPassword: Buffer | null,
    private readonly options: PolicyOptions = {},
  ) {}

  private get store(): Store {
    return this.handle.get();
  }

  async decide(attempt: AuthAttempt): Promise<AuthDecision> {
    try {
      return await this.decideOrThrow(attempt);
    } catch (err) {
      const username = attempt.username;
      if (isMailgateError(err, ErrorCodes.HASH_BUSY)) return { outcome: 'temporary', reason: 'hash-busy', username };
      this.handle.failed(err);
      // Whatever else failed (the database locked, unreadable, gone), fail
      // closed: nobody gets in on a store we cannot read.
      return { outcome: 'temporary', reason: 'store-unavailable', username, detail: errorMessage(err) };
    }
  }

  private async decideOrThrow(attempt: AuthAttempt): Promise<AuthDecision> {
    const password = attempt.password.toString('utf8');
    const name = tryNormaliseUsername(attempt.username);
    if (name === null) {
      await this.store.hasher.verifyDummy(password);
      return { outcome: 'refuse', reason: 'invalid-username', username: attempt.username };
    }
    const account = this.store.accounts.find(name);
    const canonical = canonicalAppPassword(password);
    const cacheKey = canonical !== null && this.options.cache ? this.options.cache.keyFor(name, canonical) : null;

    if (canonical === null && attempt.appPasswordsOnly) {
      // AbuseGuard turns these away before they get here; never check one anyway.
      return { outcome: 'temporary', reason: 'blocked', username: name };
    }

    if (!account) {
      if (this.config.policy.unknown_users === 'passthrough' && !attempt.appPasswordsOnly) return this.passthrough(attempt, null);
      // A repeated guess skips the dummy hash like a repeated guess on a real account would.
      if (!(cacheKey && this.options.cache!.knownFailure(cacheKey) === 'unknown-account')) {
        await this.store.hasher.verifyDummy(password);
        if (cacheKey) this.options.cache!.rememberFailure(cacheKey, 'unknown-account');
      }
      return { outcome: 'refuse', reason: 'unknown-account', username: name };
    }

    if (canonical !== null) {
      const result = await this.checkAppPassword(account, name, canonical, attempt.protocol, cacheKey);
      if (result.ok) return this.master(result.account, result.appPassword);
      // The password matched an app password that may not be used: say why in the log.
      if (result.reason !== 'wrong-password' || account.totpState === 'enabled' || attempt.appPasswordsOnly) {
        return { outcome: 'refuse', reason: result.reason === 'unknown-account' ? 'wrong-password' : result.reason, username: name };
      }
      // Otherwise it may be a main password that happens to look like an app password.
      return this.mainPassword(attempt, account, false);
    }
    return this.mainPassword(attempt, account, true);
  }

  /** An app password check through the verified-login cache. */
  private async checkAppPassword(account: Account, name: string, canonical: string, protocol: Scope, cacheKey: string | null): Promise<VerifyResult> {
    const cache = this.options.cache;
    const report = this.options.onCacheLookup ?? (() => undefined);
    if (cache && cacheKey) {
      const hit = cache.verifiedLogin(cacheKey);
      if (hit && hit.accountId === account.id) {
        // Still read the row: a revocation from another process counts at once.
        const again = this.store.verifier.recheck(hit, protocol);
        if (again?.ok) {
          report('hit');
          return again;
        }
        cache.forgetVerified(cacheKey);
        report('stale');
      } else {
        const known = cache.knownFailure(cacheKey);
        if (known === 'wrong-password' || known === 'revoked' || known === 'expired') {
          report('known-failure');
          return { ok: false, reason: known, account };
        }
        report('miss');
      }
    }
    const result = await this.store.verifier.check(name, canonical, protocol);
    if (cache && cacheKey) {
      if (result.ok) {
        cache.rememberVerified(cacheKey, {
          accountId: account.id,
          accountCreatedAt: account.createdAt,
          appPasswordId: result.appPassword.id,
          appPasswordCreatedAt: result.appPassword.createdAt,
          totpChangedAt: account.totpChangedAt,
        });
      } else if (result.reason === 'wrong-password' || result.reason === 'revoked' || result.reason === 'expired') {
        // Final states: a generated password never becomes right, a revoked or expired one never comes back.
        cache.rememberFailure(cacheKey, result.reason);
      }
    }
    return result;
  }

  private async mainPassword(attempt: AuthAttempt, account: Account, needDummyHash: boolean): Promise<AuthDecision> {
    if (account.totpState === 'enabled') {
      if (needDummyHash) await this.store.hasher.verifyDummy(attempt.password.toString('utf8'));
      return { outcome: 'refuse', reason: 'two-factor-required', username: account.username };
    }
    if (this.config.policy.main_password_without_2fa === 'reject') {
      if (needDummyHash) await this.store.hasher.verifyDummy(attempt.password.toString('utf8'));
      return { outcome: 'refuse', reason: 'main-password-disabled', username: account.username };
    }
    return this.passthrough(attempt, account);
  }

  private passthrough(attempt: AuthAttempt, account: Account | null): AuthDecision {
    // The upstream knows the user by the name the client typed (minus stray
    // spaces); case may matter to it, so it is not lower-cased.
    return {
      outcome: 'accept',
      mode: 'upstream-password',
      account,
      upstream: { kind: 'passthrough', user: attempt.username.trim(), password: attempt.password },
    };
  }

  private master(account: Account, appPassword: AppPasswordInfo): AuthDecision {
    if (!this.masterPassword) {
      return { outcome: 'temporary', reason: 'master-password-missing', username: account.username };
    }
    const login = this.config.upstream.login;
    return {
      outcome: 'accept',
      mode: 'app-password',
      account,
      appPassword,
      upstream: {
        kind: 'master',
        user: account.username,
        style: login.master_style,
        masterUser: login.master_user,
        masterPassword: this.masterPassword,
        separator: login.separator,
      },
    };
  }

  /**
   * Records a login the upstream accepted: last use and audit, in one commit.
   * Throws if it cannot be committed, and the login must then not go ahead:
   * this write is what tells the gateway the store can keep its records. A
   * user mailgate does not know (passthrough) gets an audit event for the
   * same reason.
   */
  recordSuccess(attempt: AuthAttempt, decision: Extract<AuthDecision, { outcome: 'accept' }>): void {
    const context = { protocol: attempt.protocol, clientIp: attempt.clientIp, client: attempt.client };
    const store = this.store;
    store.db.transaction(() => {
      if (decision.account) {
        store.verifier.recordSuccess(decision.account, decision.mode === 'app-password' ? decision.appPassword : null, context);
      } else {
        store.audit.record('login-ok', { username: clipName(decision.upstream.user), ip: attempt.clientIp, protocol: attempt.protocol, detail: 'upstream-password' });
      }
    })();
  }

  recordFailure(attempt: AuthAttempt, username: string, reason: string): void {
    this.store.verifier.recordFailure(username, reason, { protocol: attempt.protocol, clientIp: attempt.clientIp });
  }
}

