/**
 * The self-service page's sessions, kept in the store so that every node
 * (and `mailgate web sessions`) sees the same ones. Only the SHA-256 of a
 * session id is stored: a copy of the database opens no session.
 *
 * A session that ends (signed out, timed out, ended by the owner or the
 * administrator, its account removed) keeps a row with `ended_at` set until
 * it would have expired anyway. A page request still in flight saves its
 * session when it is done; an upsert over a deleted row would bring the
 * ended session back, the end-all-others after turning on two-step
 * verification included. Saving over an ended row changes nothing.
 */
import { toWebSessionRecord, type WebSessionRow } from '../rows.js';
import { webSessionExpired, type Account, type Clock, type WebSessionInfo, type WebSessionLimits, type WebSessionRecord } from '../types.js';
import type { AuditLog } from './audit.js';
import type { Db } from './database.js';

type Row = WebSessionRow;

/** What is left of an ended session: the hash that keeps it ended, nothing about its user. */
const END = "ended_at = @now, data = '{}', ip = NULL, user_agent = NULL, password_at = NULL";

export class WebSessionRepository {
  private readonly select;
  private readonly upsert;
  private readonly accountExists;
  private readonly endOne;
  private readonly endOfAccount;
  private readonly detachOfAccount;
  private readonly byAccount;
  private readonly deleteExpired;

  constructor(
    private readonly db: Db,
    private readonly audit: AuditLog,
    private readonly now: Clock,
  ) {
    this.select = db.prepare('SELECT * FROM web_sessions WHERE id_hash = ? AND ended_at IS NULL');
    // created_at is the creation's: an update keeps it, so that no save can stretch the absolute timeout.
    this.upsert = db.prepare(
      `INSERT INTO web_sessions (id_hash, account_id, created_at, last_seen_at, password_at, ip, user_agent, data)
       VALUES (@idHash, @accountId, @createdAt, @lastSeenAt, @passwordAt, @ip, @userAgent, @data)
       ON CONFLICT (id_hash) DO UPDATE SET account_id = excluded.account_id, last_seen_at = excluded.last_seen_at,
         password_at = excluded.password_at, ip = excluded.ip, user_agent = excluded.user_agent, data = excluded.data
       WHERE web_sessions.ended_at IS NULL`,
    );
    this.accountExists = db.prepare('SELECT 1 FROM accounts WHERE id = ?').pluck();
    this.endOne = db.prepare(`UPDATE web_sessions SET ${END} WHERE id_hash = @idHash AND ended_at IS NULL`);
    this.endOfAccount = db.prepare(
      `UPDATE web_sessions SET ${END} WHERE account_id = @accountId AND ended_at IS NULL AND (@except IS NULL OR id_hash <> @except)`,
    );
    this.detachOfAccount = db.prepare('UPDATE web_sessions SET account_id = NULL WHERE account_id = ?');
    this.byAccount = db.prepare(
      'SELECT * FROM web_sessions WHERE account_id = ? AND ended_at IS NULL ORDER BY created_at DESC, last_seen_at DESC',
    );
    this.deleteExpired = db.prepare('DELETE FROM web_sessions WHERE created_at < @createdBefore OR last_seen_at < @seenBefore');
  }

  /** The live session, or null; one past its idle or absolute timeout is ended on the way. */
  get(idHash: string, limits: WebSessionLimits): WebSessionRecord | null {
    const row = this.select.get(idHash) as Row | undefined;
    if (!row) return null;
    const record = toWebSessionRecord(row);
    const now = this.now();
    if (webSessionExpired(record, limits, now)) {
      this.endOne.run({ idHash, now });
      return null;
    }
    return record;
  }

  /**
   * Creates or updates a live session. Nothing happens when it has ended, or
   * when its account is gone: the session is over either way, and the next
   * `get` says so.
   */
  save(record: WebSessionRecord): void {
    this.db
      .transaction(() => {
        // Checked rather than left to the foreign key: a constraint error would
        // count as a failing database and refuse logins for a while.
        if (record.accountId !== null && this.accountExists.get(record.accountId) === undefined) return;
        this.upsert.run({
          idHash: record.idHash,
          accountId: record.accountId,
          createdAt: record.createdAt,
          lastSeenAt: record.lastSeenAt,
          passwordAt: record.passwordAt,
          ip: record.ip,
          userAgent: record.userAgent,
          data: record.data,
        });
      })
      .immediate();
  }

  /** Ends one session (signing out). */
  destroy(idHash: string): void {
    this.endOne.run({ idHash, now: this.now() });
  }

  /** The account's live sessions (within `limits`, when given), newest first, without their hashes. */
  list(account: Account, limits?: WebSessionLimits): WebSessionInfo[] {
    const now = this.now();
    const live = (row: Row) => !limits || !webSessionExpired({ createdAt: row.created_at, lastSeenAt: row.last_seen_at }, limits, now);
    return (this.byAccount.all(account.id) as Row[]).filter(live).map((row) => ({
      createdAt: row.created_at,
      lastSeenAt: row.last_seen_at,
      passwordAt: row.password_at,
      ip: row.ip,
      userAgent: row.user_agent,
    }));
  }

  /** Ends the account's sessions but `except`, audited when there were any; how many. */
  endAll(account: Account, except?: string | null): number {
    return this.db
      .transaction(() => this.endAllIn(account, except))
      .immediate();
  }

  /** endAll inside the caller's transaction (turning two-step verification on or off). */
  endAllIn(account: Account, except?: string | null): number {
    const ended = this.endOfAccount.run({ accountId: account.id, except: except ?? null, now: this.now() }).changes;
    if (ended > 0) this.audit.record('web-sessions-ended', { username: account.username, detail: String(ended) });
    return ended;
  }

  /**
   * Inside the removal of an account: ends its sessions and detaches every
   * row from it, so that the ended ones outlive the account (see the top of
   * this file) and none can belong to a new account given the same id.
   */
  endForRemovalIn(account: Account): number {
    const ended = this.endOfAccount.run({ accountId: account.id, except: null, now: this.now() }).changes;
    this.detachOfAccount.run(account.id);
    return ended;
  }

  /**
   * Drops sessions, live or ended, past either timeout: all over, and no
   * request of theirs can still be in flight. Visitors who only looked at the
   * sign-in form leave a session (its CSRF secret) too; they go after the
   * idle timeout, so a flood of page views cannot grow the table for long.
   */
  prune(limits: WebSessionLimits): number {
    const now = this.now();
    return this.deleteExpired.run({ createdBefore: now - limits.maxMs, seenBefore: now - limits.idleMs }).changes;
  }
}
