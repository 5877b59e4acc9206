import { copyFileSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createLogger, silentLogger } from '../../src/log/logger.js';
import { StoreHandle } from '../../src/store/store-handle.js';
import { makeTestStore, type TestStore } from '../support/store.js';

let t: TestStore;
let handle: StoreHandle;

beforeEach(async () => {
  t = await makeTestStore();
  t.store.accounts.add('alice');
  t.store.db.pragma('wal_checkpoint(TRUNCATE)');
  handle = new StoreHandle(t.options, silentLogger(), t.store);
});
afterEach(async () => {
  handle.close();
  await t.cleanup();
});

const waitRetry = () => new Promise((r) => setTimeout(r, 1100));

describe('StoreHandle', () => {
  it('notices a database moved away, fails until it is back, then recovers by itself', async () => {
    expect(handle.get().accounts.find('alice')).not.toBeNull();
    renameSync(t.options.path, `${t.options.path}.away`);
    expect(() => handle.get()).toThrow(/unavailable/);
    // It does not create an empty database in its place.
    await waitRetry();
    expect(() => handle.get()).toThrow(/unavailable/);
    renameSync(`${t.options.path}.away`, t.options.path);
    await waitRetry();
    expect(handle.get().accounts.find('alice')).not.toBeNull();
  });

  it('notices a database replaced by garbage, and recovers when the good file is put back', async () => {
    copyFileSync(t.options.path, `${t.options.path}.bak`);
    // Replaced the way restores and copies replace files: a new file renamed over the old.
    writeFileSync(`${t.options.path}.tmp`, Buffer.alloc(8192, 0x5a));
    renameSync(`${t.options.path}.tmp`, t.options.path);
    expect(() => handle.get()).toThrow(/unavailable/);
    await waitRetry();
    expect(() => handle.get()).toThrow(/not a database|unavailable/);
    renameSync(`${t.options.path}.bak`, t.options.path);
    await waitRetry();
    expect(handle.get().accounts.find('alice')).not.toBeNull();
  });

  it('drops the connection on a fatal SQLite error and opens a fresh one', async () => {
    const first = handle.get();
    handle.failed(Object.assign(new Error('database disk image is malformed'), { code: 'SQLITE_CORRUPT' }));
    await waitRetry();
    const second = handle.get();
    expect(second).not.toBe(first);
    expect(second.accounts.find('alice')).not.toBeNull();
  });

  it('keeps a busy database: "locked" is not a reason to reopen', () => {
    const store = handle.get();
    handle.failed(Object.assign(new Error('database is locked'), { code: 'SQLITE_BUSY' }));
    expect(handle.get()).toBe(store);
  });
});

describe('StoreHandle at start-up', () => {
  it('creates a missing database, and says so', async () => {
    const t2 = await makeTestStore();
    t2.store.close();
    const fresh = path.join(t2.dir, 'new', 'mailgate.db');
    const lines: string[] = [];
    const log = createLogger({ level: 'info', destination: { write: (line: string) => void lines.push(line) } });
    const h = new StoreHandle({ ...t2.options, path: fresh, keyFile: path.join(t2.dir, 'new', 'mailgate.key') }, log);
    expect(h.get().accounts.list()).toEqual([]);
    expect(lines.join('')).toContain('created a new, empty store');
    h.close();
    await t2.cleanup();
  });

  it('refuses a database file that is empty or not SQLite, instead of migrating it into an empty store', async () => {
    const t2 = await makeTestStore();
    t2.store.close();
    writeFileSync(t2.options.path, '');
    expect(() => new StoreHandle(t2.options, silentLogger())).toThrow(/exists but is not an SQLite database \(empty\)/);
    writeFileSync(t2.options.path, 'not a database at all, just text');
    expect(() => new StoreHandle(t2.options, silentLogger())).toThrow(/exists but is not an SQLite database \(damaged\)/);
    await t2.cleanup();
  });

  it('refuses to be used once closed (a login still in flight at shutdown does not reopen it)', () => {
    handle.close();
    expect(() => handle.get()).toThrow(/closed/);
  });
});
