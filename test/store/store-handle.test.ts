import { renameSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createLogger, silentLogger } from '../../src/log/logger.js';
import { StoreHandle } from '../../src/store/sqlite/store-handle.js';
import { outsideCopy, outsideScribble, outsideTruncate, outsideWrite, posixLocksOf, SQLITE_SHARED_LOCK } from '../support/outside.js';
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
    // Copied by another process: reading the live file from this one would drop its locks.
    outsideCopy(t.options.path, `${t.options.path}.bak`);
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

  it('notices a database overwritten in place with garbage, or truncated, and recovers when the copy is written back over it', async () => {
    // Catches: in-place damage (same inode, so stat identity cannot see it) served from the page
    // cache, and an empty file migrated into an empty store.
    const db = t.options.path;
    outsideCopy(db, `${db}.bak`);
    outsideScribble(db, statSync(db).size);
    expect(() => handle.get()).toThrow(/unavailable/);
    await waitRetry();
    expect(() => handle.get()).toThrow(/unavailable/);
    // Restored the way `cp backup live` restores: written in place.
    outsideCopy(`${db}.bak`, db);
    await waitRetry();
    expect(handle.get().accounts.find('alice')).not.toBeNull();

    outsideTruncate(db);
    expect(() => handle.get()).toThrow(/unavailable/);
    await waitRetry();
    expect(() => handle.get()).toThrow(/unavailable/);
    expect(statSync(db).size).toBe(0);
    outsideCopy(`${db}.bak`, db);
    await waitRetry();
    expect(handle.get().accounts.find('alice')).not.toBeNull();
  });

  it('looks at the file without dropping the locks SQLite holds on it', () => {
    // Catches: the handle opening and closing the database file itself to look at it. Closing any
    // descriptor of a file drops every POSIX lock the process holds on it; the next outside
    // reader to close would take itself for the last connection and delete the WAL under us.
    const store = handle.get();
    expect(posixLocksOf(process.pid, t.options.path)).toContainEqual(SQLITE_SHARED_LOCK);
    // A write and a checkpoint move the file's size and time: the handle looks at it again.
    const before = statSync(t.options.path);
    store.accounts.add('bob');
    store.db.pragma('wal_checkpoint(PASSIVE)');
    const after = statSync(t.options.path);
    expect(`${after.size}:${after.mtimeMs}`).not.toBe(`${before.size}:${before.mtimeMs}`);
    expect(handle.get()).toBe(store);
    expect(posixLocksOf(process.pid, t.options.path)).toContainEqual(SQLITE_SHARED_LOCK);
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

describe('StoreHandle when writes fail', () => {
  /** A handle over its own store with a short busy timeout, logging into `lines`. */
  async function handleWithLog(): Promise<{ h: StoreHandle; lines: string[] }> {
    const lines: string[] = [];
    const log = createLogger({ level: 'info', destination: { write: (line: string) => void lines.push(line) } });
    const own = t.reopen({ busyTimeoutMs: 50 });
    return { h: new StoreHandle({ ...t.options, busyTimeoutMs: 50 }, log, own), lines };
  }
  const messages = (lines: string[], msg: string) => lines.map((l) => JSON.parse(l) as { msg: string; err?: string }).filter((l) => l.msg === msg);
  /** A login's bookkeeping write, as the session does it: a failure is reported to the handle. */
  function bookkeep(h: StoreHandle): void {
    try {
      h.get().audit.record('login-ok', { username: 'alice' });
    } catch (err) {
      h.writeFailed(err);
      throw err;
    }
  }

  it('locked by another process: refuses logins until a write probe gets through, keeps the connection, logs once', async () => {
    // Catches: logins going on (reads still work in WAL mode) while failures cannot be counted,
    // a lock mistaken for a broken file, and a handle that never notices the lock is gone.
    const { h, lines } = await handleWithLog();
    const store = h.writable();
    const other = t.reopen();
    other.db.exec('BEGIN EXCLUSIVE');
    other.db.prepare("UPDATE accounts SET created_at = created_at WHERE username = 'alice'").run();
    try {
      expect(() => bookkeep(h)).toThrow(/locked/);
      // Refused at once, without touching the database, until the retry interval is over.
      expect(() => h.writable()).toThrow(/writes to database .* are failing; logins are refused/);
      // Reads still work, from the same connection: a lock is not a broken database.
      expect(h.get()).toBe(store);
      expect(h.get().accounts.find('alice')).not.toBeNull();
      await waitRetry();
      // The probe still cannot get the lock.
      expect(() => h.writable()).toThrow(/database is locked/);
      expect(h.get()).toBe(store);
    } finally {
      other.db.exec('ROLLBACK');
    }
    // Still inside the interval the last probe started: refused without a probe.
    expect(() => h.writable()).toThrow(/are failing/);
    await waitRetry();
    expect(h.writable()).toBe(store);
    expect(messages(lines, 'database writes are failing; logins are refused until they work again')).toEqual([expect.objectContaining({ err: 'database is locked' })]);
    expect(messages(lines, 'the database is usable again')).toHaveLength(1);
    expect(messages(lines, 'the database is unusable; logins fail until it recovers')).toEqual([]);
    h.close();
  });

  it('read-only: drops the connection, refuses logins while the reopened one is read-only too, recovers once writes work', async () => {
    // Catches: SQLITE_READONLY taken for a passing problem (a connection SQLite opened read-only
    // never becomes writable; only a fresh open does), and logins let in on a read-only store.
    // query_only makes SQLite refuse every write on that connection with SQLITE_READONLY, the
    // same error a database opened read-only gives; unlike file permissions it also holds for root.
    const { h, lines } = await handleWithLog();
    const first = h.writable();
    first.db.pragma('query_only = ON');
    expect(() => bookkeep(h)).toThrow(/readonly/);
    expect(() => h.writable()).toThrow(/are failing/);
    // A fresh connection; make it read-only as well, as a read-only file would open.
    const second = h.get();
    expect(second).not.toBe(first);
    second.db.pragma('query_only = ON');
    await waitRetry();
    expect(() => h.writable()).toThrow(/readonly/);
    await waitRetry();
    // The connection the probe failed on was dropped; the next one is writable.
    const third = h.writable();
    expect(third).not.toBe(second);
    third.audit.record('login-ok', { username: 'alice' });
    expect(messages(lines, 'database writes are failing; logins are refused until they work again')).toHaveLength(1);
    expect(messages(lines, 'the database is usable again')).toHaveLength(1);
    h.close();
  });

  it('costs nothing while writes work: no probe at all', async () => {
    // Catches: a write on every login's hot path.
    const { h } = await handleWithLog();
    const store = h.writable();
    store.db.pragma('query_only = ON');
    // Only a failed write tells the handle; until then it does not go looking.
    expect(h.writable()).toBe(store);
    store.db.pragma('query_only = OFF');
    h.close();
  });

  it('ignores write failures once closed (shutdown)', async () => {
    const { h, lines } = await handleWithLog();
    h.close();
    h.writeFailed(new Error('the store is closed (shutting down)'));
    expect(lines).toEqual([]);
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
    outsideWrite(t2.options.path, '');
    expect(() => new StoreHandle(t2.options, silentLogger())).toThrow(/exists but is not an SQLite database \(empty\)/);
    outsideWrite(t2.options.path, 'not a database at all, just text');
    expect(() => new StoreHandle(t2.options, silentLogger())).toThrow(/exists but is not an SQLite database \(damaged\)/);
    await t2.cleanup();
  });

  it('refuses to be used once closed (a login still in flight at shutdown does not reopen it)', () => {
    handle.close();
    expect(() => handle.get()).toThrow(/closed/);
  });
});
