/**
 * The PostgreSQL store's parts: connects, migrates, checks the key file
 * against the one the store was made with, and wires the repositories.
 * PostgresStore (postgres-store.ts) puts the Store interface over them.
 */
import { configPath } from '../../config/load.js';
import type { Config } from '../../config/schema.js';
import { ErrorCodes, errorMessage, MailgateError } from '../../errors.js';
import { PasswordHasher } from '../hasher.js';
import { RECOVERY_CODE_KEY_LABEL } from '../recovery-code-format.js';
import { deriveKey, loadKey, loadOrCreateKey } from '../secret-box.js';
import type { StoreChange } from '../store.js';
import type { EngineOptions } from '../types.js';
import { PgAccounts } from './accounts.js';
import { PgAppPasswords } from './app-passwords.js';
import { PgAudit } from './audit.js';
import { PgDatabase, safeUrl, type PostgresOptions, type Sql } from './database.js';
import { PgLogins } from './logins.js';
import { migrate } from './migrations.js';
import { PgPenalties } from './penalties.js';
import { PgRecoveryCodes } from './recovery-codes.js';
import { PgTotp } from './totp.js';
import { PgWebSessions } from './web-sessions.js';

/** PostgreSQL: `mustExist` refuses a database without a mailgate schema; migrations.ts says why `upgrade` is the gateway's. */
export interface PgStoreOptions extends PostgresOptions, EngineOptions {}

/** The label of the key check value kept in store_meta. */
const KEY_CHECK_LABEL = 'mailgate key check';

export class PgRepositories {
  readonly audit: PgAudit;
  readonly webSessions: PgWebSessions;
  readonly accounts: PgAccounts;
  readonly recoveryCodes: PgRecoveryCodes;
  readonly totp: PgTotp;
  readonly appPasswords: PgAppPasswords;
  readonly logins: PgLogins;
  readonly penalties: PgPenalties;
  /** The schema versions before and after this open's migration (equal when there was nothing to do). */
  migrated = { from: 0, to: 0 };

  private constructor(
    readonly db: PgDatabase,
    key: Buffer,
    readonly hasher: PasswordHasher,
    options: PgStoreOptions,
  ) {
    const now = options.now ?? Date.now;
    this.audit = new PgAudit(now);
    this.webSessions = new PgWebSessions(this.audit, now);
    this.accounts = new PgAccounts(this.audit, this.webSessions, now, options.masterSeparator ?? '*');
    this.recoveryCodes = new PgRecoveryCodes(this.accounts, this.audit, deriveKey(key, RECOVERY_CODE_KEY_LABEL), now);
    this.totp = new PgTotp(this.accounts, this.audit, this.recoveryCodes, this.webSessions, key, now, options.totpIssuer ?? 'mailgate');
    this.appPasswords = new PgAppPasswords(db, this.accounts, this.audit, hasher, this.totp, now, options.maxAppPasswords);
    this.logins = new PgLogins(db, this.accounts, this.appPasswords, this.audit, hasher, now);
    this.penalties = new PgPenalties(now);
  }

  /**
   * Connects and migrates (a database the server cannot reach is one line
   * naming it, without its password), then checks the key file.
   */
  static async open(
    options: PgStoreOptions,
    node: string,
    events: { onIdleError: (err: Error) => void; onCommitted?: (changes: StoreChange[]) => void },
  ): Promise<PgRepositories> {
    const db = new PgDatabase(options, node, events.onIdleError, events.onCommitted);
    try {
      const migrated = await migrate({
        url: options.url,
        ...(options.passwordFile ? { passwordFile: options.passwordFile } : {}),
        ...(options.mustExist ? { mustExist: true } : {}),
        ...(options.upgrade ? { upgrade: true } : {}),
      });
      const key = await checkedKey(db.sql, options);
      const hasher =
        options.hasher ??
        new PasswordHasher({
          ...options.argon2,
          ...(options.hashConcurrency === undefined ? {} : { concurrency: options.hashConcurrency }),
          ...(options.hashQueue === undefined ? {} : { maxQueue: options.hashQueue }),
        });
      const repositories = new PgRepositories(db, key, hasher, options);
      repositories.migrated = migrated;
      return repositories;
    } catch (err) {
      await db.close().catch(() => undefined);
      if (err instanceof MailgateError) throw err;
      throw new MailgateError(ErrorCodes.DB_UNAVAILABLE, `database ${safeUrl(options.url)} is unavailable: ${errorMessage(err)}`, { cause: err });
    }
  }
}

/**
 * The key file, checked against the value the store keeps of it: every node
 * needs the same file, and one started with another would fail every TOTP
 * code and recovery code. The first open of a new store records it (making
 * the key file when there is none); after that a missing file is refused.
 */
export async function checkedKey(sql: Sql, options: PgStoreOptions): Promise<Buffer> {
  const recorded = await sql.one<{ value: string }>("SELECT value FROM store_meta WHERE name = 'key_check'");
  if (recorded) {
    const key = loadKey(options.keyFile);
    if (keyCheck(key) !== recorded.value) {
      throw new MailgateError(ErrorCodes.KEY_FILE, `the key file ${options.keyFile} is not the one this store was made with; copy the store's key file to every node`);
    }
    return key;
  }
  const key = options.mustExist ? loadKey(options.keyFile) : loadOrCreateKey(options.keyFile);
  await sql.run("INSERT INTO store_meta (name, value) VALUES ('key_check', $1) ON CONFLICT (name) DO NOTHING", [keyCheck(key)]);
  // Read back: of two first nodes at once with different new keys, the one recorded first wins, the other is refused.
  return checkedKey(sql, { ...options, mustExist: true });
}

/** The value kept of a key file: an HKDF subkey, which tells nothing of the key. */
export function keyCheck(key: Buffer): string {
  return deriveKey(key, KEY_CHECK_LABEL).toString('hex');
}

export function pgOptionsFromConfig(config: Config, overrides: Partial<PgStoreOptions> = {}): PgStoreOptions {
  return {
    url: config.store.url,
    ...(config.store.password_file ? { passwordFile: configPath(config.store.password_file) } : {}),
    poolSize: config.store.pool_size,
    keyFile: configPath(config.store.key_file),
    argon2: { memoryKib: config.auth.argon2_memory_kib, iterations: config.auth.argon2_iterations, parallelism: config.auth.argon2_parallelism },
    maxAppPasswords: config.auth.max_app_passwords,
    hashConcurrency: config.auth.hash_concurrency,
    hashQueue: config.auth.hash_queue,
    totpIssuer: config.totp.issuer,
    masterSeparator: config.upstream.login.separator,
    ...overrides,
  };
}
