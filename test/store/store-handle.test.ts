import { copyFileSync, renameSync, writeFileSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/log/logger.js';
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
