/**
 * The gateway's way to reach the store, surviving a database that goes bad
 * under it: locked, unreadable, corrupt, moved away or replaced.
 *
 * While the database is unusable every caller gets an error (logins fail
 * closed, as temporarily unavailable); the handle then retries opening it,
 * at most once a second, and the gateway recovers by itself when the file is
 * fine again. It never creates a missing database: an empty store would
 * silently turn every app password away, or worse, fall back to passthrough.
 *
 * A database can also be readable but not writable: locked by another
 * process (WAL readers are never blocked), or read-only. Logins need both: a
 * failure that cannot be counted lets a guesser go on unseen, and a success
 * that cannot be recorded leaves no trace. So once a write fails, `writable()`
 * refuses every login until a cheap write probe, at most once a second, shows
 * that writes work again.
 *
 * It never opens the database file itself to look at it: closing that
 * descriptor would drop every SQLite lock the process holds on the file, and
 * the next outside reader to close would delete the WAL under the gateway
 * (see database.ts). It looks with stat, and asks SQLite.
 */
import { statSync } from 'node:fs';
import { FIXED_LIMITS } from '../../config/limits.js';
import type { Logger } from '../../log/logger.js';
import { ErrorCodes, errorMessage, MailgateError } from '../../errors.js';
import { askSqlite, MIN_DATABASE_BYTES } from './database.js';
import { PasswordHasher } from '../hasher.js';
import { SqliteRepositories, type StoreOptions } from './repositories.js';

/** How often a broken database is tried again (a reopen, a write probe). */
const RETRY_MS = FIXED_LIMITS.store_retry_seconds * 1000;

/**
 * SQLite errors that mean this connection to the file is bad, as opposed to
 * busy. Every SQLITE_READONLY variant is one: a connection SQLite opened
 * read-only (no write permission at the time) stays read-only, and only a
 * fresh open sees the file once it is writable again.
 */
const FATAL_SQLITE_CODES = /^SQLITE_(CORRUPT|NOTADB|IOERR|CANTOPEN|READONLY|FULL)/;

/**
 * Takes the write lock and writes nothing: it fails as a real write would
 * (SQLITE_BUSY while another process holds the lock, SQLITE_READONLY on a
 * read-only database) without adding a byte to the WAL.
 */
const WRITE_PROBE = 'DELETE FROM penalties WHERE 0';

export class StoreHandle {
  private store: SqliteRepositories | null;
  private identity: string | null;
  /** Size and modification time at the last look: when they move, the content is checked again. */
  private stamp: string | null;
  private retryAt = 0;
  private readonly hasher: PasswordHasher;
  private broken = false;
  private closed = false;
  /** While writes fail: when the next write probe may run. Null while writes work. */
  private writeRetryAt: number | null = null;

  private options: StoreOptions;
  /** Counts the connections opened: a reopened one starts its own data_version. */
  generation = 1;

  constructor(
    options: StoreOptions,
    private readonly log: Logger,
    initial?: SqliteRepositories,
  ) {
    this.options = options;
    this.store = initial ?? openAtStart(options, log);
    this.hasher = this.store.hasher;
    this.identity = fileIdentity(options.path);
    this.stamp = fileStamp(options.path);
  }

  /** The open store; throws when the database cannot be used right now. */
  get(): SqliteRepositories {
    if (this.closed) throw new MailgateError(ErrorCodes.DB_UNAVAILABLE, 'the store is closed (shutting down)');
    if (this.store && this.fileGoneOrReplaced()) {
      this.log.error({ path: this.options.path }, 'the database file was removed or replaced; logins fail until it is back');
      this.drop();
    }
    if (!this.store) this.reopen();
    return this.store!;
  }

  /**
   * The open store, for a login: throws while writes to it are failing, so
   * that no password is checked while neither the failure counters nor the
   * success records can be kept. Costs nothing while writes work.
   */
  writable(): SqliteRepositories {
    const store = this.get();
    if (this.writeRetryAt === null) return store;
    const now = Date.now();
    if (now < this.writeRetryAt) throw this.writesFailing();
    this.writeRetryAt = now + RETRY_MS;
    try {
      store.db.prepare(WRITE_PROBE).run();
    } catch (err) {
      // Already logged when the writes first failed: one line per outage, not per probe.
      if (isFatal(err)) this.drop();
      throw this.writesFailing(err);
    }
    this.writeRetryAt = null;
    this.recovered();
    return store;
  }

  /**
   * Runs the write probe now, whatever the last write found: a failure is
   * treated as a failed write (logins refused, one line per outage), a
   * success ends such an outage. Blocks for at most the busy timeout.
   */
  probeWrites(): void {
    const store = this.get();
    try {
      store.db.prepare(WRITE_PROBE).run();
    } catch (err) {
      this.writeFailed(err);
      throw this.writesFailing(err);
    }
    if (this.writeRetryAt !== null) {
      this.writeRetryAt = null;
      this.recovered();
    }
  }

  /** Tells the handle an operation failed; a fatal error closes the connection for a fresh open. */
  failed(err: unknown): void {
    if (isFatal(err) && this.store) {
      this.log.error({ path: this.options.path, err: errorMessage(err) }, 'the database is unusable; logins fail until it recovers');
      this.drop();
    }
  }

  /**
   * Tells the handle a write (a login's bookkeeping) failed: logins are
   * refused until a write probe succeeds. Locked or read-only, the reason is
   * logged once per outage.
   */
  writeFailed(err: unknown): void {
    if (this.closed) return;
    this.broken = true;
    if (this.writeRetryAt === null) {
      this.log.error({ path: this.options.path, err: errorMessage(err) }, 'database writes are failing; logins are refused until they work again');
    }
    this.writeRetryAt = Date.now() + RETRY_MS;
    if (isFatal(err)) this.drop();
  }

  close(): void {
    this.closed = true;
    this.drop();
  }

  /** Turns SQLite's automatic checkpoints back on (the background checkpointer is gone). */
  enableAutoCheckpoint(): void {
    this.options = { ...this.options, autoCheckpoint: true };
    try {
      this.store?.db.pragma('wal_autocheckpoint = 1000');
    } catch {
      // A broken connection is reopened with the new setting anyway.
    }
  }

  private reopen(): void {
    const now = Date.now();
    if (now < this.retryAt) throw new MailgateError(ErrorCodes.DB_UNAVAILABLE, `database ${this.options.path} is unavailable`);
    this.retryAt = now + RETRY_MS;
    try {
      // SQLite would take an empty (truncated) file for a new database and
      // migrate it into an empty store: that is a missing database, not one.
      const st = statOf(this.options.path);
      if (!st) throw new Error('the file is missing');
      if (truncated(st)) throw new Error('the file is not an SQLite database');
      // Neither the database nor the key file is ever created here (nor an empty file migrated).
      this.store = SqliteRepositories.open({ ...this.options, hasher: this.hasher, mustExist: true });
      this.generation += 1;
      // A store that opens but cannot be read (garbage past the header) is not back yet.
      this.store.db.prepare('SELECT COUNT(*) FROM accounts').get();
    } catch (err) {
      this.store?.close();
      this.store = null;
      throw err instanceof MailgateError ? err : new MailgateError(ErrorCodes.DB_UNAVAILABLE, `database ${this.options.path} is unavailable: ${(err as Error).message}`);
    }
    this.identity = fileIdentity(this.options.path);
    this.stamp = fileStamp(this.options.path);
    // Open and readable; if writes were failing, only the next probe can tell.
    if (this.writeRetryAt === null) this.recovered();
  }

  private recovered(): void {
    if (this.broken) this.log.info({ path: this.options.path }, 'the database is usable again');
    this.broken = false;
  }

  private writesFailing(cause?: unknown): MailgateError {
    const detail = cause === undefined ? '' : `: ${errorMessage(cause)}`;
    return new MailgateError(ErrorCodes.DB_UNAVAILABLE, `writes to database ${this.options.path} are failing${detail}; logins are refused until they work again`);
  }

  private drop(): void {
    this.broken = true;
    try {
      this.store?.close();
    } catch {
      // Closing a broken handle may itself fail; it is gone either way.
    }
    this.store = null;
  }

  /**
   * One stat per call: the file is missing or another inode (moved away,
   * replaced), truncated, or it was overwritten in place with something that
   * is not a database. SQLite would notice none of these: it serves reads
   * from its page cache and appends to the WAL, so logins would go on against
   * a file that is gone. Only when size or modification time moved is SQLite
   * asked about the content (a throwaway connection, about 0.2 ms: once per
   * change of the file, i.e. after a checkpoint).
   */
  private fileGoneOrReplaced(): boolean {
    const st = statOf(this.options.path);
    if (!st || `${st.dev}:${st.ino}` !== this.identity || truncated(st)) return true;
    const stamp = `${st.size}:${st.mtimeMs}`;
    if (stamp === this.stamp) return false;
    const verdict = askSqlite(this.options.path);
    // SQLite could not tell (busy, out of descriptors): keep the connection, ask again next time.
    if (verdict === 'unknown') return false;
    this.stamp = stamp;
    return verdict === 'not-a-database';
  }
}

/**
 * The first open, at start-up. A missing database is created (a new
 * installation), and said so; a file that exists but is empty or not a
 * database is refused: migrating it would start the gateway on an empty
 * store, as if every account had vanished.
 */
function openAtStart(options: StoreOptions, log: Logger): SqliteRepositories {
  const st = statOf(options.path);
  if (st && (truncated(st) || askSqlite(options.path) === 'not-a-database')) {
    throw new MailgateError(
      ErrorCodes.DB_UNAVAILABLE,
      `${options.path} exists but is not an SQLite database (${st.size === 0 ? 'empty' : 'damaged'}); restore it, or remove it to start with a new store`,
    );
  }
  const store = SqliteRepositories.open(options);
  if (!st) log.warn({ path: options.path }, 'created a new, empty store');
  return store;
}

function isFatal(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return (typeof code === 'string' && FATAL_SQLITE_CODES.test(code)) || (err instanceof MailgateError && err.code === ErrorCodes.DB_UNAVAILABLE);
}

/** Too short to be a database: truncated, or being written from the start (a restore by cp). */
function truncated(st: { size: number } | null): boolean {
  return st !== null && st.size < MIN_DATABASE_BYTES;
}

function statOf(file: string): { dev: number; ino: number; size: number; mtimeMs: number } | null {
  try {
    return statSync(file);
  } catch {
    return null;
  }
}

function fileStamp(file: string): string | null {
  const st = statOf(file);
  return st ? `${st.size}:${st.mtimeMs}` : null;
}

function fileIdentity(file: string): string | null {
  const st = statOf(file);
  return st ? `${st.dev}:${st.ino}` : null;
}
