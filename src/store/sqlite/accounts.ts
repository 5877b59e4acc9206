/** Accounts: the people whose logins mailgate checks. */
import { ErrorCodes, MailgateError } from '../../errors.js';
import type { AuditLog } from './audit.js';
import { selectIn, type Db } from './database.js';
import type { WebSessionRepository } from './web-sessions.js';
import { ACCOUNT_COLUMNS, toAccount, type AccountRow } from '../rows.js';
import type { Account, Clock } from '../types.js';
import { normaliseUsername, validateNewUsername } from '../username.js';

const COLUMNS = ACCOUNT_COLUMNS;

export class AccountRepository {
  private readonly byName;
  private readonly byId;
  private readonly all;

  constructor(
    private readonly db: Db,
    private readonly audit: AuditLog,
    private readonly webSessions: WebSessionRepository,
    private readonly now: Clock,
    /** upstream.login.separator: no new account may contain it (see validateNewUsername). */
    private readonly masterSeparator: string,
  ) {
    this.byName = db.prepare(`SELECT ${COLUMNS} FROM accounts WHERE username = ?`);
    this.byId = db.prepare(`SELECT ${COLUMNS} FROM accounts WHERE id = ?`);
    this.all = db.prepare(`SELECT ${COLUMNS} FROM accounts ORDER BY username`);
  }

  add(rawUsername: string): Account {
    const username = validateNewUsername(rawUsername, this.masterSeparator);
    return this.db
      .transaction(() => {
        if (this.byName.get(username)) {
          throw new MailgateError(ErrorCodes.ACCOUNT_EXISTS, `account ${username} already exists`);
        }
        const now = this.now();
        const info = this.db.prepare('INSERT INTO accounts (username, created_at) VALUES (?, ?)').run(username, now);
        this.audit.record('account-added', { username });
        return this.require(username, Number(info.lastInsertRowid));
      })
      .immediate();
  }

  /** The account, or null; a name that cannot be valid is simply not found. */
  find(rawUsername: string): Account | null {
    let username: string;
    try {
      username = normaliseUsername(rawUsername);
    } catch {
      return null;
    }
    const row = this.byName.get(username) as AccountRow | undefined;
    return row ? toAccount(row) : null;
  }

  /** The accounts of these (normalised) names that exist, by name. */
  findByNames(names: readonly string[]): Map<string, Account> {
    const rows = selectIn<AccountRow>(this.db, `SELECT ${COLUMNS} FROM accounts WHERE username IN`, names);
    return new Map(rows.map((row) => [row.username, toAccount(row)]));
  }

  /** The accounts of these ids that exist, by id (for re-checking open sessions). */
  findByIds(ids: readonly number[]): Map<number, Account> {
    const rows = selectIn<AccountRow>(this.db, `SELECT ${COLUMNS} FROM accounts WHERE id IN`, ids);
    return new Map(rows.map((row) => [row.id, toAccount(row)]));
  }

  findById(id: number): Account | null {
    const row = this.byId.get(id) as AccountRow | undefined;
    return row ? toAccount(row) : null;
  }

  get(rawUsername: string): Account {
    const username = normaliseUsername(rawUsername);
    const account = this.find(username);
    if (!account) throw new MailgateError(ErrorCodes.UNKNOWN_ACCOUNT, `no account ${username}`);
    return account;
  }

  list(): Account[] {
    return (this.all.all() as AccountRow[]).map(toAccount);
  }

  /**
   * Removes the account and, through the foreign keys, its app passwords and
   * recovery codes; ends its page sessions. Returns it, and how many of those were live.
   */
  remove(rawUsername: string): { account: Account; webSessionsEnded: number } {
    return this.db
      .transaction(() => {
        const account = this.get(rawUsername);
        const webSessionsEnded = this.webSessions.endForRemovalIn(account);
        this.db.prepare('DELETE FROM accounts WHERE id = ?').run(account.id);
        this.audit.record('account-removed', { username: account.username });
        return { account, webSessionsEnded };
      })
      .immediate();
  }

  private require(username: string, id: number): Account {
    const row = this.byId.get(id) as AccountRow | undefined;
    if (!row) throw new MailgateError(ErrorCodes.UNKNOWN_ACCOUNT, `no account ${username}`);
    return toAccount(row);
  }
}
