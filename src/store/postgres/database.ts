/**
 * Reaching PostgreSQL: the pool, how statements run (reads on the pool,
 * writes in one transaction on one connection), and the notification that
 * travels with every change other nodes must hear of.
 *
 * Every transaction that makes a change that may end sessions (what SQLite's
 * store announces through onChange) also, before its COMMIT:
 *  - bumps this node's row of `store_changes`, whose sum over the other nodes
 *    is the foreign-change token the revocation watcher polls, and
 *  - sends `NOTIFY mailgate_changes` with the change as JSON, delivered to
 *    the other nodes' LISTEN connections when (and only if) it commits.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import pg from 'pg';
import { FIXED_LIMITS } from '../../config/limits.js';
import { ErrorCodes, errorMessage, MailgateError } from '../../errors.js';
import type { StoreChange } from '../store.js';

/** The channel every node LISTENs on. */
export const CHANNEL = 'mailgate_changes';

/** BIGINT (ids, Unix milliseconds, counts) as JavaScript numbers: every value mailgate stores is below 2^53. */
const INT8_OID = 20;
const TYPES: pg.CustomTypesConfig = {
  getTypeParser: ((oid: number, format?: 'text' | 'binary') =>
    oid === INT8_OID ? (value: string) => Number(value) : pg.types.getTypeParser(oid, format ?? 'text')) as pg.CustomTypesConfig['getTypeParser'],
};

export interface PostgresOptions {
  url: string;
  /** A file holding the password, when the URL has none; else libpq's PGPASSWORD. */
  passwordFile?: string;
  poolSize: number;
  /** Statements may run as long as they need (the administrator's copy of a large store); the store's own are bounded. */
  unboundedStatements?: boolean;
}

/**
 * A statement of the login path, prepared once per connection: PostgreSQL
 * then parses and plans it once instead of at every run, which is most of
 * the server's time for these small statements (a login runs several, one
 * after the other). Its result columns are named, never `*`: a prepared
 * `SELECT *` fails once a later migration adds a column under a running node.
 */
export interface Prepared {
  readonly name: string;
  readonly text: string;
}

/** The name is the text's hash: the same text is one statement on a connection, two texts never share a name. */
export function prepared(text: string): Prepared {
  return { name: `mg_${createHash('sha256').update(text).digest('hex').slice(0, 24)}`, text };
}

export type Statement = string | Prepared;

/** What the store's statements run on: the pool (reads) or a transaction's connection. */
export interface Sql {
  rows<T>(statement: Statement, params?: readonly unknown[]): Promise<T[]>;
  one<T>(statement: Statement, params?: readonly unknown[]): Promise<T | undefined>;
  /** Rows changed. */
  run(statement: Statement, params?: readonly unknown[]): Promise<number>;
}

/** Inside a write: statements, and the changes to announce once it commits. */
export interface Tx extends Sql {
  changed(change: StoreChange): void;
}

/** A notification as it travels between nodes: the change, and who made it (so a node ignores its own). */
export interface ChangeMessage extends StoreChange {
  node: string;
}

/**
 * The settings of every connection to the store: the URL, the password, the
 * timeouts. The server's own timeouts come first: node-postgres's
 * query_timeout only stops waiting, while the statement runs on (holding a
 * backend, and its ROLLBACK queued behind it), so a lock held elsewhere
 * would pile up backends on every node. The server cancels the statement a
 * little before the client gives up, which leaves the connection usable.
 * (A pooler that drops start-up settings needs them set on the role:
 * docs/scaling.md.)
 */
export function connectionConfig(options: Pick<PostgresOptions, 'url' | 'passwordFile' | 'unboundedStatements'>): pg.ClientConfig {
  const timeoutMs = FIXED_LIMITS.postgres_timeout_seconds * 1000;
  const serverMs = timeoutMs - 500;
  return {
    connectionString: options.passwordFile ? withPassword(options.url, readPassword(options.passwordFile)) : options.url,
    connectionTimeoutMillis: timeoutMs,
    ...(options.unboundedStatements
      ? {}
      : { query_timeout: timeoutMs, statement_timeout: serverMs, lock_timeout: serverMs, idle_in_transaction_session_timeout: 2 * timeoutMs }),
    keepAlive: true,
    // A connection whose peer vanished without a reset (a lost network) is noticed in seconds, not the kernel's two hours.
    keepAliveInitialDelayMillis: 10_000,
    application_name: 'mailgate',
    types: TYPES,
  };
}

/**
 * Keeps a connection's 'error' event from ending the process. node-postgres
 * emits it (besides rejecting the query) when the server goes away, and the
 * pool only listens while a connection is idle in it; `onError` marks it.
 */
export function guardClient(client: pg.ClientBase, onError: (err: Error) => void): void {
  client.on('error', onError);
}

/** The URL with the password in it: node-postgres takes every field of a connection string over the separate ones. */
function withPassword(url: string, password: string): string {
  try {
    const parsed = new URL(url);
    if (!parsed.password) parsed.password = encodeURIComponent(password);
    return parsed.toString();
  } catch {
    return url;
  }
}

function readPassword(file: string): string {
  try {
    return readFileSync(file, 'utf8').replace(/\r?\n$/, '');
  } catch (err) {
    throw new MailgateError(ErrorCodes.DB_UNAVAILABLE, `cannot read store.password_file ${file}: ${errorMessage(err)}`);
  }
}

/** Query parameters libpq reads a password from. */
const PASSWORD_PARAMETERS = ['password', 'sslpassword'];

/** The URL without its password (in the authority or the query), for messages and logs. */
export function safeUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = '***';
    for (const name of PASSWORD_PARAMETERS) if (parsed.searchParams.has(name)) parsed.searchParams.set(name, '***');
    return parsed.toString();
  } catch {
    return 'the configured store.url';
  }
}

export function sqlOver(client: pg.Pool | pg.PoolClient | pg.Client): Sql {
  const query = (statement: Statement, params?: readonly unknown[]) => {
    const values = params as unknown[] | undefined;
    return typeof statement === 'string' ? client.query(statement, values) : client.query({ name: statement.name, text: statement.text, ...(values ? { values } : {}) });
  };
  return {
    rows: async <T>(statement: Statement, params?: readonly unknown[]) => (await query(statement, params)).rows as T[],
    one: async <T>(statement: Statement, params?: readonly unknown[]) => (await query(statement, params)).rows[0] as T | undefined,
    run: async (statement: Statement, params?: readonly unknown[]) => (await query(statement, params)).rowCount ?? 0,
  };
}

export class PgDatabase {
  readonly pool: pg.Pool;
  /** Reads, on whichever pooled connection is free. */
  readonly sql: Sql;

  constructor(
    readonly options: PostgresOptions,
    /** This store's name among the nodes: its notifications carry it, its change counter is keyed by it. */
    readonly node: string,
    onIdleError: (err: Error) => void,
    private readonly onCommitted: (changes: StoreChange[]) => void = () => undefined,
  ) {
    // Idle connections are kept (pg-pool closes them after 10 s by default): a
    // new one costs a login 7-12 ms (a server process, SCRAM, preparing the
    // statements again), which every login after a quiet spell would pay.
    this.pool = new pg.Pool({ ...connectionConfig(options), max: options.poolSize, idleTimeoutMillis: 0 });
    // A pooled connection that dies while idle (the server restarted) is
    // dropped by the pool; without a listener the error would end the process.
    this.pool.on('error', onIdleError);
    // One that dies while checked out (a write in flight) emits it with no pool
    // listener attached: it is marked, and its transaction does not return it.
    this.pool.on('connect', (client) =>
      guardClient(client, (err) => {
        this.broken.add(client);
        onIdleError(err);
      }),
    );
    this.sql = sqlOver(this.pool);
  }

  /** Connections that reported an error: never handed back to the pool. */
  private readonly broken = new WeakSet<pg.ClientBase>();

  /**
   * Runs `work` in one transaction on one connection: all or nothing. The
   * changes it reports are counted and notified in the same commit, then
   * handed to `onCommitted` (this process's own listeners).
   */
  async transaction<T>(work: (tx: Tx) => Promise<T>, options: { lockKey?: bigint } = {}): Promise<T> {
    const client = await this.pool.connect();
    const changes: StoreChange[] = [];
    const tx: Tx = { ...sqlOver(client), changed: (change) => void changes.push(change) };
    let broken = false;
    let committing = false;
    let result: T;
    try {
      // `lockKey`: a transaction-scoped advisory lock taken with the BEGIN, in
      // the same round trip (two statements in one simple query: the key is a
      // bigint, so its digits are all the text there is to put in it).
      await client.query(options.lockKey === undefined ? 'BEGIN' : `BEGIN; SELECT pg_advisory_xact_lock(${BigInt.asIntN(64, options.lockKey).toString()})`);
      result = await work(tx);
      if (changes.length > 0) await this.announceIn(tx, changes);
      committing = true;
      await client.query('COMMIT');
    } catch (err) {
      // A COMMIT whose answer was lost may have committed: this node's own
      // sessions are checked again as if it had (an extra check is harmless;
      // a missed revocation is not).
      if (committing) this.announceLocally(changes);
      try {
        await client.query('ROLLBACK');
      } catch {
        // The connection itself failed: it must not go back to the pool.
        broken = true;
      }
      throw err;
    } finally {
      client.release(broken || this.broken.has(client));
    }
    this.announceLocally(changes);
    return result;
  }

  /** This process's listeners, after the commit: a listener that throws does not make a committed write look failed. */
  private announceLocally(changes: StoreChange[]): void {
    if (changes.length === 0) return;
    try {
      this.onCommitted(changes);
    } catch {
      // The listeners are the store's own event emitter; they log their own failures.
    }
  }

  /** The change counter and the notifications, inside the transaction that made the changes. */
  private async announceIn(tx: Sql, changes: StoreChange[]): Promise<void> {
    await tx.run(
      `INSERT INTO store_changes (node, n, at) VALUES ($1, $2, $3)
       ON CONFLICT (node) DO UPDATE SET n = store_changes.n + excluded.n, at = excluded.at`,
      [this.node, changes.length, Date.now()],
    );
    for (const change of changes) {
      const message: ChangeMessage = { node: this.node, ...change };
      await tx.run('SELECT pg_notify($1, $2)', [CHANNEL, JSON.stringify(message)]);
    }
  }

  async close(): Promise<void> {
    await this.pool.end();
  }
}

/** An error of the database or the connection, as opposed to a refusal decided by the store (a MailgateError). */
export function isDatabaseError(err: unknown): boolean {
  if (err instanceof MailgateError) return err.code === ErrorCodes.DB_UNAVAILABLE;
  return err instanceof Error;
}
