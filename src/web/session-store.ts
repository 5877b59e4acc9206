/**
 * The page's sessions, kept server-side in the store (so every node of a
 * cluster sees them) through @fastify/session's store API. Only a hash of
 * the session id is stored: a copy of the database does not let anyone ride
 * a session. Idle and absolute timeouts are enforced by the store on every
 * read, whatever the cookie says.
 */
import { createHash } from 'node:crypto';
import type { SessionStore } from '@fastify/session';
import type { Session } from 'fastify';
import type { Store } from '../store/store.js';
import type { WebSessionRecord } from '../store/types.js';

/** What the page keeps in its session (besides @fastify/session's own cookie data). */
export interface PageSession {
  /** Signed in as this account (password, and code when 2-step verification is on). */
  accountId?: number;
  username?: string;
  /** When the password was last confirmed: sensitive actions need it recent. */
  passwordAt?: number;
  /**
   * The password was right; the code is still to come. The account's id
   * makes it one of the account's sessions (ended with them, listed with them).
   */
  pending?: { username: string; passwordAt: number; accountId?: number };
  /** Where the session was last used, for the lists of sessions. */
  ip?: string;
  userAgent?: string;
  /** When this session (this id) began: the absolute timeout counts from here. */
  createdAt?: number;
  /** A line to show once, on the next page (after a redirect). */
  notice?: string;
}

declare module 'fastify' {
  // Declaration merging: @fastify/session's Session carries the page's fields.
  interface Session extends PageSession {}
}

/** The hash the store keeps instead of the session id. */
export function sessionIdHash(sessionId: string): string {
  return createHash('sha256').update(sessionId).digest('hex');
}

type Callback = (err?: unknown) => void;

export class PageSessionStore implements SessionStore {
  constructor(
    private readonly store: Store,
    private readonly limits: { idleMs: number; maxMs: number },
    private readonly now: () => number = Date.now,
  ) {}

  set(sessionId: string, session: Session, callback: Callback): void {
    const record = this.record(sessionId, session);
    this.store.webSessions.save(record).then(() => callback(), callback);
  }

  get(sessionId: string, callback: (err: unknown, result?: Session | null) => void): void {
    this.store.webSessions.get(sessionIdHash(sessionId), this.limits).then(
      (record) => callback(null, record ? (JSON.parse(record.data) as Session) : null),
      (err: unknown) => callback(err),
    );
  }

  destroy(sessionId: string, callback: Callback): void {
    this.store.webSessions.destroy(sessionIdHash(sessionId)).then(() => callback(), callback);
  }

  private record(sessionId: string, session: Session): WebSessionRecord {
    const now = this.now();
    return {
      idHash: sessionIdHash(sessionId),
      // A half signed-in session is the account's too: it ends when the account's sessions end.
      accountId: session.accountId ?? session.pending?.accountId ?? null,
      createdAt: session.createdAt ?? now,
      lastSeenAt: now,
      passwordAt: session.passwordAt ?? null,
      ip: session.ip ?? null,
      userAgent: session.userAgent ?? null,
      data: JSON.stringify(session),
    };
  }
}
