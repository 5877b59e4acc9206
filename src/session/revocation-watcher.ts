/**
 * Live revocation: sessions already logged in are closed within seconds when
 * what let them in stops being valid, even when the change is made by another
 * process (the CLI) on the same database:
 *  - their app password is revoked, expires, or is deleted with its account;
 *  - their account is removed;
 *  - two-step verification is turned on for an account whose session logged
 *    in with the upstream (main) password.
 *
 * The check is cheap when nothing changed: SQLite's `data_version` moves only
 * when another connection commits, so the sessions are re-read only then, or
 * when the earliest known expiry has passed.
 */
import type { Logger } from '../log/logger.js';
import type { StoreHandle } from '../store/store-handle.js';
import type { SessionAuth, SessionRegistry, TrackedSession } from './registry.js';
import { errorMessage } from '../errors.js';

/** Keep IN (...) lists well under SQLite's variable limit. */
const CHUNK = 500;

interface AppPasswordRow {
  id: number;
  created_at: number;
  revoked_at: number | null;
  expires_at: number | null;
}

interface AccountRow {
  id: number;
  created_at: number;
  totp_state: string;
  totp_changed_at: number | null;
}

export class RevocationWatcher {
  private timer: NodeJS.Timeout | null = null;
  private lastVersion: number | null = null;
  private lastStoreIdentity: unknown = null;
  private nextExpiry = Infinity;
  private lastCheckAt = 0;

  constructor(
    private readonly store: StoreHandle,
    private readonly registry: SessionRegistry,
    private readonly log: Logger,
    private readonly intervalMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  start(): void {
    this.timer = setInterval(() => this.tick(), this.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** One pass; public so tests can drive it. */
  tick(): void {
    let store;
    try {
      store = this.store.get();
    } catch {
      return; // the database is down; logins fail closed meanwhile, sessions stay as they are
    }
    const sessions = [...this.registry.authenticated()].filter((s) => s.auth.accountId !== null);
    try {
      const version = store.db.pragma('data_version', { simple: true }) as number;
      const now = this.now();
      // A session that logged in around the last check may have raced a
      // revocation committed just before it: check it once more.
      const fresh = sessions.some((s) => s.auth.loginAt >= this.lastCheckAt - 2 * this.intervalMs);
      const unchanged = store === this.lastStoreIdentity && version === this.lastVersion && now < this.nextExpiry && !fresh;
      this.lastStoreIdentity = store;
      this.lastVersion = version;
      if (unchanged || sessions.length === 0) return;
      this.lastCheckAt = now;
      this.check(store.db, sessions);
    } catch (err) {
      this.store.failed(err);
      this.log.warn({ err: errorMessage(err) }, 'revocation check failed');
    }
  }

  private check(db: import('../store/database.js').Db, sessions: Array<TrackedSession & { auth: SessionAuth }>): void {
    const appPasswords = this.load<AppPasswordRow>(
      db,
      'SELECT id, created_at, revoked_at, expires_at FROM app_passwords WHERE id IN',
      sessions.map((s) => s.auth.appPasswordId).filter((id): id is number => id !== null),
    );
    const accounts = this.load<AccountRow>(
      db,
      'SELECT id, created_at, totp_state, totp_changed_at FROM accounts WHERE id IN',
      sessions.map((s) => s.auth.accountId!),
    );
    const now = this.now();
    let nextExpiry = Infinity;
    for (const session of sessions) {
      const reason = this.reasonToClose(session.auth, appPasswords, accounts, now);
      if (reason) {
        this.log.info({ session: session.id, user: session.auth.username, appPasswordId: session.auth.appPasswordId, reason }, 'closing a session whose credentials are no longer valid');
        // Its own farewell: telling this user an app password was revoked would be wrong.
        session.terminate(reason === 'two-factor-enabled' ? 'two-factor-enabled' : 'revoked');
        continue;
      }
      const expires = session.auth.appPasswordId === null ? null : appPasswords.get(session.auth.appPasswordId)?.expires_at ?? null;
      if (expires !== null) nextExpiry = Math.min(nextExpiry, expires);
    }
    this.nextExpiry = nextExpiry;
  }

  private reasonToClose(
    auth: SessionAuth,
    appPasswords: Map<number, AppPasswordRow>,
    accounts: Map<number, AccountRow>,
    now: number,
  ): string | null {
    const account = accounts.get(auth.accountId!);
    // Removed, even if a new account has taken its id since.
    if (!account || account.created_at !== auth.accountCreatedAt) return 'account-removed';
    if (auth.mode === 'upstream-password') {
      return account.totp_state === 'enabled' ? 'two-factor-enabled' : null;
    }
    const appPassword = auth.appPasswordId === null ? undefined : appPasswords.get(auth.appPasswordId);
    if (!appPassword || appPassword.created_at !== auth.appPasswordCreatedAt) return 'app-password-removed';
    if (appPassword.revoked_at !== null) return 'app-password-revoked';
    if (appPassword.expires_at !== null && appPassword.expires_at <= now) return 'app-password-expired';
    return null;
  }

  private load<T extends { id: number }>(db: import('../store/database.js').Db, sql: string, ids: number[]): Map<number, T> {
    const rows = new Map<number, T>();
    const unique = [...new Set(ids)];
    for (let i = 0; i < unique.length; i += CHUNK) {
      const chunk = unique.slice(i, i + CHUNK);
      for (const row of db.prepare(`${sql} (${chunk.map(() => '?').join(',')})`).all(...chunk) as T[]) rows.set(row.id, row);
    }
    return rows;
  }
}
