/**
 * The set of open sessions: how many there are (per client IP, for the
 * connection limits), which account and app password each relayed session
 * logged in with (for live revocation), and a way to end them all (shutdown).
 */

export interface SessionAuth {
  accountId: number | null;
  /** With the id, tells this account from a later one that reused its id. */
  accountCreatedAt: number | null;
  username: string;
  appPasswordId: number | null;
  appPasswordCreatedAt: number | null;
  /** For `mailgate who`: the app password's name at login. */
  appPasswordName: string | null;
  mode: 'app-password' | 'upstream-password';
  loginAt: number;
}

export interface TrackedSession {
  readonly id: string;
  readonly protocol: 'imap' | 'pop3';
  /** The key connection limits count by (an IPv6 /64 counts as one). */
  readonly clientKey: string;
  /** The client's address and port (from a trusted PROXY header when there is one). */
  readonly client: { readonly address: string; readonly port: number };
  /** Set once the session relays for an account. */
  readonly auth: SessionAuth | null;
  /** Ends the session, telling the client why when the protocol allows. */
  terminate(reason: TerminationReason): void;
}

/**
 * Why mailgate ends a logged-in session, each with its own farewell:
 * 'revoked': its app password (or account) is gone;
 * 'two-factor-enabled': it used the account password, and 2-step verification was turned on;
 * 'app-password-required': it used the account password, and the account now needs app passwords;
 * 'blocked': its name was blocked after repeated failed logins;
 * 'kicked': an administrator closed it (`mailgate kick`);
 * 'shutdown': the gateway is stopping.
 */
export type TerminationReason = 'revoked' | 'two-factor-enabled' | 'app-password-required' | 'blocked' | 'kicked' | 'shutdown';

export class SessionRegistry {
  private readonly sessions = new Set<TrackedSession>();
  /** Sessions not logged in yet, per client: the per-IP limit counts these only. */
  private readonly unauthenticated = new Map<string, number>();
  private readonly counted = new WeakSet<TrackedSession>();
  private relaying = 0;
  private readonly emptyWaiters: Array<() => void> = [];

  get size(): number {
    return this.sessions.size;
  }

  add(session: TrackedSession): void {
    this.sessions.add(session);
    this.counted.add(session);
    this.unauthenticated.set(session.clientKey, (this.unauthenticated.get(session.clientKey) ?? 0) + 1);
  }

  /** A session logged in: it no longer counts against its client's pre-login limit. */
  markAuthenticated(session: TrackedSession): void {
    if (this.counted.has(session)) this.relaying += 1;
    this.uncount(session);
  }

  remove(session: TrackedSession): void {
    if (!this.sessions.delete(session)) return;
    if (!this.counted.has(session)) this.relaying -= 1;
    this.uncount(session);
    if (this.sessions.size === 0) for (const resolve of this.emptyWaiters.splice(0)) resolve();
  }

  private uncount(session: TrackedSession): void {
    if (!this.counted.has(session)) return;
    this.counted.delete(session);
    const left = (this.unauthenticated.get(session.clientKey) ?? 1) - 1;
    if (left <= 0) this.unauthenticated.delete(session.clientKey);
    else this.unauthenticated.set(session.clientKey, left);
  }

  /** Sessions by state, for the metrics. */
  counts(): { prelogin: number; relaying: number } {
    return { prelogin: this.sessions.size - this.relaying, relaying: this.relaying };
  }

  /** Sessions from this client (IP, or IPv6 /64) that have not logged in. */
  unauthenticatedFor(clientKey: string): number {
    return this.unauthenticated.get(clientKey) ?? 0;
  }

  /** Sessions that are relaying for an account. */
  *authenticated(): IterableIterator<TrackedSession & { auth: SessionAuth }> {
    for (const session of this.sessions) {
      if (session.auth) yield session as TrackedSession & { auth: SessionAuth };
    }
  }

  all(): TrackedSession[] {
    return [...this.sessions];
  }

  /** Resolves when the last session has gone. */
  whenEmpty(): Promise<void> {
    if (this.sessions.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.emptyWaiters.push(resolve));
  }
}
