/** The audit trail on PostgreSQL: the same events and columns as SQLite's (sqlite/audit.ts says what they hold). */
import { AUDIT_COLUMNS, auditValues } from '../rows.js';
import { ACTIVITY_EVENTS, type Account, type AuditEntry, type AuditListOptions, type AuditListRow, type AuditEvent, type AuditRow, type Clock } from '../types.js';
import { prepared, type Sql } from './database.js';

// Every login and every failure writes a row: prepared (database.ts says why). (Whether an address was seen: logins.ts.)
const RECORD = prepared('INSERT INTO audit (at, event, username, app_password_id, ip, protocol, detail) VALUES ($1, $2, $3, $4, $5, $6, $7)');

export class PgAudit {
  constructor(private readonly now: Clock) {}

  async record(sql: Sql, event: AuditEvent, entry: AuditEntry = {}): Promise<void> {
    await sql.run(RECORD, auditValues(this.now(), event, entry));
  }

  /** Drops events older than `maxAgeMs`; returns how many. */
  prune(sql: Sql, maxAgeMs: number): Promise<number> {
    return sql.run('DELETE FROM audit WHERE at < $1', [this.now() - maxAgeMs]);
  }

  /** Newest first, with the app password's name while it exists and is the one the row meant (sqlite/audit.ts says why). */
  list(sql: Sql, options: AuditListOptions = {}): Promise<AuditListRow[]> {
    return sql.rows<AuditListRow>(
      `SELECT audit.id, audit.at, audit.event, audit.username, audit.app_password_id AS "appPasswordId", audit.ip, audit.protocol, audit.detail,
              app_passwords.name AS "appPasswordName"
         FROM audit LEFT JOIN app_passwords ON app_passwords.id = audit.app_password_id AND app_passwords.created_at <= audit.at
        WHERE ($1::text IS NULL OR audit.username = $1) AND audit.at >= $2
        ORDER BY audit.at DESC, audit.id DESC LIMIT $3`,
      [options.username ?? null, options.since ?? 0, options.limit ?? 100],
    );
  }

  /** The account's recent events worth showing its owner, newest first (sqlite/audit.ts says which rows are its). */
  activity(sql: Sql, account: Account, limit: number): Promise<AuditRow[]> {
    return sql.rows<AuditRow>(
      `SELECT ${AUDIT_COLUMNS} FROM audit WHERE username = $1 AND at >= $2 AND event = ANY($3::text[]) ORDER BY id DESC LIMIT $4`,
      [account.username, account.createdAt, ACTIVITY_EVENTS, Math.max(0, Math.floor(limit))],
    );
  }
}
