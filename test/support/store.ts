/** A Store in a temporary folder, with cheap argon2 settings so tests stay fast. */
import path from 'node:path';
import { generateSync } from 'otplib';
import { Store, type StoreOptions } from '../../src/store/store.js';
import { makeTempDir, removeTempDir } from './tmp.js';

/** The lowest argon2id cost node-argon2 accepts; production defaults are in config/mailgate.toml. */
export const FAST_ARGON2 = { memoryKib: 1024, iterations: 1, parallelism: 1 } as const;

export interface TestStore {
  store: Store;
  dir: string;
  options: StoreOptions;
  /** Opens a second, independent connection to the same files (another process in miniature). */
  reopen(overrides?: Partial<StoreOptions>): Store;
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
  const store = Store.open(options);
  const opened: Store[] = [store];
  return {
    store,
    dir,
    options,
    reopen(more = {}) {
      const s = Store.open({ ...options, ...more });
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
export function enableTotp(store: Pick<Store, 'totp'>, user: string, epochMs = Date.now()): string {
  const { secret } = store.totp.enroll(user);
  store.totp.confirm(user, generateSync({ secret, epoch: Math.floor(epochMs / 1000) }));
  return secret;
}
