/**
 * App passwords on PostgreSQL: only the argon2id hash is stored, with the
 * selector in clear (app-password-format.ts). The rules of a create are
 * app-password-rules.ts's, checked again inside the transaction under the
 * account's row lock, so two nodes cannot together pass the limit.
 */
import { ErrorCodes, MailgateError } from '../../errors.js';
import { generateAppPassword, type GeneratedAppPassword } from '../app-password-format.js';
import { checkCanCreate, checkCodeCanBeChecked, CREATE_ATTEMPTS, newAppPassword, type NewAppPassword } from '../app-password-rules.js';
import type { PasswordHasher } from '../hasher.js';
import { APP_PASSWORD_COLUMNS, toAccount, toAppPasswordInfo, type AppPasswordRow } from '../rows.js';
import type { Account, AppPasswordCandidate, AppPasswordInfo, Clock, CreatedAppPassword, CreateOptions, TotpState } from '../types.js';
import { tryNormaliseUsername } from '../username.js';
import type { PgAccounts } from './accounts.js';
import type { PgAudit } from './audit.js';
import { prepared, type PgDatabase, type Sql, type Tx } from './database.js';
import type { PgTotp } from './totp.js';

// The login path's statements, prepared (database.ts says why).
const CANDIDATE = prepared(
  `SELECT ${APP_PASSWORD_COLUMNS} FROM app_passwords WHERE account_id = $1 AND selector = $2 ORDER BY revoked_at IS NOT NULL, id DESC LIMIT 1`,
);
const P_COLUMNS = APP_PASSWORD_COLUMNS.split(', ').map((column) => `p.${column}`).join(', ');
const A_COLUMNS = 'a.id AS a_id, a.username AS a_username, a.created_at AS a_created_at, a.totp_state AS a_totp_state, a.totp_changed_at AS a_totp_changed_at';
const WITH_ACCOUNT = prepared(`SELECT ${P_COLUMNS}, ${A_COLUMNS} FROM app_passwords p JOIN accounts a ON a.id = p.account_id WHERE p.id = $1 AND a.id = $2`);
/** The account by name and CANDIDATE's row of it (all its columns null when there is none). */
const ACCOUNT_WITH_CANDIDATE = prepared(
  `SELECT ${A_COLUMNS}, ${P_COLUMNS}
     FROM accounts a LEFT JOIN LATERAL (
       SELECT ${APP_PASSWORD_COLUMNS} FROM app_passwords WHERE account_id = a.id AND selector = $2 ORDER BY revoked_at IS NOT NULL, id DESC LIMIT 1
     ) p ON true
    WHERE a.username = $1`,
);

/** The account's columns under the names A_COLUMNS gives them. */
interface AccountColumns {
  a_id: number;
  a_username: string;
  a_created_at: number;
  a_totp_state: TotpState;
  a_totp_changed_at: number | null;
}

function accountOf(row: AccountColumns): Account {
  return toAccount({ id: row.a_id, username: row.a_username, created_at: row.a_created_at, totp_state: row.a_totp_state, totp_changed_at: row.a_totp_changed_at });
}

export class PgAppPasswords {
  constructor(
    private readonly db: PgDatabase,
    private readonly accounts: PgAccounts,
    private readonly audit: PgAudit,
    private readonly hasher: PasswordHasher,
    private readonly totp: PgTotp,
    private readonly now: Clock,
    private readonly maxActive: number,
  ) {}

  /** Checks, hashes (outside any transaction: it takes milliseconds), then inserts under the account's lock. */
  async create(username: string, options: CreateOptions): Promise<CreatedAppPassword> {
    const wanted = newAppPassword(options);
    const account = await this.accounts.get(this.db.sql, username);
    await this.checkCanCreate(this.db.sql, account, wanted.name);
    checkCodeCanBeChecked(account, options);
    for (let attempt = 0; attempt < CREATE_ATTEMPTS; attempt++) {
      const generated = generateAppPassword();
      const hash = await this.hasher.hash(generated.secret);
      const created = await this.db.transaction((tx) => this.insertIfFree(tx, username, wanted, generated, hash, options.totpCode));
      if (created) return created;
    }
    throw new Error('could not find a free app-password selector');
  }

  private async insertIfFree(tx: Tx, username: string, wanted: NewAppPassword, generated: GeneratedAppPassword, hash: string, totpCode: string | undefined): Promise<CreatedAppPassword | null> {
    const account = await this.accounts.lock(tx, username);
    await this.checkCanCreate(tx, account, wanted.name);
    const clash = await this.findCandidate(tx, account.id, generated.selector);
    if (clash && clash.info.revokedAt === null) return null;
    // Last, so that only a create that will happen spends the code.
    if (totpCode !== undefined) await this.totp.consume(tx, account, totpCode);
    const row = await tx.one<AppPasswordRow>(
      'INSERT INTO app_passwords (account_id, name, selector, hash, scopes, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *',
      [account.id, wanted.name, generated.selector, hash, wanted.scopes.join(','), this.now(), wanted.expiresAt],
    );
    const info = toAppPasswordInfo(row!);
    await this.audit.record(tx, 'created', { username: account.username, appPasswordId: info.id, detail: wanted.scopes.join(',') });
    return { info, password: generated.display };
  }

  private async checkCanCreate(sql: Sql, account: Account, name: string): Promise<void> {
    checkCanCreate(account, name, await this.listFor(sql, account), this.maxActive, this.now());
  }

  async list(sql: Sql, username: string): Promise<AppPasswordInfo[]> {
    return this.listFor(sql, await this.accounts.get(sql, username));
  }

  private async listFor(sql: Sql, account: Account): Promise<AppPasswordInfo[]> {
    return (await sql.rows<AppPasswordRow>('SELECT * FROM app_passwords WHERE account_id = $1 ORDER BY id', [account.id])).map(toAppPasswordInfo);
  }

  /** Revokes one by a conditional update: revoked once, whichever node asks. */
  async revoke(tx: Tx, username: string, id: number): Promise<AppPasswordInfo> {
    const account = await this.accounts.get(tx, username);
    const row = await tx.one<AppPasswordRow>('UPDATE app_passwords SET revoked_at = $1 WHERE id = $2 AND account_id = $3 AND revoked_at IS NULL RETURNING *', [
      this.now(),
      id,
      account.id,
    ]);
    if (!row) {
      // An id of another account is "unknown" here: nothing reveals or touches it.
      const exists = await tx.one('SELECT 1 FROM app_passwords WHERE id = $1 AND account_id = $2', [id, account.id]);
      throw new MailgateError(
        ErrorCodes.UNKNOWN_APP_PASSWORD,
        exists ? `app password ${id} of ${account.username} is already revoked` : `${account.username} has no app password ${id}`,
      );
    }
    await this.audit.record(tx, 'revoked', { username: account.username, appPasswordId: id });
    return toAppPasswordInfo(row);
  }

  async revokeAll(tx: Tx, username: string): Promise<number> {
    const account = await this.accounts.get(tx, username);
    const changes = await tx.run('UPDATE app_passwords SET revoked_at = $1 WHERE account_id = $2 AND revoked_at IS NULL', [this.now(), account.id]);
    await this.audit.record(tx, 'revoked-all', { username: account.username, detail: String(changes) });
    return changes;
  }

  /** The row a login's selector points at, preferring a live one. */
  async findCandidate(sql: Sql, accountId: number, selector: string): Promise<AppPasswordCandidate | null> {
    const row = await sql.one<AppPasswordRow>(CANDIDATE, [accountId, selector]);
    return row ? { info: toAppPasswordInfo(row), hash: row.hash } : null;
  }

  /** The app password with its account, in one read; null unless both exist and the one is the other's. */
  async findWithAccount(sql: Sql, accountId: number, id: number): Promise<{ account: Account; appPassword: AppPasswordInfo } | null> {
    const row = await sql.one<AppPasswordRow & AccountColumns>(WITH_ACCOUNT, [id, accountId]);
    return row ? { account: accountOf(row), appPassword: toAppPasswordInfo(row) } : null;
  }

  /** The account by name and the app password its selector points at (as findCandidate), in one read. */
  async findAccountWithCandidate(sql: Sql, rawUsername: string, selector: string): Promise<{ account: Account | null; candidate: AppPasswordCandidate | null }> {
    const username = tryNormaliseUsername(rawUsername);
    const row = username === null ? undefined : await sql.one<AccountColumns & { [K in keyof AppPasswordRow]: AppPasswordRow[K] | null }>(ACCOUNT_WITH_CANDIDATE, [username, selector]);
    if (!row) return { account: null, candidate: null };
    const candidate = row.id === null ? null : { info: toAppPasswordInfo(row as AppPasswordRow), hash: row.hash! };
    return { account: accountOf(row), candidate };
  }

  async findById(sql: Sql, id: number): Promise<AppPasswordInfo | null> {
    const row = await sql.one<AppPasswordRow>('SELECT * FROM app_passwords WHERE id = $1', [id]);
    return row ? toAppPasswordInfo(row) : null;
  }

  async findByIds(sql: Sql, ids: readonly number[]): Promise<Map<number, AppPasswordInfo>> {
    if (ids.length === 0) return new Map();
    const rows = await sql.rows<AppPasswordRow>('SELECT * FROM app_passwords WHERE id = ANY($1::bigint[])', [[...new Set(ids)]]);
    return new Map(rows.map((row) => [row.id, toAppPasswordInfo(row)]));
  }
}
