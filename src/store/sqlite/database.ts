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
import { closeSync, mkdirSync, openSync, statSync } from 'node:fs';
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
    migrate(db, file);
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

function migrate(db: Db, file: string): void {
  const current = db.pragma('user_version', { simple: true }) as number;
  if (current > SCHEMA_VERSION) {
    throw new MailgateError(
      ErrorCodes.DB_NEWER,
      `${file} has schema version ${current}, newer than this mailgate understands (${SCHEMA_VERSION}); upgrade mailgate`,
    );
  }
  const pending = MIGRATIONS.filter((m) => m.version > current);
  if (pending.length === 0) return;
  // IMMEDIATE takes the write lock up front, so two processes opening a new
  // database at once cannot both run the same migration.
  db.transaction(() => {
    const again = db.pragma('user_version', { simple: true }) as number;
    for (const migration of MIGRATIONS.filter((m) => m.version > again)) {
      db.exec(migration.sql);
      db.pragma(`user_version = ${migration.version}`);
    }
  }).immediate();
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
