import { mkdirSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { applyMigrations, askSqlite, openDatabase, openExistingReadOnly, type SchemaUpgrade } from '../../src/store/sqlite/database.js';
import { MIGRATIONS, SCHEMA_VERSION } from '../../src/store/sqlite/migrations.js';
import { isMailgateError, ErrorCodes } from '../../src/errors.js';
import { outsideWrite, posixLocksOf, SQLITE_SHARED_LOCK } from '../support/outside.js';
import { makeTempDir, removeTempDir } from '../support/tmp.js';

let dirs: string[] = [];
afterEach(async () => {
  for (const d of dirs) await removeTempDir(d);
  dirs = [];
});

async function tempDb(): Promise<string> {
  const dir = await makeTempDir('db');
  dirs.push(dir);
  return path.join(dir, 'nested', 'folder', 'mailgate.db');
}

describe('openDatabase', () => {
  it('creates the folder and a 0600 file, in WAL mode with foreign keys on', async () => {
    const file = await tempDb();
    const db = openDatabase(file);
    try {
      expect(statSync(file).mode & 0o777).toBe(0o600);
      expect(statSync(path.dirname(file)).mode & 0o777).toBe(0o700);
      expect(db.pragma('journal_mode', { simple: true })).toBe('wal');
      expect(db.pragma('foreign_keys', { simple: true })).toBe(1);
      expect(db.pragma('user_version', { simple: true })).toBe(SCHEMA_VERSION);
    } finally {
      db.close();
    }
  });

  it('applies every migration once and is idempotent on reopen', async () => {
    const file = await tempDb();
    openDatabase(file).close();
    const db = openDatabase(file);
    try {
      const tables = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").all() as { name: string }[];
      expect(tables.map((t) => t.name)).toEqual(expect.arrayContaining(['accounts', 'app_passwords', 'audit']));
      expect(MIGRATIONS.map((m) => m.version)).toEqual(MIGRATIONS.map((_, i) => i + 1));
    } finally {
      db.close();
    }
  });

  it('upgrades an older database (when asked to) after a 0600 backup beside it, at the old version, with its data', async () => {
    // Catches: an upgrade without a copy to go back to, a copy others can read, a copy taken after
    // the migration (at the new version), or one that needs its -wal to open.
    const file = await tempDb();
    mkdirSync(path.dirname(file), { recursive: true });
    // A database as the first release left it: schema 1, with an account, in WAL mode with a live WAL.
    const raw = new Database(file);
    raw.pragma('journal_mode = WAL');
    raw.transaction(() => applyMigrations(raw, 1))();
    raw.prepare("INSERT INTO accounts (username, created_at) VALUES ('alice', 1)").run();
    const upgrades: SchemaUpgrade[] = [];
    const db = openDatabase(file, { upgrade: true, onUpgrade: (u) => upgrades.push(u) });
    raw.close();
    try {
      expect(db.pragma('user_version', { simple: true })).toBe(SCHEMA_VERSION);
      expect(db.prepare('SELECT username FROM accounts').all()).toEqual([{ username: 'alice' }]);
      for (const migration of MIGRATIONS.slice(1)) {
        const created = /CREATE TABLE (\w+)/.exec(migration.sql)?.[1];
        if (created) expect(db.prepare("SELECT name FROM sqlite_master WHERE name = ?").get(created)).toBeTruthy();
      }
    } finally {
      db.close();
    }
    expect(upgrades).toHaveLength(1);
    const { backup } = upgrades[0]!;
    expect(upgrades[0]).toMatchObject({ from: 1, to: SCHEMA_VERSION });
    expect(path.dirname(backup)).toBe(path.dirname(file));
    expect(path.basename(backup)).toMatch(/^mailgate\.db\.bak-v1-\d{8}T\d{6}Z$/);
    expect(statSync(backup).mode & 0o777).toBe(0o600);
    // One file: nothing beside it, and it opens read-only at the old version with the data.
    expect(readdirSync(path.dirname(file)).filter((n) => n.startsWith(path.basename(backup)))).toEqual([path.basename(backup)]);
    const old = new Database(backup, { readonly: true, fileMustExist: true });
    try {
      expect(old.pragma('user_version', { simple: true })).toBe(1);
      expect(old.pragma('journal_mode', { simple: true })).toBe('delete');
      expect(old.prepare('SELECT username FROM accounts').all()).toEqual([{ username: 'alice' }]);
      expect(old.prepare("SELECT name FROM sqlite_master WHERE name = 'penalties'").get()).toBeUndefined();
    } finally {
      old.close();
    }
    // Upgraded once: the next open changes nothing and writes no second copy.
    openDatabase(file, { upgrade: true, onUpgrade: (u) => upgrades.push(u) }).close();
    expect(upgrades).toHaveLength(1);
  });

  it('refuses an older database unless asked to upgrade it, in one line naming the file, the versions and what to do', async () => {
    // Catches: a CLI of a new version changing the schema under a gateway still running the old one.
    const file = await tempDb();
    mkdirSync(path.dirname(file), { recursive: true });
    const raw = new Database(file);
    raw.transaction(() => applyMigrations(raw, SCHEMA_VERSION - 1))();
    raw.close();
    let error: unknown;
    try {
      openDatabase(file);
    } catch (err) {
      error = err;
    }
    expect(isMailgateError(error, ErrorCodes.DB_OLDER)).toBe(true);
    expect((error as Error).message).toBe(
      `${file} has schema version ${SCHEMA_VERSION - 1}, older than this mailgate's (${SCHEMA_VERSION}): restart the gateway (mailgate serve) with this version, which upgrades it after writing a backup beside it, then run this again`,
    );
    const untouched = new Database(file, { readonly: true });
    expect(untouched.pragma('user_version', { simple: true })).toBe(SCHEMA_VERSION - 1);
    untouched.close();
    expect(readdirSync(path.dirname(file)).filter((n) => n.includes('.bak-'))).toEqual([]);
  });

  it('refuses a database from a newer mailgate in one line: the file, both versions, what to do, and the copy to go back to', async () => {
    const file = await tempDb();
    openDatabase(file).close();
    const raw = new Database(file);
    raw.pragma(`user_version = ${SCHEMA_VERSION + 1}`);
    raw.close();
    const refusal = (): Error => {
      try {
        openDatabase(file);
      } catch (err) {
        expect(isMailgateError(err, ErrorCodes.DB_NEWER)).toBe(true);
        return err as Error;
      }
      throw new Error('opened');
    };
    expect(refusal().message).toBe(
      `${file} has schema version ${SCHEMA_VERSION + 1}, newer than this mailgate understands (${SCHEMA_VERSION}): a newer mailgate upgraded it; run that version again`,
    );
    // The copies an upgrade left: the newest one this version can open is named (not one of a newer schema).
    for (const name of [`bak-v${SCHEMA_VERSION - 1}-20260101T000000Z`, `bak-v${SCHEMA_VERSION}-20260102T000000Z`, `bak-v${SCHEMA_VERSION}-20260101T000000Z`, `bak-v${SCHEMA_VERSION + 1}-20270101T000000Z`]) {
      writeFileSync(`${file}.${name}`, '');
    }
    expect(refusal().message).toBe(
      `${file} has schema version ${SCHEMA_VERSION + 1}, newer than this mailgate understands (${SCHEMA_VERSION}): a newer mailgate upgraded it; run that version again, or restore ${file}.bak-v${SCHEMA_VERSION}-20260102T000000Z, the copy that upgrade left (later changes are lost)`,
    );
  });

  it('reports a corrupt file as unavailable', async () => {
    const file = await tempDb();
    openDatabase(file).close();
    outsideWrite(file, Buffer.alloc(8192, 0x41));
    expect(() => openDatabase(file)).toThrowError(/unavailable/);
  });

  it('opening an existing database again keeps the locks of the connections already open', async () => {
    // Catches: opening (to create) a database file that exists: closing that descriptor drops
    // every POSIX lock the process holds on the file, the gateway's connection's included.
    const file = await tempDb();
    const first = openDatabase(file);
    try {
      expect(posixLocksOf(process.pid, file)).toContainEqual(SQLITE_SHARED_LOCK);
      openDatabase(file).close();
      expect(posixLocksOf(process.pid, file)).toContainEqual(SQLITE_SHARED_LOCK);
    } finally {
      first.close();
    }
  });

  it('with mustExist, refuses a missing file and an empty one instead of making a new store of it', async () => {
    // Catches: a truncated store migrated into an empty one (every account gone, passthrough deciding).
    const file = await tempDb();
    expect(() => openDatabase(file, { mustExist: true })).toThrowError(/unavailable/);
    expect(() => statSync(file)).toThrow();
    openDatabase(file).close();
    outsideWrite(file, '');
    expect(() => openDatabase(file, { mustExist: true })).toThrowError(/empty or not a mailgate store/);
    expect(statSync(file).size).toBe(0);
  });
});

describe('asking SQLite about a file', () => {
  it('tells a database from garbage and from an unreadable or missing file, keeping the locks already held', async () => {
    // Catches: garbage taken for a database (or the reverse), and a look that drops the locks.
    const file = await tempDb();
    const db = openDatabase(file);
    try {
      expect(askSqlite(file)).toBe('database');
      expect(posixLocksOf(process.pid, file)).toContainEqual(SQLITE_SHARED_LOCK);
    } finally {
      db.close();
    }
    outsideWrite(file, Buffer.alloc(8192, 0x41));
    expect(askSqlite(file)).toBe('not-a-database');
    expect(askSqlite(`${file}.missing`)).toBe('unknown');
  });
});

describe('openExistingReadOnly', () => {
  it('opens an existing store read-only, and refuses a missing or empty file without creating anything', async () => {
    const file = await tempDb();
    expect(() => openExistingReadOnly(file)).toThrowError(/^database .* does not exist$/);
    expect(() => statSync(file)).toThrow();
    openDatabase(file).close();
    const db = openExistingReadOnly(file);
    try {
      expect(db.readonly).toBe(true);
      expect(db.pragma('user_version', { simple: true })).toBe(SCHEMA_VERSION);
    } finally {
      db.close();
    }
    outsideWrite(file, '');
    expect(() => openExistingReadOnly(file)).toThrowError(/^database .* is empty$/);
  });
});
