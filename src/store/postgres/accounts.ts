/** Accounts on PostgreSQL; the rules are SQLite's (sqlite/accounts.ts), the locks PostgreSQL's own. */
import { ErrorCodes, MailgateError } from '../../errors.js';
import { ACCOUNT_COLUMNS, toAccount, type AccountRow } from '../rows.js';
import type { Account, Clock } from '../types.js';
import { normaliseUsername, tryNormaliseUsername, validateNewUsername } from '../username.js';
import type { PgAudit } from './audit.js';
import { prepared, type Sql, type Tx } from './database.js';
import type { PgWebSessions } from './web-sessions.js';

/** Every login looks its account up by name: prepared (database.ts says why). */
const FIND = prepared(`SELECT ${ACCOUNT_COLUMNS} FROM accounts WHERE username = $1`);

export class PgAccounts {
  constructor(
    private readonly audit: PgAudit,
    private readonly webSessions: PgWebSessions,
    private readonly now: Clock,
    private readonly masterSeparator: string,
  ) {}

  /** Adds an account; the unique name decides between two nodes adding the same one. */
  async add(tx: Tx, rawUsername: string): Promise<Account> {
    const username = validateNewUsername(rawUsername, this.masterSeparator);
    const row = await tx.one<AccountRow>(
      `INSERT INTO accounts (username, created_at) VALUES ($1, $2) ON CONFLICT (username) DO NOTHING RETURNING ${ACCOUNT_COLUMNS}`,
      [username, this.now()],
    );
    if (!row) throw new MailgateError(ErrorCodes.ACCOUNT_EXISTS, `account ${username} already exists`);
    await this.audit.record(tx, 'account-added', { username });
    return toAccount(row);
  }

  /** The account, or null; a name that cannot be valid is simply not found. */
  async find(sql: Sql, rawUsername: string): Promise<Account | null> {
    const username = tryNormaliseUsername(rawUsername);
    if (username === null) return null;
    const row = await sql.one<AccountRow>(FIND, [username]);
    return row ? toAccount(row) : null;
  }

  async get(sql: Sql, rawUsername: string): Promise<Account> {
    const username = normaliseUsername(rawUsername);
    const account = await this.find(sql, username);
    if (!account) throw new MailgateError(ErrorCodes.UNKNOWN_ACCOUNT, `no account ${username}`);
    return account;
  }

  /**
   * The account, its row locked until the transaction ends: every change to
   * an account's app passwords, TOTP state or codes takes this lock first,
   * so changes made on two nodes at once happen one after the other.
   */
  async lock(tx: Tx, rawUsername: string): Promise<Account> {
    const username = normaliseUsername(rawUsername);
    const row = await tx.one<AccountRow>(`SELECT ${ACCOUNT_COLUMNS} FROM accounts WHERE username = $1 FOR UPDATE`, [username]);
    if (!row) throw new MailgateError(ErrorCodes.UNKNOWN_ACCOUNT, `no account ${username}`);
    return toAccount(row);
  }

  async findById(sql: Sql, id: number): Promise<Account | null> {
    const row = await sql.one<AccountRow>(`SELECT ${ACCOUNT_COLUMNS} FROM accounts WHERE id = $1`, [id]);
    return row ? toAccount(row) : null;
  }

  async findByIds(sql: Sql, ids: readonly number[]): Promise<Map<number, Account>> {
    if (ids.length === 0) return new Map();
    const rows = await sql.rows<AccountRow>(`SELECT ${ACCOUNT_COLUMNS} FROM accounts WHERE id = ANY($1::bigint[])`, [[...new Set(ids)]]);
    return new Map(rows.map((row) => [row.id, toAccount(row)]));
  }

  async findByNames(sql: Sql, names: readonly string[]): Promise<Map<string, Account>> {
    if (names.length === 0) return new Map();
    const rows = await sql.rows<AccountRow>(`SELECT ${ACCOUNT_COLUMNS} FROM accounts WHERE username = ANY($1::text[])`, [[...new Set(names)]]);
    return new Map(rows.map((row) => [row.username, toAccount(row)]));
  }

  /** By name in byte order, as SQLite lists them (whatever the database's collation). */
  async list(sql: Sql): Promise<Account[]> {
    return (await sql.rows<AccountRow>(`SELECT ${ACCOUNT_COLUMNS} FROM accounts ORDER BY username COLLATE "C"`)).map(toAccount);
  }

  /** Removes the account (its app passwords and codes go with it through the foreign keys), ending its page sessions. */
  async remove(tx: Tx, rawUsername: string): Promise<{ account: Account; webSessionsEnded: number }> {
    const account = await this.lock(tx, rawUsername);
    const webSessionsEnded = await this.webSessions.endForRemoval(tx, account);
    await tx.run('DELETE FROM accounts WHERE id = $1', [account.id]);
    await this.audit.record(tx, 'account-removed', { username: account.username });
    return { account, webSessionsEnded };
  }
}
