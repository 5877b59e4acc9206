/**
 * Opening the store named in the configuration, and the administrator's
 * maintenance of it: the one place that knows which engine is behind the
 * Store interface (`store.backend`: SQLite on one host, PostgreSQL shared by
 * several nodes).
 */
import { FIXED_LIMITS } from '../config/limits.js';
import type { Config } from '../config/schema.js';
import { ErrorCodes, MailgateError } from '../errors.js';
import { configPath } from '../config/load.js';
import type { Logger } from '../log/logger.js';
import { PasswordHasher } from './hasher.js';
import { loadKey } from './secret-box.js';
import { copySqliteToPostgres, type CopyResult } from './copy.js';
import { safeUrl } from './postgres/database.js';
import { checkPostgres, migratePostgres } from './postgres/maintenance.js';
import { PostgresStore } from './postgres/postgres-store.js';
import { pgOptionsFromConfig } from './postgres/repositories.js';
import type { SchemaUpgrade } from './sqlite/database.js';
import { storeFootprint } from './sqlite/footprint.js';
import { backupDatabase, checkDatabase, databaseSchemaVersion } from './sqlite/maintenance.js';
import { SCHEMA_VERSION } from './sqlite/migrations.js';
import { SqliteRepositories, storeOptionsFromConfig, type StoreOptions } from './sqlite/repositories.js';
import { SqliteStore } from './sqlite/sqlite-store.js';
import type { Store } from './store.js';
import type { BackupResult, CheckResult, Clock } from './types.js';

export interface OpenStoreOptions {
  log: Logger;
  /**
   * 'gateway': waits briefly for locks (every wait blocks the event loop) and
   * checkpoints in a worker; 'cli': waits longer, SQLite checkpoints itself.
   */
  role: 'gateway' | 'cli';
  /** The argon2 hasher to share (its concurrency limit is the process's); one is made from the configuration otherwise. */
  hasher?: PasswordHasher;
  now?: Clock;
  /** Refuse to create a store that does not exist (every command but `serve` and `account add`, in time). */
  mustExist?: boolean;
  /** Tests: cheaper argon2, another clock. */
  argon2?: StoreOptions['argon2'];
}


export interface OpenedStore {
  store: Store;
  /**
   * After a start that failed: removes what this open created (a new, empty
   * store and its key), never anything that existed before. Returns what it removed.
   */
  removeCreated(): string[];
}

/** The argon2 hasher the configuration asks for: one per process, shared by the store and the login path. */
export function createHasher(config: Config, argon2?: StoreOptions['argon2']): PasswordHasher {
  return new PasswordHasher({
    ...(argon2 ?? { memoryKib: config.auth.argon2_memory_kib, iterations: config.auth.argon2_iterations, parallelism: config.auth.argon2_parallelism }),
    concurrency: config.auth.hash_concurrency,
    maxQueue: config.auth.hash_queue,
  });
}

export async function openStore(config: Config, options: OpenStoreOptions): Promise<OpenedStore> {
  const gateway = options.role === 'gateway';
  if (config.store.backend === 'postgres') {
    // Only the gateway listens for other nodes' changes; the CLI's own reach them through the database.
    const store = await PostgresStore.open(
      pgOptionsFromConfig(config, {
        hasher: options.hasher ?? createHasher(config, options.argon2),
        ...(options.argon2 ? { argon2: options.argon2 } : {}),
        ...(options.now ? { now: options.now } : {}),
        ...(options.mustExist ? { mustExist: true } : {}),
        // As on SQLite, only the gateway (and `store migrate`) brings an older schema up to date.
        ...(gateway ? { upgrade: true } : {}),
      }),
      { log: options.log, listen: gateway },
    );
    // A shared database is never removed by a failed start of one node.
    return { store, removeCreated: () => [] };
  }
  const sqlite = storeOptionsFromConfig(config, {
    // better-sqlite3 is synchronous: a write waiting for a lock blocks the
    // event loop, so the gateway waits far less than the CLI would.
    ...(gateway ? { busyTimeoutMs: config.store.gateway_busy_timeout_ms, autoCheckpoint: false } : {}),
    hasher: options.hasher ?? createHasher(config, options.argon2),
    ...(options.argon2 ? { argon2: options.argon2 } : {}),
    ...(options.now ? { now: options.now } : {}),
    ...(options.mustExist ? { mustExist: true } : {}),
    // Only the gateway upgrades an older store: it is what an upgrade restarts, and a CLI
    // of the new version must not change the schema under a gateway still running the old one.
    ...(gateway
      ? {
          upgrade: true,
          onUpgrade: ({ from, to, backup }: SchemaUpgrade) =>
            options.log.info({ path: configPath(config.store.path), from, to, backup }, `upgraded the store from schema version ${from} to ${to}; the store as it was is in ${backup}`),
        }
      : {}),
  });
  const footprint = storeFootprint(sqlite);
  try {
    const store = SqliteStore.open(sqlite, { log: options.log, ...(gateway ? { checkpointIntervalMs: FIXED_LIMITS.checkpoint_interval_seconds * 1000 } : {}) });
    // Root creating a store in the service user's folder: the files are the service user's (chown by path, never open).
    footprint.adoptFolderOwner();
    return { store, removeCreated: () => footprint.removeCreated() };
  } catch (err) {
    footprint.removeCreated();
    throw err;
  }
}

/** An online, consistent copy of the store in `file` (mode 0600); the live store is never touched. SQLite only: PostgreSQL has pg_dump. */
export function backupStore(config: Config, file: string, options: { force?: boolean } = {}): Promise<BackupResult & { source: string }> {
  if (config.store.backend === 'postgres') {
    return Promise.reject(new MailgateError(ErrorCodes.USAGE, 'store backup writes SQLite copies; back up a PostgreSQL store with pg_dump'));
  }
  const source = configPath(config.store.path);
  return backupDatabase(source, file, { force: options.force ?? false, busyTimeoutMs: config.store.busy_timeout_ms }).then((written) => ({ ...written, source }));
}

/** The store's own integrity checks, read-only; `file` names the store (a file, or a URL without its password). */
export async function checkStore(config: Config): Promise<CheckResult & { file: string }> {
  if (config.store.backend === 'postgres') {
    return { file: safeUrl(config.store.url), ...(await checkPostgres(pgOptionsFromConfig(config))) };
  }
  const file = configPath(config.store.path);
  return { file, ...checkDatabase(file, config.store.busy_timeout_ms) };
}

/**
 * Applies the migrations the store lacks: on PostgreSQL it makes the schema
 * in an empty database (recording the key file); an SQLite store must exist,
 * and is copied beside itself first, as the gateway does at start (the
 * operator asked for this one; other CLI commands refuse an older store).
 */
export async function migrateStore(config: Config): Promise<{ store: string; from: number; to: number; backup?: string }> {
  if (config.store.backend === 'postgres') {
    return { store: safeUrl(config.store.url), ...(await migratePostgres(pgOptionsFromConfig(config))) };
  }
  const file = configPath(config.store.path);
  const from = databaseSchemaVersion(file, config.store.busy_timeout_ms);
  let backup: string | undefined;
  const options = storeOptionsFromConfig(config, { mustExist: true, hasher: createHasher(config), upgrade: true, onUpgrade: (done: SchemaUpgrade) => (backup = done.backup) });
  SqliteRepositories.open(options).close();
  return { store: file, from, to: Math.max(from, SCHEMA_VERSION), ...(backup ? { backup } : {}) };
}

/** `store copy`: the configured SQLite store into the empty PostgreSQL store at `url` (same key file), compared afterwards. */
export function copyStore(config: Config, url: string, options: { passwordFile?: string } = {}): Promise<CopyResult> {
  if (config.store.backend !== 'sqlite') {
    return Promise.reject(new MailgateError(ErrorCodes.USAGE, 'store copy reads the SQLite store the configuration names; set store.backend = "sqlite" for the copy'));
  }
  const target = pgOptionsFromConfig(config, { url, poolSize: 2, ...(options.passwordFile ? { passwordFile: options.passwordFile } : {}) });
  return copySqliteToPostgres(configPath(config.store.path), target);
}

/**
 * The schema version of the existing SQLite store, asked of SQLite
 * read-only (never a new store, never a migration), and the version this
 * mailgate writes: older ones are migrated at start, newer ones refused.
 * (A PostgreSQL store says the same through checkStore.)
 */
export function storeSchemaVersion(config: Config): { file: string; version: number; current: number } {
  const file = configPath(config.store.path);
  return { file, version: databaseSchemaVersion(file, config.store.busy_timeout_ms), current: SCHEMA_VERSION };
}

/**
 * The store's key (store.key_file), for secrets derived from it outside the
 * store (the page's cookie-signing key). Read after the store is open, which
 * creates the key on a first start.
 */
export function readStoreKey(config: Config): Buffer {
  return loadKey(configPath(config.store.key_file));
}
