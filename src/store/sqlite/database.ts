/**
 * Opening the SQLite database: file permissions, pragmas and migrations.
 *
 * The gateway and the CLI open the same file from different processes, so WAL
 * mode (readers never block the writer) and a busy timeout matter more than
 * raw speed here.
 *
 * Nothing here opens an existing database file, or its -wal or -shm, other
 * than through SQLite. On POSIX, closing any descriptor of a file releases
 * every advisory lock the process holds on it, SQLite's included ("How To
 * Corrupt An SQLite Database File", 2.2): the next outside client to close
 * the database would take itself for the last one and delete the WAL under
 * the gateway. SQLite's own connections share their locks within a process,
 * so asking SQLite (a throwaway connection) is safe; fs.open is not.
 */
import { closeSync, fchmodSync, fsyncSync, mkdirSync, openSync, readdirSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { ErrorCodes, errorMessage, MailgateError } from '../../errors.js';
import { MIGRATIONS, SCHEMA_VERSION } from './migrations.js';

export type Db = Database.Database;

export interface OpenOptions {
  busyTimeoutMs?: number;
  /**
   * Refuse to create a missing file, or to migrate an empty one into a new
   * store: a running gateway must not start over with an empty store.
   */
  mustExist?: boolean;
  /** false: no automatic WAL checkpoints on this connection (the gateway's checkpointer does them). */
  autoCheckpoint?: boolean;
  /**
   * An existing store at an older schema version: true upgrades it, after
   * writing a backup beside it (the gateway at start); false refuses it with
   * a line saying how to upgrade (the CLI: an upgrade under a gateway that is
   * still the old version would leave it on a schema it does not know).
   * A new, empty database is always brought to the current version.
   */
  upgrade?: boolean;
  /** Told about an upgrade once it is committed (the gateway logs where the backup is). */
  onUpgrade?: (upgrade: SchemaUpgrade) => void;
}

/** An upgrade that opening the database did: from which version, to which, and where the copy from before is. */
export interface SchemaUpgrade {
  from: number;
  to: number;
  backup: string;
}

export function openDatabase(file: string, options: OpenOptions = {}): Db {
  if (!options.mustExist) ensureFile(file);
  let db: Db;
  try {
    db = new Database(file, { timeout: options.busyTimeoutMs ?? 5000, fileMustExist: options.mustExist ?? false });
  } catch (err) {
    throw unavailable(file, err);
  }
  try {
    // SQLite takes an empty file (truncated after the caller looked at it) for
    // a new database; checked before journal_mode, which would write to it.
    if (options.mustExist && db.pragma('user_version', { simple: true }) === 0) {
      throw new Error('the file is empty or not a mailgate store');
    }
    db.pragma('journal_mode = WAL');
    db.pragma('foreign_keys = ON');
    // NORMAL is durable across application crashes in WAL mode; only a power
    // loss can drop the last commits, which is an acceptable trade for a login path.
    db.pragma('synchronous = NORMAL');
    if (options.autoCheckpoint === false) db.pragma('wal_autocheckpoint = 0');
    const upgraded = migrate(db, file, options.upgrade ?? false);
    if (upgraded) options.onUpgrade?.(upgraded);
  } catch (err) {
    db.close();
    if (err instanceof MailgateError) throw err;
    throw unavailable(file, err);
  }
  return db;
}

/** Creates a missing database file; never opens an existing one (see the top of this file). */
function ensureFile(file: string): void {
  try {
    mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    // Create it ourselves so that it is 0600 from the first byte; SQLite gives
    // the -wal and -shm files the same mode.
    closeSync(openSync(file, 'wx', 0o600));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return;
    throw unavailable(file, err);
  }
}

/**
 * The smallest file that can hold an SQLite database: one page of the
 * smallest page size. Anything shorter was truncated (or never was one).
 */
export const MIN_DATABASE_BYTES = 512;

export type Verdict = 'database' | 'not-a-database' | 'unknown';

/** SQLite's answers for a file that is not a database, or a damaged one. */
const GARBAGE_CODES = /^SQLITE_(NOTADB|CORRUPT)/;

/**
 * Whether the file at `file` is an SQLite database, as SQLite itself sees it:
 * a throwaway read-only connection parses the header and the schema. Safe in
 * a process that holds connections to the same file, unlike reading it (see
 * the top of this file). 'unknown' when SQLite could not tell (busy, out of
 * file descriptors, gone meanwhile): not a verdict on the content.
 */
export function askSqlite(file: string): Verdict {
  let db: Db | null = null;
  try {
    db = new Database(file, { readonly: true, fileMustExist: true, timeout: 0 });
    db.prepare('SELECT count(*) FROM sqlite_schema').get();
    return 'database';
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    return typeof code === 'string' && GARBAGE_CODES.test(code) ? 'not-a-database' : 'unknown';
  } finally {
    try {
      db?.close();
    } catch {
      // Closing a connection that failed to read changes nothing on disk.
    }
  }
}

/**
 * An existing database, read-only and exactly as it is, for the
 * administrator's tools (backup, check): nothing is created, migrated or
 * written. A missing or empty file is refused with a message that says so.
 */
export function openExistingReadOnly(file: string, busyTimeoutMs = 5000): Db {
  let size: number;
  try {
    size = statSync(file).size;
  } catch (err) {
    const missing = (err as NodeJS.ErrnoException).code === 'ENOENT';
    throw missing ? new MailgateError(ErrorCodes.DB_UNAVAILABLE, `database ${file} does not exist`) : unavailable(file, err);
  }
  if (size === 0) throw new MailgateError(ErrorCodes.DB_UNAVAILABLE, `database ${file} is empty`);
  try {
    return new Database(file, { readonly: true, fileMustExist: true, timeout: busyTimeoutMs });
  } catch (err) {
    throw unavailable(file, err);
  }
}

/**
 * Brings the schema to SCHEMA_VERSION. A new database (version 0) is simply
 * built; an existing one at an older version is upgraded only when `upgrade`
 * says so, and only after a copy of it as it was has been written beside it.
 * A newer one is refused: its tables may mean things this version does not know.
 */
function migrate(db: Db, file: string, upgrade: boolean): SchemaUpgrade | null {
  const current = db.pragma('user_version', { simple: true }) as number;
  if (current > SCHEMA_VERSION) throw newerSchema(file, current);
  if (current === SCHEMA_VERSION) return null;
  let backup: string | null = null;
  if (current > 0) {
    if (!upgrade) throw olderSchema(file, current);
    backup = writeUpgradeBackup(db, file, current);
  }
  // IMMEDIATE takes the write lock up front, so two processes opening a new
  // database at once cannot both run the same migration.
  db.transaction(() => applyMigrations(db, SCHEMA_VERSION)).immediate();
  return backup === null ? null : { from: current, to: SCHEMA_VERSION, backup };
}

/**
 * Applies the migrations after the database's version, up to `target`, in
 * the caller's transaction. Exported so that tests can build a store as an
 * older mailgate left it (a target below SCHEMA_VERSION).
 */
export function applyMigrations(db: Db, target: number = SCHEMA_VERSION): void {
  const from = db.pragma('user_version', { simple: true }) as number;
  for (const migration of MIGRATIONS.filter((m) => m.version > from && m.version <= target)) {
    db.exec(migration.sql);
    db.pragma(`user_version = ${migration.version}`);
  }
}

/**
 * The copy an upgrade leaves behind: `<file>.bak-v<version>-<UTC time>`,
 * mode 0600, one self-contained file (no WAL), a consistent snapshot. It is
 * written with VACUUM INTO, SQLite's synchronous way to copy a live database
 * (the backup API of the driver is asynchronous, and opening the store is
 * not); the upgrade does not start unless the copy is complete and checks.
 */
function writeUpgradeBackup(db: Db, file: string, version: number): string {
  const target = freeBackupName(file, version);
  try {
    createPrivate(target);
    db.prepare('VACUUM INTO ?').run(target);
    const copy = new Database(target, { fileMustExist: true });
    try {
      copy.pragma('journal_mode = DELETE');
      const check = copy.pragma('quick_check', { simple: true });
      if (check !== 'ok') throw new Error(`the copy does not check: ${String(check)}`);
    } finally {
      copy.close();
    }
    syncFolder(path.dirname(target));
  } catch (err) {
    for (const suffix of ['', '-journal', '-wal', '-shm']) rmSync(`${target}${suffix}`, { force: true });
    throw new MailgateError(
      ErrorCodes.DB_UNAVAILABLE,
      `${file} has schema version ${version} and needs an upgrade to ${SCHEMA_VERSION}, but the backup before it could not be written to ${target}: ${errorMessage(err)}; free space there (or fix its permissions) and start again`,
      { cause: err },
    );
  }
  return target;
}

/** `<file>.bak-v3-20261125T174000Z`, with `-2`, `-3`... if a start in the same second took that name. */
function freeBackupName(file: string, version: number): string {
  const stamp = new Date().toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
  const base = `${file}.bak-v${version}-${stamp}`;
  for (let n = 1; ; n += 1) {
    const name = n === 1 ? base : `${base}-${n}`;
    if (!existsQuietly(name)) return name;
  }
}

/** A new, empty file that is 0600 before SQLite writes a byte to it (whatever the umask). */
export function createPrivate(file: string): void {
  const fd = openSync(file, 'wx', 0o600);
  try {
    fchmodSync(fd, 0o600);
  } finally {
    closeSync(fd);
  }
}

/** Makes a new file's name durable: the folder's entry is what a crash would otherwise lose. */
function syncFolder(folder: string): void {
  const fd = openSync(folder, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function existsQuietly(file: string): boolean {
  try {
    statSync(file);
    return true;
  } catch {
    return false;
  }
}

function newerSchema(file: string, version: number): MailgateError {
  const backup = newestUpgradeBackup(file);
  return new MailgateError(
    ErrorCodes.DB_NEWER,
    `${file} has schema version ${version}, newer than this mailgate understands (${SCHEMA_VERSION}): a newer mailgate upgraded it; run that version again` +
      (backup ? `, or restore ${backup}, the copy that upgrade left (later changes are lost)` : ''),
  );
}

function olderSchema(file: string, version: number): MailgateError {
  return new MailgateError(
    ErrorCodes.DB_OLDER,
    `${file} has schema version ${version}, older than this mailgate's (${SCHEMA_VERSION}): restart the gateway (mailgate serve) with this version, which upgrades it after writing a backup beside it, then run this again`,
  );
}

/** The newest `<file>.bak-vN-*` an upgrade left for a version this mailgate can open, if any. */
function newestUpgradeBackup(file: string): string | null {
  let names: string[];
  try {
    names = readdirSync(path.dirname(file));
  } catch {
    return null;
  }
  const prefix = `${path.basename(file)}.bak-v`;
  const usable = names.filter((name) => name.startsWith(prefix) && Number(/^(\d+)-/.exec(name.slice(prefix.length))?.[1]) <= SCHEMA_VERSION);
  // The UTC stamp sorts as text within a version; the newest copy is of the newest version it was made from.
  usable.sort((a, b) => Number(/^(\d+)/.exec(a.slice(prefix.length))![1]) - Number(/^(\d+)/.exec(b.slice(prefix.length))![1]) || a.localeCompare(b));
  const newest = usable[usable.length - 1];
  return newest === undefined ? null : path.join(path.dirname(file), newest);
}

export function unavailable(file: string, err: unknown): MailgateError {
  const detail = errorMessage(err);
  return new MailgateError(ErrorCodes.DB_UNAVAILABLE, `database ${file} is unavailable: ${detail}`, { cause: err });
}

/** Keep IN (...) lists well under SQLite's variable limit. */
const IN_CHUNK = 500;

/** Runs `sql` ending in "IN" for the distinct `values`, in chunks; all rows. */
export function selectIn<T>(db: Db, sql: string, values: readonly (string | number)[]): T[] {
  const unique = [...new Set(values)];
  const rows: T[] = [];
  for (let i = 0; i < unique.length; i += IN_CHUNK) {
    const chunk = unique.slice(i, i + IN_CHUNK);
    rows.push(...(db.prepare(`${sql} (${chunk.map(() => '?').join(',')})`).all(...chunk) as T[]));
  }
  return rows;
}
