/**
 * Opening the SQLite database: file permissions, pragmas and migrations.
 *
 * The gateway and the CLI open the same file from different processes, so WAL
 * mode (readers never block the writer) and a busy timeout matter more than
 * raw speed here.
 */
import { closeSync, mkdirSync, openSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { ErrorCodes, errorMessage, MailgateError } from '../errors.js';
import { MIGRATIONS, SCHEMA_VERSION } from './migrations.js';

export type Db = Database.Database;

export interface OpenOptions {
  busyTimeoutMs?: number;
  /** Refuse to create a missing file: a running gateway must not start over with an empty store. */
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

function ensureFile(file: string): void {
  try {
    mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    // Create it ourselves so that it is 0600 from the first byte; SQLite gives
    // the -wal and -shm files the same mode.
    closeSync(openSync(file, 'a', 0o600));
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
