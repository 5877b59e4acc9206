/**
 * The SQLite store's parts, synchronous: opens the database and the key and
 * wires the repositories together. SqliteStore (sqlite-store.ts) puts the
 * asynchronous Store interface over it for the rest of mailgate; the CLI's
 * short-lived commands and the tests may use it directly.
 */
import { existsSync, statSync } from 'node:fs';
import type { Config } from '../../config/schema.js';
import { ErrorCodes, MailgateError } from '../../errors.js';
import { configPath } from '../../config/load.js';
import { AccountRepository } from './accounts.js';
import { AppPasswordRepository } from './app-passwords.js';
import { AuditLog } from './audit.js';
import { openDatabase, type Db, type SchemaUpgrade } from './database.js';
import { PasswordHasher } from '../hasher.js';
import { PenaltyRepository } from './penalties.js';
import { deriveKey, loadKey, loadOrCreateKey } from '../secret-box.js';
import { RECOVERY_CODE_KEY_LABEL } from '../recovery-code-format.js';
import { TotpService } from './totp.js';
import type { EngineOptions } from '../types.js';
import { SqliteLogins } from './logins.js';
import { RecoveryCodeRepository } from './recovery-codes.js';
import { WebSessionRepository } from './web-sessions.js';

/** SQLite: an older schema is upgraded (`upgrade`) after a backup beside the file. */
export interface StoreOptions extends EngineOptions {
  path: string;
  busyTimeoutMs?: number;
  autoCheckpoint?: boolean;
  onUpgrade?: (upgrade: SchemaUpgrade) => void;
}

/** The default of upstream.login.separator, for stores opened without a configuration. */
export const DEFAULT_MASTER_SEPARATOR = '*';

export class SqliteRepositories {
  readonly accounts: AccountRepository;
  readonly appPasswords: AppPasswordRepository;
  readonly totp: TotpService;
  readonly audit: AuditLog;
  readonly hasher: PasswordHasher;
  /** The login path: the credential check and the records a login leaves. */
  readonly verifier: SqliteLogins;
  readonly penalties: PenaltyRepository;
  readonly recoveryCodes: RecoveryCodeRepository;
  readonly webSessions: WebSessionRepository;

  private constructor(
    readonly db: Db,
    readonly path: string,
    key: Buffer,
    options: StoreOptions,
  ) {
    const now = options.now ?? Date.now;
    this.hasher =
      options.hasher ??
      new PasswordHasher({
        ...options.argon2,
        ...(options.hashConcurrency === undefined ? {} : { concurrency: options.hashConcurrency }),
        ...(options.hashQueue === undefined ? {} : { maxQueue: options.hashQueue }),
      });
    this.audit = new AuditLog(db, now);
    this.webSessions = new WebSessionRepository(db, this.audit, now);
    this.accounts = new AccountRepository(db, this.audit, this.webSessions, now, options.masterSeparator ?? DEFAULT_MASTER_SEPARATOR);
    this.recoveryCodes = new RecoveryCodeRepository(db, this.accounts, this.audit, deriveKey(key, RECOVERY_CODE_KEY_LABEL), now);
    this.totp = new TotpService(db, this.accounts, this.audit, this.recoveryCodes, this.webSessions, key, now, options.totpIssuer ?? 'mailgate');
    this.appPasswords = new AppPasswordRepository(db, this.accounts, this.audit, this.hasher, this.totp, now, options.maxAppPasswords);
    this.verifier = new SqliteLogins(db, this.accounts, this.appPasswords, this.audit, this.hasher, now);
    this.penalties = new PenaltyRepository(db, now);
  }

  static open(options: StoreOptions): SqliteRepositories {
    // The key is read first: a store that cannot decrypt its secrets is useless,
    // and failing before the database is created leaves nothing half-made.
    // A new key for an existing database would leave every TOTP secret in it
    // undecryptable: only a new store gets a new key.
    const databaseExists = existsSync(options.path) && statSync(options.path).size > 0;
    if (databaseExists && !existsSync(options.keyFile)) {
      throw new MailgateError(ErrorCodes.KEY_FILE, `key file ${options.keyFile} is missing but the database ${options.path} exists; restore the key file`);
    }
    const key = options.mustExist ? loadKey(options.keyFile) : loadOrCreateKey(options.keyFile);
    const db = openDatabase(options.path, {
      ...(options.busyTimeoutMs === undefined ? {} : { busyTimeoutMs: options.busyTimeoutMs }),
      mustExist: options.mustExist ?? false,
      ...(options.autoCheckpoint === undefined ? {} : { autoCheckpoint: options.autoCheckpoint }),
      ...(options.upgrade ? { upgrade: true } : {}),
      ...(options.onUpgrade ? { onUpgrade: options.onUpgrade } : {}),
    });
    return new SqliteRepositories(db, options.path, key, options);
  }

  /**
   * SQLite's data_version: it moves when another connection (another process,
   * the CLI) commits, never for this connection's own commits.
   */
  dataVersion(): number {
    return this.db.pragma('data_version', { simple: true }) as number;
  }

  close(): void {
    if (this.db.open) this.db.close();
  }
}

export function storeOptionsFromConfig(config: Config, overrides: Partial<StoreOptions> = {}): StoreOptions {
  return {
    path: configPath(config.store.path),
    keyFile: configPath(config.store.key_file),
    busyTimeoutMs: config.store.busy_timeout_ms,
    argon2: {
      memoryKib: config.auth.argon2_memory_kib,
      iterations: config.auth.argon2_iterations,
      parallelism: config.auth.argon2_parallelism,
    },
    maxAppPasswords: config.auth.max_app_passwords,
    hashConcurrency: config.auth.hash_concurrency,
    hashQueue: config.auth.hash_queue,
    totpIssuer: config.totp.issuer,
    masterSeparator: config.upstream.login.separator,
    ...overrides,
  };
}
