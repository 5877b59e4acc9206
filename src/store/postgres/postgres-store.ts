/**
 * The Store interface over PostgreSQL, for several gateway nodes sharing one
 * database. What it adds over the repositories is what SqliteStore adds over
 * SQLite's:
 *  - one way in: reads on the pool, writes in one transaction each;
 *  - failures reported here, so no caller has to: a failed write, or a lost
 *    connection, makes `writable()` refuse logins until a write probe (at
 *    most once per store_retry_seconds) gets through. The pool makes new
 *    connections by itself, so the store recovers when the database is back,
 *    without a restart;
 *  - changes announced: this node's at once (after the commit), other nodes'
 *    through LISTEN/NOTIFY (notifications.ts), and a change token (the other
 *    nodes' counts in store_changes) for the revocation watcher to poll when
 *    notifications are not coming.
 */
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { hostname } from 'node:os';
import pg from 'pg';
import { FIXED_LIMITS } from '../../config/limits.js';
import { ErrorCodes, errorMessage, MailgateError } from '../../errors.js';
import type { Logger } from '../../log/logger.js';
import type {
  AccountStore,
  AppPasswordStore,
  AuditStore,
  CredentialsNow,
  CredentialsQuery,
  LoginStore,
  PenaltyStore,
  RecoveryCodeStore,
  Store,
  StoreChange,
  TotpStore,
  WebSessionStore,
} from '../store.js';
import type { PenaltyKind, PenaltyRules, WebSessionLimits } from '../types.js';
import { isDatabaseError, safeUrl, type Sql, type Tx } from './database.js';
import { ChangeListener } from './notifications.js';
import { PgRepositories, type PgStoreOptions } from './repositories.js';

const RETRY_MS = FIXED_LIMITS.store_retry_seconds * 1000;

/**
 * Takes the locks a write needs and writes nothing: it fails as a real write
 * would (connection refused, a read-only standby after a failover).
 */
const WRITE_PROBE = 'DELETE FROM penalties WHERE false';

/**
 * Other nodes' change counters unused this long are folded by housekeeping
 * into one row, PRUNED_NODES (each CLI run is a node, so rows would pile up):
 * the sum of the counts stays as it was.
 */
const STALE_NODE_MS = 24 * 60 * 60 * 1000;
const PRUNED_NODES = '(pruned)';

export interface PostgresStoreSettings {
  log: Logger;
  /** LISTEN for other nodes' changes (the gateway); the CLI only sends its own. */
  listen?: boolean;
}

type Read<T> = (r: PgRepositories, sql: Sql) => Promise<T>;
type Write<T> = (r: PgRepositories, tx: Tx) => Promise<T>;

export class PostgresStore implements Store {
  readonly accounts: AccountStore;
  readonly appPasswords: AppPasswordStore;
  readonly totp: TotpStore;
  readonly penalties: PenaltyStore;
  readonly audit: AuditStore;
  readonly logins: LoginStore;
  readonly recoveryCodes: RecoveryCodeStore;
  readonly webSessions: WebSessionStore;
  private readonly changes = new EventEmitter();
  private listener: ChangeListener | null = null;
  private r!: PgRepositories;
  /** While writes fail: when the next probe may run. Null while they work. */
  private retryAt: number | null = null;
  private probing: Promise<void> | null = null;
  private closed = false;

  private constructor(
    private readonly options: PgStoreOptions,
    private readonly log: Logger,
    readonly node: string,
  ) {
    this.changes.setMaxListeners(50);
    this.accounts = this.accountStore();
    this.appPasswords = this.appPasswordStore();
    this.totp = this.totpStore();
    this.penalties = this.penaltyStore();
    this.audit = {
      record: (event, entry) => this.write((r, tx) => r.audit.record(tx, event, entry)),
      list: (options) => this.read((r, sql) => r.audit.list(sql, options)),
      activity: (username, limit) => this.read(async (r, sql) => r.audit.activity(sql, await r.accounts.get(sql, username), limit)),
    };
    this.logins = {
      check: (username, password, protocol) => this.read((r) => r.logins.check(username, password, protocol)),
      lookup: (username, password) => this.read((r) => r.logins.lookup(username, password)),
      // No read: argon2 on what lookup read.
      verifyFound: (found, password, protocol) => this.r.logins.verifyFound(found, password, protocol),
      recheck: (login, protocol) => this.read((r) => r.logins.recheck(login, protocol)),
      // A repeat login is one statement; a first one from its address, a transaction under a lock.
      recordSuccess: (record) =>
        this.guard(async () => {
          if (!(await this.r.logins.recordRepeat(this.r.db.sql, record))) await this.r.logins.recordFirst(this.r.db, record);
        }, true),
      recordFailure: (username, reason, context) => this.write((r, tx) => r.logins.recordFailure(tx, username, reason, context)),
    };
    this.recoveryCodes = {
      regenerate: (username) => this.write((r, tx) => r.recoveryCodes.regenerate(tx, username)),
      consume: (username, code) => this.write((r, tx) => r.recoveryCodes.consume(tx, username, code)),
      remaining: (username) => this.read((r, sql) => r.recoveryCodes.remaining(sql, username)),
    };
    this.webSessions = this.webSessionStore();
  }

  /** Connects, migrates (under the advisory lock), checks the key file and, for the gateway, starts listening. */
  static async open(options: PgStoreOptions, settings: PostgresStoreSettings): Promise<PostgresStore> {
    const store = new PostgresStore(options, settings.log, `${hostname()}/${process.pid}/${randomBytes(4).toString('hex')}`);
    store.r = await PgRepositories.open(options, store.node, {
      onIdleError: (err) => store.connectionLost(err),
      onCommitted: (changes) => {
        for (const change of changes) store.announce(change);
      },
    });
    const { from, to } = store.r.migrated;
    if (from !== to) settings.log.warn({ url: safeUrl(options.url), from, to }, from === 0 ? 'created the store schema in the database' : 'migrated the store schema');
    if (settings.listen) {
      store.listener = new ChangeListener(options, store.node, settings.log, {
        change: (change) => store.announce(change),
        lost: (err) => store.connectionLost(err),
      });
      await store.listener.start();
    }
    return store;
  }

  /** The backend pid of the LISTEN connection (tests end it), or null. */
  listenerPid(): number | null {
    return this.listener?.backendPid ?? null;
  }

  credentialsNow(query: CredentialsQuery): Promise<CredentialsNow> {
    return this.read(async (r, sql) => ({
      accounts: await r.accounts.findByIds(sql, query.accountIds),
      appPasswords: await r.appPasswords.findByIds(sql, query.appPasswordIds),
      accountsByName: await r.accounts.findByNames(sql, query.names),
      blockedNames: await r.penalties.blockedAccounts(sql, query.names),
    }));
  }

  /**
   * Resolves while writes work. Once one failed (or a connection was lost
   * and a probe failed), rejects until a write probe gets through, trying at
   * most once per store_retry_seconds.
   */
  async writable(): Promise<void> {
    if (this.closed) throw this.closedError();
    if (this.retryAt === null) return;
    if (this.probing) return this.probing;
    if (Date.now() < this.retryAt) throw this.writesFailing();
    this.probing = this.probe().finally(() => {
      this.probing = null;
    });
    return this.probing;
  }

  /** The write probe now (the readiness check): a failure refuses logins as a failed write does, a success ends that. */
  async probeWrites(): Promise<void> {
    if (this.closed) throw this.closedError();
    await this.probe();
  }

  onChange(listener: (change: StoreChange) => void): () => void {
    this.changes.on('change', listener);
    return () => this.changes.off('change', listener);
  }

  /**
   * The other nodes' change counts: moves when another node (or the CLI)
   * commits a change, never for this one's. The sum only grows: the rows of
   * nodes long gone are folded into one `(pruned)` row, never dropped.
   */
  foreignChangeToken(): Promise<string> {
    return this.read(async (_r, sql) => {
      const row = await sql.one<{ n: number }>('SELECT coalesce(sum(n), 0)::bigint AS n FROM store_changes WHERE node <> $1', [this.node]);
      return String(row?.n ?? 0);
    });
  }

  prune(options: { penaltiesOlderThanMs: number; auditMaxAgeMs: number; webSessions?: WebSessionLimits }): Promise<{ penalties: number; audit: number; webSessions: number }> {
    return this.write(async (r, tx) => {
      // Dropping a count would let the sum stand still while a new change is
      // made: a node whose LISTEN is down would then miss it. Folded instead.
      await tx.run(
        `WITH gone AS (DELETE FROM store_changes WHERE at < $1 AND node <> $2 AND node <> $3 RETURNING n)
         INSERT INTO store_changes (node, n, at) SELECT $3, coalesce(sum(n), 0), $4 FROM gone
         ON CONFLICT (node) DO UPDATE SET n = store_changes.n + excluded.n, at = excluded.at`,
        [Date.now() - STALE_NODE_MS, this.node, PRUNED_NODES, Date.now()],
      );
      return {
        penalties: await r.penalties.prune(tx, options.penaltiesOlderThanMs),
        audit: options.auditMaxAgeMs > 0 ? await r.audit.prune(tx, options.auditMaxAgeMs) : 0,
        webSessions: options.webSessions === undefined ? 0 : await r.webSessions.prune(tx, options.webSessions),
      };
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.listener?.stop();
    await this.r.db.close();
    this.changes.removeAllListeners();
  }

  private accountStore(): AccountStore {
    return {
      add: (username) => this.write((r, tx) => r.accounts.add(tx, username), { kind: 'account' }),
      find: (username) => this.read((r, sql) => r.accounts.find(sql, username)),
      get: (username) => this.read((r, sql) => r.accounts.get(sql, username)),
      list: () => this.read((r, sql) => r.accounts.list(sql)),
      remove: (username) =>
        this.write(async (r, tx) => {
          const { account, webSessionsEnded } = await r.accounts.remove(tx, username);
          announceWebSessionsEnded(tx, webSessionsEnded, account.username);
        }, { kind: 'account' }),
    };
  }

  private appPasswordStore(): AppPasswordStore {
    return {
      // Hashing happens between a read and the write transaction: the repository runs both.
      create: (username, options) => this.guard(() => this.r.appPasswords.create(username, options), true),
      list: (username) => this.read((r, sql) => r.appPasswords.list(sql, username)),
      revoke: (username, id) => this.write((r, tx) => r.appPasswords.revoke(tx, username, id), { kind: 'app-password', username }),
      revokeAll: (username) => this.write((r, tx) => r.appPasswords.revokeAll(tx, username), { kind: 'app-password', username }),
    };
  }

  private totpStore(): TotpStore {
    return {
      status: (username) => this.read(async (r, sql) => (await r.accounts.get(sql, username)).totpState),
      enroll: (username) => this.write((r, tx) => r.totp.enroll(tx, username)),
      pending: (username) => this.read((r, sql) => r.totp.pending(sql, username)),
      confirm: (username, code, options) =>
        this.write(async (r, tx) => {
          const { account, recoveryCodes, webSessionsEnded } = await r.totp.confirm(tx, username, code, options?.keepWebSession);
          announceWebSessionsEnded(tx, webSessionsEnded, account.username);
          return { account, recoveryCodes };
        }, { kind: 'totp', username }),
      disable: (username, options) =>
        this.write(async (r, tx) => {
          const { account, webSessionsEnded } = await r.totp.disable(tx, username, options?.keepWebSession);
          announceWebSessionsEnded(tx, webSessionsEnded, account.username);
          return account;
        }, { kind: 'totp', username }),
      verify: (username, code) => this.write((r, tx) => r.totp.verify(tx, username, code)),
    };
  }

  private penaltyStore(): PenaltyStore {
    const counted = (kind: PenaltyKind, key: string, rules: PenaltyRules, field: 'failures' | 'repeats') =>
      this.write(async (r, tx) => {
        const result = await r.penalties.count(tx, kind, key, rules, field);
        if (result.blockStarted) tx.changed(kind === 'account' ? { kind: 'block', username: key } : { kind: 'block' });
        return result;
      });
    return {
      get: (kind, key, windowMs) => this.read((r, sql) => r.penalties.get(sql, kind, key, windowMs)),
      recordFailure: (kind, key, rules) => counted(kind, key, rules, 'failures'),
      recordRepeat: (kind, key, rules) => counted(kind, key, rules, 'repeats'),
      activeBlocks: () => this.read((r, sql) => r.penalties.activeBlocks(sql)),
      all: () => this.read((r, sql) => r.penalties.all(sql)),
      clear: (key) => this.write((r, tx) => r.penalties.clear(tx, key), { kind: 'penalties-cleared' }),
    };
  }

  private webSessionStore(): WebSessionStore {
    return {
      // A write: a session found past its timeout is ended on the way.
      get: (idHash, limits) => this.write((r, tx) => r.webSessions.get(tx, idHash, limits)),
      save: (record) => this.write((r, tx) => r.webSessions.save(tx, record)),
      destroy: (idHash) => this.write((r, tx) => r.webSessions.end(tx, idHash)),
      list: (username, limits) => this.read(async (r, sql) => r.webSessions.list(sql, await r.accounts.get(sql, username), limits)),
      endAll: (username, options) =>
        this.write(async (r, tx) => {
          const account = await r.accounts.get(tx, username);
          const ended = await r.webSessions.endAll(tx, account, options?.except);
          announceWebSessionsEnded(tx, ended, account.username);
          return ended;
        }),
    };
  }

  private read<T>(work: Read<T>): Promise<T> {
    return this.guard(() => work(this.r, this.r.db.sql), false);
  }

  /** One transaction; `change` is announced (here and to the other nodes) with whatever the work reported. */
  private write<T>(work: Write<T>, change?: StoreChange): Promise<T> {
    return this.guard(
      () =>
        this.r.db.transaction(async (tx) => {
          const result = await work(this.r, tx);
          if (change) tx.changed(change);
          return result;
        }),
      true,
    );
  }

  private async guard<T>(run: () => Promise<T>, writes: boolean): Promise<T> {
    if (this.closed) throw this.closedError();
    try {
      return await run();
    } catch (err) {
      this.failure(err, writes);
      throw err;
    }
  }

  /**
   * A database failure (a refusal the store decided, such as an unknown
   * account, is not one): any failed write, or a read that lost its
   * connection, refuses logins until a probe shows writes work.
   */
  private failure(err: unknown, writes: boolean): void {
    if (this.closed || !isDatabaseError(err)) return;
    if (writes || isConnectionError(err)) this.writesFailed(err);
  }

  private writesFailed(err: unknown): void {
    if (this.retryAt === null) {
      this.log.error({ url: safeUrl(this.options.url), err: errorMessage(err) }, 'database writes are failing; logins are refused until they work again');
    }
    this.retryAt = Date.now() + RETRY_MS;
  }

  /** A connection was lost (the LISTEN one, or an idle pooled one): the database may be gone; look now. */
  private connectionLost(err: unknown): void {
    if (this.closed || this.retryAt !== null || this.probing) return;
    this.probing = this.probe(err).catch(() => undefined).finally(() => {
      this.probing = null;
    });
  }

  private async probe(cause?: unknown): Promise<void> {
    try {
      await this.r.db.sql.run(WRITE_PROBE);
    } catch (err) {
      // Logged once per outage, when writes first fail.
      this.writesFailed(cause ?? err);
      throw this.writesFailing(err);
    }
    if (this.retryAt !== null) this.log.info({ url: safeUrl(this.options.url) }, 'the database is usable again');
    this.retryAt = null;
  }

  private announce(change: StoreChange): void {
    this.changes.emit('change', change);
  }

  private writesFailing(cause?: unknown): MailgateError {
    const detail = cause === undefined ? '' : `: ${errorMessage(cause)}`;
    return new MailgateError(ErrorCodes.DB_UNAVAILABLE, `writes to database ${safeUrl(this.options.url)} are failing${detail}; logins are refused until they work again`);
  }

  private closedError(): MailgateError {
    return new MailgateError(ErrorCodes.DB_UNAVAILABLE, 'the store is closed (shutting down)');
  }
}

/** Page sessions the store ended (not one signing itself out): their pages must stop at once, on every node. */
function announceWebSessionsEnded(tx: Tx, count: number, username: string): void {
  if (count > 0) tx.changed({ kind: 'web-sessions', username });
}

/**
 * A failure of the connection rather than of a statement: no SQLSTATE (refused,
 * reset, timed out), or the classes of a lost connection (08), a server
 * shutting down or starting (57P) and exhausted resources (53).
 */
function isConnectionError(err: unknown): boolean {
  return !(err instanceof pg.DatabaseError) || /^(08|57P|53)/.test(err.code ?? '');
}
