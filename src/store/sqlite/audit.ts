/**
 * The audit trail: who did what to which account, from where.
 *
 * It holds identifiers only (usernames, app-password ids, IPs, reasons), never
 * a password, an app password, a TOTP secret or a code; test/store/no-secrets.test.ts
 * checks the raw rows for each secret the tests created.
 *
 * The details of the counting events are numbers: `revoked-all` and
 * `web-sessions-ended` how many, `recovery-codes-created` how many were made,
 * `recovery-code-used` how many are left.
 */
import type { Db } from './database.js';
import { AUDIT_COLUMNS, auditValues } from '../rows.js';
import { ACTIVITY_EVENTS, type Account, type AuditListOptions, type AuditListRow, type Clock, type AuditEvent, type AuditEntry, type AuditRow } from '../types.js';

const COLUMNS = AUDIT_COLUMNS;

export class AuditLog {
  private readonly insert;
  private readonly recent;
  private readonly deleteBefore;
  private readonly ofAccount;
  private readonly loginSeen;

  constructor(
    db: Db,
    private readonly now: Clock,
  ) {
    this.insert = db.prepare(
      'INSERT INTO audit (at, event, username, app_password_id, ip, protocol, detail) VALUES (?, ?, ?, ?, ?, ?, ?)',
    );
    this.deleteBefore = db.prepare('DELETE FROM audit WHERE at < ?');
    // The app password's name, when it still exists and is the one the row meant: an id
    // can be taken again by a later app password, which was created after the event.
    this.recent = db.prepare(
      `SELECT audit.id, audit.at, audit.event, audit.username, audit.app_password_id AS appPasswordId, audit.ip, audit.protocol, audit.detail,
              app_passwords.name AS appPasswordName
         FROM audit LEFT JOIN app_passwords ON app_passwords.id = audit.app_password_id AND app_passwords.created_at <= audit.at
        WHERE (? IS NULL OR audit.username = ?) AND audit.at >= ?
        ORDER BY audit.at DESC, audit.id DESC LIMIT ?`,
    );
    // Walks audit_by_username backwards from the newest row of the name.
    this.ofAccount = db.prepare(
      `SELECT ${COLUMNS} FROM audit
        WHERE username = ? AND at >= ? AND event IN (${ACTIVITY_EVENTS.map(() => '?').join(', ')})
        ORDER BY id DESC LIMIT ?`,
    );
    this.loginSeen = db.prepare("SELECT 1 FROM audit WHERE app_password_id = ? AND ip = ? AND event = 'login-ok' LIMIT 1").pluck();
  }

  record(event: AuditEvent, entry: AuditEntry = {}): void {
    this.insert.run(...auditValues(this.now(), event, entry));
  }

  /** Drops events older than `maxAgeMs`; returns how many. */
  prune(maxAgeMs: number): number {
    return this.deleteBefore.run(this.now() - maxAgeMs).changes;
  }

  /** Newest first: of one account (its normalised name) or all, since a time, at most `limit` (default 100). */
  list(options: AuditListOptions = {}): AuditListRow[] {
    const username = options.username ?? null;
    return this.recent.all(username, username, options.since ?? 0, options.limit ?? 100) as AuditListRow[];
  }

  /**
   * The account's recent events worth showing its owner (ACTIVITY_EVENTS),
   * newest first. Rows name accounts by their (normalised) name; those from
   * before the account was created belong to an earlier account of the same
   * name, or to no account, and are not its owner's business.
   */
  activity(account: Account, limit: number): AuditRow[] {
    const rows = Math.max(0, Math.floor(limit));
    return this.ofAccount.all(account.username, account.createdAt, ...ACTIVITY_EVENTS, rows) as AuditRow[];
  }

  /** Whether a login with this app password from this address was recorded before (and is still in the trail). */
  loginSeenFrom(appPasswordId: number, ip: string): boolean {
    return this.loginSeen.get(appPasswordId, ip) !== undefined;
  }
}
