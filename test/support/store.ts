/** A SqliteRepositories in a temporary folder, with cheap argon2 settings so tests stay fast. */
import path from 'node:path';
import { generateSync } from 'otplib';
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
