/**
 * The self-service page's sessions on PostgreSQL, shared by every node. The
 * rules are SQLite's (sqlite/web-sessions.ts): only the hash of an id is
 * kept, and an ended session keeps its row so that no save in flight, on
 * any node, brings it back.
 */
import { toWebSessionRecord, type WebSessionRow } from '../rows.js';
import { webSessionExpired, type Account, type Clock, type WebSessionInfo, type WebSessionLimits, type WebSessionRecord } from '../types.js';
import type { PgAudit } from './audit.js';
import type { Sql, Tx } from './database.js';

/** What is left of an ended session ($1: now). */
const END = "ended_at = $1, data = '{}', ip = NULL, user_agent = NULL, password_at = NULL";

/** PostgreSQL's foreign_key_violation: the account went while the save was on its way. */
const FOREIGN_KEY_VIOLATION = '23503';

export class PgWebSessions {
  constructor(
    private readonly audit: PgAudit,
    private readonly now: Clock,
  ) {}

  /** The live session, or null; one past its idle or absolute timeout is ended on the way. */
  async get(sql: Sql, idHash: string, limits: WebSessionLimits): Promise<WebSessionRecord | null> {
    const row = await sql.one<WebSessionRow>('SELECT * FROM web_sessions WHERE id_hash = $1 AND ended_at IS NULL', [idHash]);
    if (!row) return null;
    const record = toWebSessionRecord(row);
    const now = this.now();
    if (webSessionExpired(record, limits, now)) {
      await this.end(sql, idHash);
      return null;
    }
    return record;
  }

  /**
   * Creates or updates a live session; nothing happens when it has ended or
   * its account is gone (the insert's foreign key check waits for a removal
   * in progress, then fails: that is "gone", not a database failure).
   * created_at is the creation's: an update keeps it.
   */
  async save(sql: Sql, record: WebSessionRecord): Promise<void> {
    try {
      await sql.run(
        `INSERT INTO web_sessions (id_hash, account_id, created_at, last_seen_at, password_at, ip, user_agent, data)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (id_hash) DO UPDATE SET account_id = excluded.account_id, last_seen_at = excluded.last_seen_at,
           password_at = excluded.password_at, ip = excluded.ip, user_agent = excluded.user_agent, data = excluded.data
         WHERE web_sessions.ended_at IS NULL`,
        [record.idHash, record.accountId, record.createdAt, record.lastSeenAt, record.passwordAt, record.ip, record.userAgent, record.data],
      );
    } catch (err) {
      if ((err as { code?: unknown }).code !== FOREIGN_KEY_VIOLATION) throw err;
    }
  }

  /** Ends one session (signing out, or timed out). */
  async end(sql: Sql, idHash: string): Promise<void> {
    await sql.run(`UPDATE web_sessions SET ${END} WHERE id_hash = $2 AND ended_at IS NULL`, [this.now(), idHash]);
  }

  /** The account's live sessions (within `limits`, when given), newest first, without their hashes. */
  async list(sql: Sql, account: Account, limits?: WebSessionLimits): Promise<WebSessionInfo[]> {
    const now = this.now();
    const rows = await sql.rows<WebSessionRow>(
      'SELECT * FROM web_sessions WHERE account_id = $1 AND ended_at IS NULL ORDER BY created_at DESC, last_seen_at DESC',
      [account.id],
    );
    return rows
      .filter((row) => !limits || !webSessionExpired({ createdAt: row.created_at, lastSeenAt: row.last_seen_at }, limits, now))
      .map((row) => ({ createdAt: row.created_at, lastSeenAt: row.last_seen_at, passwordAt: row.password_at, ip: row.ip, userAgent: row.user_agent }));
  }

  /** Ends the account's sessions but `except`, audited when there were any; how many. */
  async endAll(tx: Tx, account: Account, except?: string | null): Promise<number> {
    const ended = await this.endOfAccount(tx, account, except ?? null);
    if (ended > 0) await this.audit.record(tx, 'web-sessions-ended', { username: account.username, detail: String(ended) });
    return ended;
  }

  /** Inside an account's removal: ends its sessions and detaches every row from it (sqlite/web-sessions.ts says why). */
  async endForRemoval(tx: Tx, account: Account): Promise<number> {
    const ended = await this.endOfAccount(tx, account, null);
    await tx.run('UPDATE web_sessions SET account_id = NULL WHERE account_id = $1', [account.id]);
    return ended;
  }

  private endOfAccount(tx: Tx, account: Account, except: string | null): Promise<number> {
    return tx.run(`UPDATE web_sessions SET ${END} WHERE account_id = $2 AND ended_at IS NULL AND ($3::text IS NULL OR id_hash <> $3)`, [
      this.now(),
      account.id,
      except,
    ]);
  }

  /** Drops sessions, live or ended, past either timeout. */
  prune(sql: Sql, limits: WebSessionLimits): Promise<number> {
    const now = this.now();
    return sql.run('DELETE FROM web_sessions WHERE created_at < $1 OR last_seen_at < $2', [now - limits.maxMs, now - limits.idleMs]);
  }
}
