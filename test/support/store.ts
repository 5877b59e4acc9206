/**
 * Stores for tests, with cheap argon2 settings so tests stay fast:
 * makeTestStore, a SqliteRepositories in a temporary folder (the SQLite
 * engine's own tests, and tests that want its synchronous parts), and
 * makeEngineStore, a store behind the Store interface on either engine, for
 * the store tests that run on both (describe.each over ENGINES).
 */
import path from 'node:path';
import { generateSync } from 'otplib';
import { afterAll } from 'vitest';
import type { Logger } from '../../src/log/logger.js';
import type { PasswordHasher } from '../../src/store/hasher.js';
import { PostgresStore } from '../../src/store/postgres/postgres-store.js';
import type { PgStoreOptions } from '../../src/store/postgres/repositories.js';
import type { Clock } from '../../src/store/types.js';
import { databaseOf, startPostgres, type PostgresHandle } from './postgres.js';
import { SqliteRepositories, type StoreOptions } from '../../src/store/sqlite/repositories.js';
import { silentLogger } from '../../src/log/logger.js';
import { SqliteStore } from '../../src/store/sqlite/sqlite-store.js';
import type { Store } from '../../src/store/store.js';
import { makeTempDir, removeTempDir } from './tmp.js';

/** The lowest argon2id cost node-argon2 accepts; production defaults are in config/mailgate.toml. */
export const FAST_ARGON2 = { memoryKib: 1024, iterations: 1, parallelism: 1 } as const;

export interface TestStore {
  store: SqliteRepositories;
  dir: string;
  options: StoreOptions;
  /** The Store interface (what the rest of mailgate sees) over the same connection as `store`. */
  readonly api: Store;
  /** Opens a second, independent connection to the same files (another process in miniature). */
  reopen(overrides?: Partial<StoreOptions>): SqliteRepositories;
  cleanup(): Promise<void>;
}

export async function makeTestStore(overrides: Partial<StoreOptions> = {}): Promise<TestStore> {
  const dir = await makeTempDir('store');
  const options: StoreOptions = {
    path: path.join(dir, 'data', 'mailgate.db'),
    keyFile: path.join(dir, 'data', 'mailgate.key'),
    argon2: FAST_ARGON2,
    maxAppPasswords: 25,
    ...overrides,
  };
  const store = SqliteRepositories.open(options);
  const opened: SqliteRepositories[] = [store];
  let api: Store | null = null;
  return {
    store,
    get api() {
      api ??= SqliteStore.over(store, options, silentLogger());
      return api;
    },
    dir,
    options,
    reopen(more = {}) {
      const s = SqliteRepositories.open({ ...options, ...more });
      opened.push(s);
      return s;
    },
    async cleanup() {
      for (const s of opened) s.close();
      await removeTempDir(dir);
    },
  };
}

/** A controllable clock in Unix milliseconds. */
export function manualClock(start = Date.UTC(2026, 10, 25, 12, 0, 0)) {
  let now = start;
  return {
    now: () => now,
    set(ms: number) {
      now = ms;
    },
    advance(ms: number) {
      now += ms;
    },
  };
}

/**
 * Turns two-step verification on for an existing account (enrolment confirmed
 * with the code of `epochMs`, by default now); returns the TOTP secret.
 */
export function enableTotp(store: Pick<SqliteRepositories, 'totp'>, user: string, epochMs = Date.now()): string {
  const { secret } = store.totp.enroll(user);
  store.totp.confirm(user, generateSync({ secret, epoch: Math.floor(epochMs / 1000) }));
  return secret;
}

/** The engines behind the Store interface; the store tests run against each (describe.each). */
export const ENGINES = ['sqlite', 'postgres'] as const;
export type Engine = (typeof ENGINES)[number];

/** What a store test may set, on either engine. */
export interface EngineOverrides {
  now?: Clock;
  /** Share a hasher (its counters tell how many verifications ran). */
  hasher?: PasswordHasher;
  maxAppPasswords?: number;
  keyFile?: string;
  log?: Logger;
}

/** A store behind the Store interface, on either engine, with what tests need to look under it. */
export interface EngineStore {
  engine: Engine;
  /** The store (one process, or one node). */
  readonly api: Store;
  dir: string;
  keyFile: string;
  /** Another store over the same data: another process (SQLite), another node (PostgreSQL). */
  open(overrides?: EngineOverrides): Promise<Store>;
  /** Raw SQL straight on the database (`?` placeholders on both engines): the rows, if it returns any. SQLite: on the store's own connection. */
  rows<T = Record<string, unknown>>(sql: string, params?: unknown[]): Promise<T[]>;
  /** Makes every later audit insert of `event` fail inside its transaction (as a full disk would); returns the undo. */
  failAuditOf(event: string | null): Promise<() => Promise<void>>;
  /** PostgreSQL only: the server and this store's database URL. */
  postgres?: { server: PostgresHandle; url: string };
  cleanup(): Promise<void>;
}

let sharedPostgres: Promise<PostgresHandle> | null = null;

/**
 * Registers what a describe over `engine` needs: for PostgreSQL, one server
 * for the test file, started at the first test that needs it, stopped after
 * the file.
 */
export function useEngine(engine: Engine): void {
  if (engine !== 'postgres') return;
  afterAll(async () => {
    const server = sharedPostgres;
    sharedPostgres = null;
    if (server) await (await server).stop();
  });
}

/** The test file's PostgreSQL server (see useEngine). */
export function postgresServer(): Promise<PostgresHandle> {
  sharedPostgres ??= startPostgres();
  return sharedPostgres;
}

export async function makeEngineStore(engine: Engine, overrides: EngineOverrides = {}): Promise<EngineStore> {
  return engine === 'sqlite' ? sqliteEngineStore(overrides) : postgresEngineStore(overrides);
}

async function sqliteEngineStore(overrides: EngineOverrides): Promise<EngineStore> {
  const { log, ...options } = overrides;
  const t = await makeTestStore(options);
  const stores: Store[] = [];
  const api = SqliteStore.over(t.store, t.options, log ?? silentLogger());
  return {
    engine: 'sqlite',
    api,
    dir: t.dir,
    keyFile: t.options.keyFile,
    async open(more = {}) {
      const { log: otherLog, ...rest } = more;
      const store = SqliteStore.open({ ...t.options, ...rest }, { log: otherLog ?? silentLogger() });
      stores.push(store);
      return store;
    },
    rows: async <T>(sql: string, params: unknown[] = []) => {
      const statement = t.store.db.prepare(sql);
      if (statement.reader) return statement.all(...params) as T[];
      statement.run(...params);
      return [];
    },
    async failAuditOf(event) {
      const when = event === null ? '' : `WHEN NEW.event = '${event}'`;
      t.store.db.exec(`CREATE TEMP TRIGGER fail_audit BEFORE INSERT ON audit ${when} BEGIN SELECT RAISE(ABORT, 'audit refused'); END`);
      return async () => void t.store.db.exec('DROP TRIGGER fail_audit');
    },
    async cleanup() {
      for (const store of stores) await store.close();
      await api.close();
      await t.cleanup();
    },
  };
}

async function postgresEngineStore(overrides: EngineOverrides): Promise<EngineStore> {
  const server = await postgresServer();
  const url = await server.createDatabase();
  const database = databaseOf(url);
  const dir = await makeTempDir('pgstore');
  const base: PgStoreOptions = { url, poolSize: 4, keyFile: path.join(dir, 'mailgate.key'), argon2: FAST_ARGON2, maxAppPasswords: 25 };
  const stores: Store[] = [];
  const open = async (more: EngineOverrides = {}) => {
    const { log, ...rest } = { ...overrides, ...more };
    const store = await PostgresStore.open({ ...base, ...rest }, { log: log ?? silentLogger(), listen: true });
    stores.push(store);
    return store;
  };
  const api = await open();
  return {
    engine: 'postgres',
    api,
    dir,
    keyFile: overrides.keyFile ?? base.keyFile,
    open,
    rows: <T>(sql: string, params: unknown[] = []) => {
      let n = 0;
      return server.admin(database, sql.replace(/\?/g, () => `$${++n}`), params) as Promise<T[]>;
    },
    async failAuditOf(event) {
      const when = event === null ? 'true' : `NEW.event = '${event}'`;
      await server.admin(
        database,
        `CREATE FUNCTION fail_audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF ${when} THEN RAISE EXCEPTION 'audit refused'; END IF; RETURN NEW; END $$;
         CREATE TRIGGER fail_audit BEFORE INSERT ON audit FOR EACH ROW EXECUTE FUNCTION fail_audit();`,
      );
      return async () => void (await server.admin(database, 'DROP TRIGGER fail_audit ON audit; DROP FUNCTION fail_audit()'));
    },
    postgres: { server, url },
    async cleanup() {
      for (const store of stores) await store.close();
      await removeTempDir(dir);
    },
  };
}

/** Turns two-step verification on through the Store interface; returns the TOTP secret. */
export async function enableTotpVia(store: Store, user: string, epochMs = Date.now()): Promise<string> {
  const { secret } = await store.totp.enroll(user);
  await store.totp.confirm(user, generateSync({ secret, epoch: Math.floor(epochMs / 1000) }));
  return secret;
}
