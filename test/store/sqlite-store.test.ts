/**
 * SqliteStore's own part (SQLite only: a lock held by another process);
 * what every engine does behind the Store interface is in
 * store-interface.test.ts.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createLogger } from '../../src/log/logger.js';
import { SqliteStore } from '../../src/store/sqlite/sqlite-store.js';
import type { Store } from '../../src/store/store.js';
import { makeTestStore, type TestStore } from '../support/store.js';

let t: TestStore;
let store: Store;
let lines: string[];

beforeEach(async () => {
  t = await makeTestStore({ busyTimeoutMs: 50 });
  lines = [];
  const log = createLogger({ level: 'info', destination: { write: (line: string) => void lines.push(line) } });
  store = SqliteStore.over(t.store, t.options, log);
  t.store.accounts.add('alice');
});
afterEach(async () => {
  await store.close();
  await t.cleanup();
});

const messages = () => lines.map((l) => (JSON.parse(l) as { msg: string }).msg);
const waitRetry = () => new Promise((resolve) => setTimeout(resolve, 1100));

describe('SqliteStore', () => {
  it('a database locked by another process: logins are refused until a probe shows writes work again, with no caller involved', async () => {
    // Catches: callers that must remember to report a failed write (the login path forgot it once),
    // and a store that keeps letting logins in while their failures cannot be counted.
    await store.writable();
    const other = t.reopen();
    other.db.exec('BEGIN EXCLUSIVE');
    other.db.prepare("UPDATE accounts SET created_at = created_at WHERE username = 'alice'").run();
    try {
      await expect(store.audit.record('login-failed', { username: 'alice' })).rejects.toThrow(/locked/);
      await expect(store.writable()).rejects.toThrow(/writes to database .* are failing/);
      // Reads still work: a lock is not a broken database.
      expect((await store.accounts.get('alice')).username).toBe('alice');
    } finally {
      other.db.exec('ROLLBACK');
    }
    await waitRetry();
    await store.writable();
    expect(messages()).toContain('database writes are failing; logins are refused until they work again');
    expect(messages()).toContain('the database is usable again');
  });
});
