/**
 * The audit trail: who did what to which account, from where.
 *
 * It holds identifiers only (usernames, app-password ids, IPs, reasons), never
 * a password, an app password, a TOTP secret or a code; test/store/no-secrets.test.ts
 * checks the raw rows for each secret the tests created.
 */
import type { Db } from './database.js';
import type { Clock, AuditEvent, AuditEntry, AuditRow } from '../types.js';

export class AuditLog {
  private readonly insert;
  private readonly recent;
  private readonly deleteBefore;

  constructor(
    db: Db,
    private readonly now: Clock,
  ) {
    this.insert = db.prepare(
      'INSERT INTO audit (at, event, username, app_password_id, ip, protocol, detail) VALUES (?, ?, ?, ?, ?, ?, ?)',
    );
    this.deleteBefore = db.prepare('DELETE FROM audit WHERE at < ?');
    this.recent = db.prepare(
      `SELECT id, at, event, username, app_password_id AS appPasswordId, ip, protocol, detail
         FROM audit WHERE (? IS NULL OR username = ?) ORDER BY id DESC LIMIT ?`,
    );
  }

  record(event: AuditEvent, entry: AuditEntry = {}): void {
    this.insert.run(
      this.now(),
      event,
      entry.username ?? null,
      entry.appPasswordId ?? null,
      entry.ip ?? null,
      entry.protocol ?? null,
      entry.detail ?? null,
    );
  }

  /** Drops events older than `maxAgeMs`; returns how many. */
  prune(maxAgeMs: number): number {
    return this.deleteBefore.run(this.now() - maxAgeMs).changes;
  }

  list(options: { username?: string; limit?: number } = {}): AuditRow[] {
    const username = options.username ?? null;
    return this.recent.all(username, username, options.limit ?? 100) as AuditRow[];
  }
}
