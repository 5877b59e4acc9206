/**
 * Live revocation: sessions already logged in are closed within seconds when
 * what let them in stops being valid, even when the change is made by another
 * process (the CLI) on the same database:
 *  - their app password is revoked, expires, or is deleted with its account;
 *  - their account is removed;
 *  - two-step verification is turned on for an account whose session logged
 *    in with the upstream (main) password;
 *  - a session passed through for a name mailgate did not know, once that
 *    name is added as an account that may no longer use its main password
 *    (two-step verification on, or `main_password_without_2fa = "reject"`),
 *    or once the name is blocked.
 *
 * The check is cheap when nothing changed: the sessions are re-read only
 * when the store says this process changed something (Store.onChange, at
 * once), when its foreign-change token moved (another process committed;
 * looked at every `revocation_check_seconds`), or when the earliest known
 * expiry has passed.
 */
import type { Config } from '../config/schema.js';
import type { Logger } from '../log/logger.js';
import type { CredentialsNow, Store } from '../store/store.js';
import { tryNormaliseUsername } from '../store/username.js';
import type { SessionAuth, SessionRegistry, TerminationReason, TrackedSession } from './registry.js';
import { errorMessage } from '../errors.js';

type LoggedIn = TrackedSession & { auth: SessionAuth };


export class RevocationWatcher {
  private timer: NodeJS.Timeout | null = null;
  private lastToken: string | null = null;
  private nextExpiry = Infinity;
  private unsubscribe: (() => void) | null = null;
  /** A pass is running (the store answers asynchronously): the next one waits for it. */
  private running: Promise<void> | null = null;
  private lastCheckAt = 0;
  /** This process changed something the sessions depend on: check at the next opportunity. */
  private dirty = false;
  private soon: NodeJS.Immediate | null = null;

  constructor(
    private readonly store: Store,
    private readonly registry: SessionRegistry,
    private readonly log: Logger,
    private intervalMs: number,
    private policy: Pick<Config['policy'], 'main_password_without_2fa'>,
    private readonly now: () => number = Date.now,
  ) {}

  /** A reload's interval and policy, from the next pass on (the timer restarts if it runs). */
  reconfigure(intervalMs: number, policy: Pick<Config['policy'], 'main_password_without_2fa'>): void {
    this.policy = policy;
    if (intervalMs === this.intervalMs) return;
    this.intervalMs = intervalMs;
    if (!this.timer) return;
    clearInterval(this.timer);
    this.timer = setInterval(() => void this.tick(), this.intervalMs);
    this.timer.unref();
  }

  start(): void {
    this.timer = setInterval(() => void this.tick(), this.intervalMs);
    this.timer.unref();
    // Changes this process commits (a revocation on the web page, a block
    // started by its own penalties) are checked at once.
    this.unsubscribe = this.store.onChange(() => this.changed());
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    if (this.soon) clearImmediate(this.soon);
    this.soon = null;
    this.unsubscribe?.();
    this.unsubscribe = null;
  }

  /** Something this process committed may end sessions: look at the next opportunity. */
  changed(): void {
    this.dirty = true;
    if (this.soon || !this.timer) return;
    this.soon = setImmediate(() => {
      this.soon = null;
      void this.tick();
    });
  }

  /** One pass; public so tests can drive it. Passes never overlap. */
  async tick(): Promise<void> {
    while (this.running) await this.running;
    this.running = this.pass().finally(() => (this.running = null));
    return this.running;
  }

  private async pass(): Promise<void> {
    const sessions = [...this.registry.authenticated()];
    try {
      const token = await this.store.foreignChangeToken();
      const now = this.now();
      // A session that logged in around the last check may have raced a
      // revocation committed just before it: check it once more.
      const fresh = sessions.some((s) => s.auth.loginAt >= this.lastCheckAt - 2 * this.intervalMs);
      const unchanged = !this.dirty && token === this.lastToken && now < this.nextExpiry && !fresh;
      this.lastToken = token;
      if (unchanged || sessions.length === 0) return;
      this.dirty = false;
      this.lastCheckAt = now;
      await this.check(sessions);
    } catch (err) {
      // The database is down: logins fail closed meanwhile, and sessions stay
      // as they are until it is back (the store notices by itself).
      this.log.warn({ err: errorMessage(err) }, 'revocation check failed');
    }
  }

  private async check(sessions: LoggedIn[]): Promise<void> {
    const current = await this.read(sessions);
    const now = this.now();
    let nextExpiry = Infinity;
    for (const session of sessions) {
      const reason = session.auth.accountId === null ? this.passthroughReason(session.auth, current) : this.reasonToClose(session.auth, current, now);
      if (reason) {
        this.log.info({ session: session.id, user: session.auth.username, appPasswordId: session.auth.appPasswordId, reason }, 'closing a session whose credentials are no longer valid');
        session.terminate(farewellFor(reason));
        continue;
      }
      const expires = session.auth.appPasswordId === null ? null : current.appPasswords.get(session.auth.appPasswordId)?.expiresAt ?? null;
      if (expires !== null) nextExpiry = Math.min(nextExpiry, expires);
    }
    this.nextExpiry = nextExpiry;
  }

  private read(sessions: LoggedIn[]): Promise<CredentialsNow> {
    const known = sessions.filter((s) => s.auth.accountId !== null);
    return this.store.credentialsNow({
      accountIds: known.map((s) => s.auth.accountId!),
      appPasswordIds: known.map((s) => s.auth.appPasswordId).filter((id): id is number => id !== null),
      names: sessions.filter((s) => s.auth.accountId === null).map((s) => nameOf(s.auth)),
    });
  }

  private reasonToClose(auth: SessionAuth, current: CredentialsNow, now: number): CloseReason | null {
    const account = current.accounts.get(auth.accountId!);
    // Removed, even if a new account has taken its id since.
    if (!account || account.createdAt !== auth.accountCreatedAt) return 'account-removed';
    if (auth.mode === 'upstream-password') {
      return account.totpState === 'enabled' ? 'two-factor-enabled' : null;
    }
    const appPassword = auth.appPasswordId === null ? undefined : current.appPasswords.get(auth.appPasswordId);
    if (!appPassword || appPassword.createdAt !== auth.appPasswordCreatedAt) return 'app-password-removed';
    if (appPassword.revokedAt !== null) return 'app-password-revoked';
    if (appPassword.expiresAt !== null && appPassword.expiresAt <= now) return 'app-password-expired';
    return null;
  }

  /** A session passed through for a name mailgate did not know at login. */
  private passthroughReason(auth: SessionAuth, current: CredentialsNow): CloseReason | null {
    const name = nameOf(auth);
    if (current.blockedNames.has(name)) return 'account-blocked';
    const account = current.accountsByName.get(name);
    if (!account) return null;
    if (account.totpState === 'enabled') return 'two-factor-enabled';
    return this.policy.main_password_without_2fa === 'reject' ? 'main-password-disabled' : null;
  }
}

type CloseReason =
  | 'account-removed'
  | 'account-blocked'
  | 'two-factor-enabled'
  | 'main-password-disabled'
  | 'app-password-removed'
  | 'app-password-revoked'
  | 'app-password-expired';

/** Each reason's own farewell: telling a user an app password was revoked when none was would be wrong. */
function farewellFor(reason: CloseReason): TerminationReason {
  switch (reason) {
    case 'two-factor-enabled':
      return 'two-factor-enabled';
    case 'main-password-disabled':
      return 'app-password-required';
    case 'account-blocked':
      return 'blocked';
    default:
      return 'revoked';
  }
}

/** The name a passthrough session's account would have (the session keeps the name as typed). */
function nameOf(auth: SessionAuth): string {
  return tryNormaliseUsername(auth.username) ?? auth.username;
}
