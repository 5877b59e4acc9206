/**
 * Opening the store named in the configuration, and the administrator's
 * maintenance of it: the one place that knows which engine is behind the
 * Store interface (SQLite today).
 */
import { FIXED_LIMITS } from '../config/limits.js';
import type { Config } from '../config/schema.js';
import { configPath } from '../config/load.js';
import type { Logger } from '../log/logger.js';
import { PasswordHasher } from './hasher.js';
import { loadKey } from './secret-box.js';
import type { SchemaUpgrade } from './sqlite/database.js';
import { storeFootprint } from './sqlite/footprint.js';
import { backupDatabase, checkDatabase, databaseSchemaVersion } from './sqlite/maintenance.js';
import { SCHEMA_VERSION } from './sqlite/migrations.js';
import { storeOptionsFromConfig, type StoreOptions } from './sqlite/repositories.js';
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

export function openStore(config: Config, options: OpenStoreOptions): OpenedStore {
  const gateway = options.role === 'gateway';
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

/** An online, consistent copy of the store in `file` (mode 0600); the live store is never touched. */
export function backupStore(config: Config, file: string, options: { force?: boolean } = {}): Promise<BackupResult & { source: string }> {
  const source = configPath(config.store.path);
  return backupDatabase(source, file, { force: options.force ?? false, busyTimeoutMs: config.store.busy_timeout_ms }).then((written) => ({ ...written, source }));
}

/** The store's own integrity checks, read-only. */
export function checkStore(config: Config): CheckResult & { file: string } {
  const file = configPath(config.store.path);
  return { file, ...checkDatabase(file, config.store.busy_timeout_ms) };
}

/**
 * The schema version of the existing store, asked of SQLite read-only
 * (never a new store, never a migration), and the version this mailgate
 * writes: older ones are migrated at start, newer ones refused.
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
