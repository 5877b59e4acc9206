/**
 * The administrator's ways to read the store while the gateway runs: an
 * online backup and an integrity check, both through SQLite.
 *
 * Copying the live file (cp, rsync, a snapshot of the folder) is not a
 * backup of a WAL database: the latest commits sit in the -wal file, and a
 * copy taken during a write or checkpoint can be torn. SQLite's backup API
 * copies a consistent snapshot instead, without stopping the gateway.
 */
import { closeSync, fsyncSync, openSync, realpathSync, renameSync, rmSync, statSync, type Stats } from 'node:fs';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import Database from 'better-sqlite3';
import { ErrorCodes, errorMessage, MailgateError } from '../../errors.js';
import { createPrivate, openExistingReadOnly, unavailable } from './database.js';
import type { BackupResult, CheckResult } from '../types.js';

/**
 * Pages per backup step: all of them. One step is one read transaction, so
 * the copy is one snapshot however busy the gateway is; in smaller steps,
 * every commit by another process restarts the copy, and a busy gateway
 * could keep it from ever finishing.
 */
const ALL_PAGES = 0x7fffffff;

/** The files SQLite keeps beside a database: writing any of them corrupts it. */
const COMPANIONS = ['', '-wal', '-shm', '-journal'];

/**
 * Writes a consistent copy of the database `source` to `target`, mode 0600:
 * first into a new file beside it, renamed over `target` once the copy is
 * complete and checked, so `target` is never a half-written copy. The source
 * must exist; it is opened read-only.
 */
export async function backupDatabase(source: string, target: string, options: { force?: boolean; busyTimeoutMs?: number } = {}): Promise<BackupResult> {
  const file = path.resolve(target);
  refuseTarget(source, file, options.force ?? false);
  const db = openExistingReadOnly(source, options.busyTimeoutMs);
  const temp = path.join(path.dirname(file), `.${path.basename(file)}.${randomBytes(6).toString('hex')}.tmp`);
  try {
    createPrivate(temp);
    await db.backup(temp, { progress: () => ALL_PAGES });
    const pages = checkCopy(temp);
    renameSync(temp, file);
    syncFolder(path.dirname(file));
    return { file, bytes: statSync(file).size, pages };
  } catch (err) {
    for (const suffix of COMPANIONS) rmSync(`${temp}${suffix}`, { force: true });
    if (err instanceof MailgateError) throw err;
    throw new MailgateError(ErrorCodes.DB_UNAVAILABLE, `backup of ${source} to ${file} failed: ${errorMessage(err)}`, { cause: err });
  } finally {
    db.close();
  }
}

/** The schema version (PRAGMA user_version) of an existing database, opened read-only: nothing is created or migrated. */
export function databaseSchemaVersion(file: string, busyTimeoutMs?: number): number {
  const db = openExistingReadOnly(file, busyTimeoutMs);
  try {
    return db.pragma('user_version', { simple: true }) as number;
  } catch (err) {
    throw unavailable(file, err);
  } finally {
    db.close();
  }
}

/** PRAGMA integrity_check and foreign_key_check on an existing database, opened read-only. */
export function checkDatabase(file: string, busyTimeoutMs?: number): CheckResult {
  const db = openExistingReadOnly(file, busyTimeoutMs);
  try {
    const schemaVersion = db.pragma('user_version', { simple: true }) as number;
    const integrity = (db.pragma('integrity_check') as Array<{ integrity_check: string }>).map((r) => r.integrity_check);
    const foreignKeys = db.pragma('foreign_key_check') as CheckResult['foreignKeys'];
    const ok = integrity.length === 1 && integrity[0] === 'ok' && foreignKeys.length === 0;
    return { ok, schemaVersion, integrity, foreignKeys };
  } catch (err) {
    // Damage bad enough that SQLite cannot even run the checks is their finding, not a failure to check.
    const code = (err as { code?: unknown }).code;
    if (typeof code === 'string' && /^SQLITE_(NOTADB|CORRUPT)/.test(code)) {
      return { ok: false, schemaVersion: null, integrity: [errorMessage(err)], foreignKeys: [] };
    }
    throw unavailable(file, err);
  } finally {
    db.close();
  }
}

/** Refuses the live database and its companions (by path and by inode), folders, and an existing file without `force`. */
function refuseTarget(source: string, file: string, force: boolean): void {
  const folder = statOrNull(path.dirname(file));
  if (!folder?.isDirectory()) throw refused(`the folder ${path.dirname(file)} does not exist`);
  const existing = statOrNull(file);
  const canonicalTarget = canonical(file);
  for (const suffix of COMPANIONS) {
    const live = `${source}${suffix}`;
    const liveStat = statOrNull(live);
    const sameInode = existing !== null && liveStat !== null && existing.dev === liveStat.dev && existing.ino === liveStat.ino;
    if (sameInode || canonical(live) === canonicalTarget) {
      throw refused(`${file} is the live database${suffix ? ` (its ${suffix.slice(1)} file)` : ''}; write the backup to another file`);
    }
  }
  if (existing?.isDirectory()) throw refused(`${file} is a folder; name the file to write`);
  if (existing && !force) throw refused(`${file} exists; use --force to replace it`);
}

/** The path with its folder's symlinks resolved (and its own, when it exists). */
function canonical(file: string): string {
  try {
    return realpathSync(file);
  } catch {
    try {
      return path.join(realpathSync(path.dirname(file)), path.basename(file));
    } catch {
      return path.resolve(file);
    }
  }
}

/**
 * Opens the finished copy on its own (no other connection has it) and runs
 * quick_check: a copy that does not open and check is no backup. Returns its
 * page count.
 */
function checkCopy(file: string): number {
  const copy = new Database(file, { fileMustExist: true });
  try {
    // One self-contained file: a WAL-mode copy cannot be opened read-only
    // without -shm beside it (a read-only backup disk). The gateway turns WAL
    // back on when a restored copy is opened.
    copy.pragma('journal_mode = DELETE');
    const result = copy.pragma('quick_check', { simple: true });
    if (result !== 'ok') throw new Error(`the copy does not check: ${String(result)}`);
    return copy.pragma('page_count', { simple: true }) as number;
  } finally {
    copy.close();
  }
}

/** Makes the rename durable: the folder's entry is what a crash would otherwise lose. */
function syncFolder(folder: string): void {
  const fd = openSync(folder, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function statOrNull(file: string): Stats | null {
  try {
    return statSync(file);
  } catch {
    return null;
  }
}

function refused(message: string): MailgateError {
  return new MailgateError(ErrorCodes.BACKUP_TARGET, message);
}
