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
import { canonicalAppPassword } from '../store/app-password-format.js';
import type { PasswordHasher } from '../store/hasher.js';
import type { Store } from '../store/store.js';
import type { Account, AppPasswordInfo, Channel, CredentialLookup, Scope, VerifyResult } from '../store/types.js';
import { tryNormaliseUsername } from '../store/username.js';
import type { UpstreamCredentials } from '../upstream/credentials.js';
import type { LoginCache } from './login-cache.js';
import { accountOf, hasMasterSyntax } from './master-syntax.js';

export type CacheLookup = 'hit' | 'miss' | 'stale' | 'known-failure';

export interface PolicyOptions {
  /** The verified-login cache; none means every app-password login runs argon2. */
  cache?: LoginCache;
  onCacheLookup?: (result: CacheLookup) => void;
}

export interface AuthAttempt {
  /** The username exactly as the client sent it (SASL: the authcid). */
  username: string;
  /** SASL PLAIN's authzid as sent; '' or absent when the client named none. */
  authzid?: string;
  password: Buffer;
  /** A mail protocol, or 'web': the self-service page's sign-in (the account password, checked upstream). */
  protocol: Channel;
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
  | 'master-user-syntax'
  | 'authzid-mismatch'
  | 'unknown-account'
  | 'wrong-password'
  | 'revoked'
  | 'expired'
  | 'out-of-scope'
  | 'two-factor-required'
  | 'main-password-disabled'
  | 'upstream-rejected'
  | 'unknown-upstream-account'
  /** The page's second step: a wrong, old or used TOTP or recovery code. */
  | 'wrong-code';

export type TemporaryReason = 'store-unavailable' | 'hash-busy' | 'master-password-missing' | 'upstream-unavailable' | 'blocked';

export type AuthDecision =
  | { outcome: 'accept'; mode: 'app-password'; account: Account; appPassword: AppPasswordInfo; upstream: UpstreamCredentials }
  /** Tentative: the upstream checks the password itself. */
  | { outcome: 'accept'; mode: 'upstream-password'; account: Account | null; upstream: UpstreamCredentials }
  /** repeat: the same attempt was refused moments ago; answered from memory, nothing was checked. */
  | { outcome: 'refuse'; reason: RefusalReason; username: string; repeat?: boolean }
  | { outcome: 'temporary'; reason: TemporaryReason; username: string; detail?: string };

type Refusal = Extract<AuthDecision, { outcome: 'refuse' }>;

/** Refusals that depend on nothing but what was typed and the account's state: safe to answer again from memory. */
const REMEMBERED: ReadonlySet<RefusalReason> = new Set([
  'invalid-username',
  'master-user-syntax',
  'authzid-mismatch',
  'unknown-account',
  'wrong-password',
  'revoked',
  'expired',
  'out-of-scope',
  'two-factor-required',
  'main-password-disabled',
  'upstream-rejected',
]);

export class AuthPolicy {
  /**
   * Decisions being made, by attempt: the same attempt arriving while one is
   * being decided (a storm's first wave, a client's parallel connections)
   * waits for that decision instead of running its own hash or upstream check.
   */
  private readonly inFlight = new Map<string, Promise<AuthDecision>>();

  constructor(
    private readonly store: Store,
    private readonly hasher: PasswordHasher,
    private readonly config: Pick<Config, 'policy' | 'upstream' | 'web'>,
    private readonly masterPassword: Buffer | null,
    private readonly options: PolicyOptions = {},
  ) {}

  /** The account a failure counts against: Dovecot reads "alice*x" as alice. */
  penaltyAccount(username: string): string {
    return accountOf(username, this.config.upstream.login.separator);
  }

  async decide(attempt: AuthAttempt): Promise<AuthDecision> {
    const cache = this.options.cache;
    if (!cache) return this.decideOnce(attempt);
    const key = `${cache.attemptKey(this.shape(attempt))}${attempt.appPasswordsOnly ? ':app-passwords-only' : ''}`;
    const pending = this.inFlight.get(key);
    if (pending) {
      const decision = await pending;
      // Answered like the one it waited for; a refusal counts as a repeat of it.
      return decision.outcome === 'refuse' ? { ...decision, repeat: true } : decision;
    }
    const deciding = this.decideOnce(attempt);
    this.inFlight.set(key, deciding);
    try {
      return await deciding;
    } finally {
      this.inFlight.delete(key);
    }
  }

  private async decideOnce(attempt: AuthAttempt): Promise<AuthDecision> {
    try {
      const decision = await this.decideOrThrow(attempt);
      if (decision.outcome === 'refuse' && !decision.repeat) await this.remember(attempt, decision);
      return decision;
    } catch (err) {
      const username = attempt.username;
      if (isMailgateError(err, ErrorCodes.HASH_BUSY)) return { outcome: 'temporary', reason: 'hash-busy', username };
      // Whatever else failed (the database locked, unreadable, gone), fail
      // closed: nobody gets in on a store we cannot read. (The store has
      // already noticed; it recovers by itself.)
      return { outcome: 'temporary', reason: 'store-unavailable', username, detail: errorMessage(err) };
    }
  }

  /**
   * Remembers a refusal the upstream made (a wrong main password passed
   * through), so that repeating it asks the upstream no more than a repeated
   * local refusal costs argon2.
   */
  async rememberUpstreamRefusal(attempt: AuthAttempt, refusal: Refusal): Promise<void> {
    try {
      await this.remember(attempt, refusal);
    } catch {
      // Only a shortcut for repeats; a store that cannot be read now is noticed elsewhere.
    }
  }

  private async decideOrThrow(attempt: AuthAttempt): Promise<AuthDecision> {
    const repeat = await this.repeatedRefusal(attempt);
    if (repeat) return repeat;
    const name = tryNormaliseUsername(attempt.username);
    const refusal = this.refuseByShape(attempt, name);
    if (attempt.protocol === 'web') return this.decideWeb(attempt, name, refusal);
    const protocol = attempt.protocol;
    const canonical = canonicalAppPassword(attempt.password.toString('utf8'));
    const cacheKey = name !== null && canonical !== null && this.options.cache ? this.options.cache.keyFor(name, canonical) : null;
    // The owner of a recently verified app password needs no hashing (never
    // for an attempt refused by its shape: the right password with someone
    // else's authzid is still refused).
    const verified = cacheKey && !refusal ? await this.verifiedFromCache(cacheKey, protocol) : 'miss';
    if (typeof verified === 'object') return this.master(verified.account, verified.appPassword);
    // Decided before anything about the account is read: while the hasher is
    // full, every attempt gets the same temporary answer, whichever kind of
    // account it names (and whether or not its path would need a hash).
    if (!this.hasher.hasCapacity()) return { outcome: 'temporary', reason: 'hash-busy', username: attempt.username };
    if (refusal) {
      await this.hasher.verifyDummy(attempt.password.toString('utf8'));
      return refusal;
    }
    return this.decideForAccount(attempt, protocol, name!, canonical, cacheKey, verified === 'stale');
  }

  /**
   * The self-service page's sign-in. Only the account password signs in, and
   * only the upstream checks it (the user's own credentials, as a mail
   * program would send them; an app password is unknown there, so it never
   * signs in). A name mailgate does not know may sign in when
   * `web.self_enroll` is on (the account is then added); otherwise it is
   * refused here, after the same dummy hash as any local refusal.
   */
  private async decideWeb(attempt: AuthAttempt, name: string | null, refusal: Refusal | null): Promise<AuthDecision> {
    if (!this.hasher.hasCapacity()) return { outcome: 'temporary', reason: 'hash-busy', username: attempt.username };
    if (!refusal && attempt.appPasswordsOnly) {
      // The account is blocked, and the page never takes an app password: nothing to check.
      return { outcome: 'temporary', reason: 'blocked', username: name ?? attempt.username };
    }
    const account = refusal ? null : await this.store.accounts.find(name!);
    const refused = refusal ?? (!account && !this.config.web.self_enroll ? ({ outcome: 'refuse', reason: 'unknown-account', username: name! } as const) : null);
    if (refused) {
      await this.hasher.verifyDummy(attempt.password.toString('utf8'));
      return refused;
    }
    return this.passthrough(attempt, account);
  }

  /**
   * Refusals decided by what was typed alone: a name that cannot be an
   * account, Dovecot's master-user syntax (see master-syntax.ts), or a SASL
   * authzid naming someone else. Each still costs its dummy hash (timing).
   */
  private refuseByShape(attempt: AuthAttempt, name: string | null): Refusal | null {
    const separator = this.config.upstream.login.separator;
    const authzid = attempt.authzid ?? '';
    if (hasMasterSyntax(attempt.username, separator) || hasMasterSyntax(authzid, separator)) {
      return { outcome: 'refuse', reason: 'master-user-syntax', username: tryNormaliseUsername(this.penaltyAccount(attempt.username)) ?? attempt.username };
    }
    if (name === null) return { outcome: 'refuse', reason: 'invalid-username', username: attempt.username };
    if (authzid !== '' && tryNormaliseUsername(authzid) !== name) return { outcome: 'refuse', reason: 'authzid-mismatch', username: name };
    return null;
  }

  private async decideForAccount(attempt: AuthAttempt, protocol: Scope, name: string, canonical: string | null, cacheKey: string | null, stale: boolean): Promise<AuthDecision> {
    // An app-password-shaped password: the account comes with the app password its
    // selector points at, in the one read the check needs anyway (one round trip, where
    // a database is another process).
    const found = canonical !== null ? await this.store.logins.lookup(name, canonical) : null;
    const account = found ? found.account : await this.store.accounts.find(name);
    if (canonical === null && attempt.appPasswordsOnly) {
      // AbuseGuard turns these away before they get here; never check one anyway.
      return { outcome: 'temporary', reason: 'blocked', username: name };
    }

    if (!account) {
      if (this.config.policy.unknown_users === 'passthrough' && !attempt.appPasswordsOnly) return this.passthrough(attempt, null);
      // A repeated guess skips the dummy hash like a repeated guess on a real account would.
      if (!(cacheKey && this.options.cache!.knownFailure(cacheKey) === 'unknown-account')) {
        await this.hasher.verifyDummy(attempt.password.toString('utf8'));
        if (cacheKey) this.options.cache!.rememberFailure(cacheKey, 'unknown-account');
      }
      return { outcome: 'refuse', reason: 'unknown-account', username: name };
    }

    if (found !== null && canonical !== null) {
      const result = await this.checkAppPassword(account, found, canonical, protocol, cacheKey, stale);
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

  /**
   * The same attempt refused moments ago, the account in the same state:
   * the same refusal again, without a hash or an upstream check. The account
   * is re-read (one indexed read) so that a change since (the account added,
   * two-step verification turned off) is never answered from memory.
   */
  private async repeatedRefusal(attempt: AuthAttempt): Promise<Refusal | null> {
    const cache = this.options.cache;
    if (!cache) return null;
    const key = cache.attemptKey(this.shape(attempt));
    const known = cache.knownRefusal(key);
    if (!known) return null;
    if (known.stamp !== (await this.stamp(attempt))) {
      cache.forgetRefusal(key);
      return null;
    }
    return { outcome: 'refuse', reason: known.reason as RefusalReason, username: known.username, repeat: true };
  }

  private async remember(attempt: AuthAttempt, refusal: Refusal): Promise<void> {
    const cache = this.options.cache;
    if (!cache || !REMEMBERED.has(refusal.reason)) return;
    cache.rememberRefusal(cache.attemptKey(this.shape(attempt)), { reason: refusal.reason, username: refusal.username, stamp: await this.stamp(attempt) });
  }

  private shape(attempt: AuthAttempt) {
    return { protocol: attempt.protocol, username: attempt.username.trim(), authzid: attempt.authzid ?? '', password: attempt.password };
  }

  /**
   * What a remembered refusal depended on: the account's identity and two-step
   * state (none for an unknown name), and whether only app passwords were checked.
   */
  private async stamp(attempt: AuthAttempt): Promise<string> {
    const name = tryNormaliseUsername(attempt.username);
    const account = name === null ? null : await this.store.accounts.find(name);
    const state = account ? `${account.id}:${account.createdAt}:${account.totpState}:${account.totpChangedAt ?? ''}` : '-';
    return attempt.appPasswordsOnly ? `${state}:app-passwords-only` : state;
  }

  /**
   * A verified-login cache hit, re-read from the store (a revocation counts
   * at once); 'stale' when the entry no longer holds, 'miss' without one.
   */
  private async verifiedFromCache(cacheKey: string, protocol: Scope): Promise<{ account: Account; appPassword: AppPasswordInfo } | 'miss' | 'stale'> {
    const cache = this.options.cache;
    const hit = cache?.verifiedLogin(cacheKey);
    if (!cache || !hit) return 'miss';
    const again = await this.store.logins.recheck(hit, protocol);
    if (again?.ok) {
      this.report('hit');
      return again;
    }
    cache.forgetVerified(cacheKey);
    this.report('stale');
    return 'stale';
  }

  private report(result: CacheLookup): void {
    this.options.onCacheLookup?.(result);
  }

  /** An app password check through the negative cache, then argon2 (`stale`: the verified entry was just dropped). */
  private async checkAppPassword(account: Account, found: CredentialLookup, canonical: string, protocol: Scope, cacheKey: string | null, stale: boolean): Promise<VerifyResult> {
    const cache = this.options.cache;
    if (cache && cacheKey) {
      const known = cache.knownFailure(cacheKey);
      if (known === 'wrong-password' || known === 'revoked' || known === 'expired') {
        this.report('known-failure');
        return { ok: false, reason: known, account };
      }
      if (!stale) this.report('miss');
    }
    const result = await this.store.logins.verifyFound(found, canonical, protocol);
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
      if (needDummyHash) await this.hasher.verifyDummy(attempt.password.toString('utf8'));
      return { outcome: 'refuse', reason: 'two-factor-required', username: account.username };
    }
    if (this.config.policy.main_password_without_2fa === 'reject') {
      if (needDummyHash) await this.hasher.verifyDummy(attempt.password.toString('utf8'));
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
}
