/**
 * App passwords: one per mail program, shown once, revocable.
 *
 * Only the argon2id hash is stored. The selector (the first four letters) is
 * stored in clear so a login finds its row without trying every hash.
 */
import { ErrorCodes, MailgateError } from '../../errors.js';
import type { AccountRepository } from './accounts.js';
import { generateAppPassword, type GeneratedAppPassword } from '../app-password-format.js';
import { checkCanCreate, checkCodeCanBeChecked, CREATE_ATTEMPTS, newAppPassword } from '../app-password-rules.js';
import { toAppPasswordInfo, type AppPasswordRow } from '../rows.js';
import type { AuditLog } from './audit.js';
import { selectIn, type Db } from './database.js';
import type { PasswordHasher } from '../hasher.js';
import type { TotpService } from './totp.js';
import type { Account, AppPasswordInfo, Clock, Scope, CreateOptions, CreatedAppPassword, AppPasswordCandidate } from '../types.js';

const toInfo = toAppPasswordInfo;

export class AppPasswordRepository {
  private readonly selectByAccount;
  private readonly selectById;
  private readonly selectBySelector;
  private readonly selectStatusById;
  private readonly updateLastUse;

  constructor(
    private readonly db: Db,
    private readonly accounts: AccountRepository,
    private readonly audit: AuditLog,
    private readonly hasher: PasswordHasher,
    private readonly totp: TotpService,
    private readonly now: Clock,
    private readonly maxActive: number,
  ) {
    this.selectByAccount = db.prepare('SELECT * FROM app_passwords WHERE account_id = ? ORDER BY id');
    this.selectById = db.prepare('SELECT * FROM app_passwords WHERE id = ? AND account_id = ?');
    // Active rows first: if a revoked password shares a selector with a live
    // one, the live one is the one a correct login must reach.
    this.selectBySelector = db.prepare(
      'SELECT * FROM app_passwords WHERE account_id = ? AND selector = ? ORDER BY revoked_at IS NOT NULL, id DESC',
    );
    this.selectStatusById = db.prepare('SELECT * FROM app_passwords WHERE id = ?');
    this.updateLastUse = db.prepare(
      'UPDATE app_passwords SET last_used_at = ?, last_used_ip = ?, last_used_protocol = ?, last_used_client = ? WHERE id = ?',
    );
  }

  async create(username: string, options: CreateOptions): Promise<CreatedAppPassword> {
    const { name, scopes, expiresAt } = newAppPassword(options);
    // Check before the (slow) hash so an obviously refused request fails fast;
    // the same checks run again inside the write transaction, which is what counts.
    const account = this.accounts.get(username);
    this.checkCanCreate(account, name);
    checkCodeCanBeChecked(account, options);

    for (let attempt = 0; attempt < CREATE_ATTEMPTS; attempt++) {
      const generated = generateAppPassword();
      const hash = await this.hasher.hash(generated.secret);
      const created = this.insertIfFree(username, name, scopes, expiresAt, generated, hash, options.totpCode);
      if (created) return created;
    }
    // Five selector collisions in one account of at most a few dozen rows
    // (26^4 selectors) is beyond bad luck: something is wrong with the RNG.
    throw new Error('could not find a free app-password selector');
  }

  private insertIfFree(
    username: string,
    name: string,
    scopes: Scope[],
    expiresAt: number | null,
    generated: GeneratedAppPassword,
    hash: string,
    totpCode: string | undefined,
  ): CreatedAppPassword | null {
    return this.db
      .transaction((): CreatedAppPassword | null => {
        const account = this.accounts.get(username);
        this.checkCanCreate(account, name);
        const clash = this.selectBySelector.get(account.id, generated.selector) as AppPasswordRow | undefined;
        if (clash && clash.revoked_at === null) return null;
        // Last, so that only a create that will happen spends the code.
        if (totpCode !== undefined) this.totp.consumeIn(account, totpCode);
        const result = this.db
          .prepare(
            'INSERT INTO app_passwords (account_id, name, selector, hash, scopes, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)',
          )
          .run(account.id, name, generated.selector, hash, scopes.join(','), this.now(), expiresAt);
        const id = Number(result.lastInsertRowid);
        this.audit.record('created', { username: account.username, appPasswordId: id, detail: scopes.join(',') });
        const row = this.selectById.get(id, account.id) as AppPasswordRow;
        return { info: toInfo(row), password: generated.display };
      })
      .immediate();
  }

  private checkCanCreate(account: Account, name: string): void {
    checkCanCreate(account, name, this.listFor(account), this.maxActive, this.now());
  }

  list(username: string): AppPasswordInfo[] {
    return this.listFor(this.accounts.get(username));
  }

  private listFor(account: Account): AppPasswordInfo[] {
    return (this.selectByAccount.all(account.id) as AppPasswordRow[]).map(toInfo);
  }

  revoke(username: string, id: number): AppPasswordInfo {
    return this.db
      .transaction(() => {
        const account = this.accounts.get(username);
        const row = this.selectById.get(id, account.id) as AppPasswordRow | undefined;
        // An id of another account is "unknown" here: nothing reveals or touches it.
        if (!row) throw new MailgateError(ErrorCodes.UNKNOWN_APP_PASSWORD, `${account.username} has no app password ${id}`);
        if (row.revoked_at !== null) {
          throw new MailgateError(ErrorCodes.UNKNOWN_APP_PASSWORD, `app password ${id} of ${account.username} is already revoked`);
        }
        this.db.prepare('UPDATE app_passwords SET revoked_at = ? WHERE id = ?').run(this.now(), id);
        this.audit.record('revoked', { username: account.username, appPasswordId: id });
        return toInfo(this.selectById.get(id, account.id) as AppPasswordRow);
      })
      .immediate();
  }

  /** Revokes every app password of the account that is not revoked yet; returns how many. */
  revokeAll(username: string): number {
    return this.db
      .transaction(() => {
        const account = this.accounts.get(username);
        const result = this.db
          .prepare('UPDATE app_passwords SET revoked_at = ? WHERE account_id = ? AND revoked_at IS NULL')
          .run(this.now(), account.id);
        this.audit.record('revoked-all', { username: account.username, detail: String(result.changes) });
        return result.changes;
      })
      .immediate();
  }

  /** The row a login's selector points at, preferring a live one. */
  findCandidate(accountId: number, selector: string): AppPasswordCandidate | null {
    const row = this.selectBySelector.get(accountId, selector) as AppPasswordRow | undefined;
    return row ? { info: toInfo(row), hash: row.hash } : null;
  }

  /** Current state of one app password by id (any account), for re-checks of open sessions. */
  findById(id: number): AppPasswordInfo | null {
    const row = this.selectStatusById.get(id) as AppPasswordRow | undefined;
    return row ? toInfo(row) : null;
  }

  /** The app passwords of these ids that exist, by id (for re-checking open sessions). */
  findByIds(ids: readonly number[]): Map<number, AppPasswordInfo> {
    const rows = selectIn<AppPasswordRow>(this.db, 'SELECT * FROM app_passwords WHERE id IN', ids);
    return new Map(rows.map((row) => [row.id, toInfo(row)]));
  }

  recordUse(id: number, use: { ip: string | null; protocol: string; client?: string | null }): void {
    this.updateLastUse.run(this.now(), use.ip, use.protocol, use.client ?? null, id);
  }
}
