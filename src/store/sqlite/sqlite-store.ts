/**
 * The Store interface over SQLite. The repositories are synchronous
 * (better-sqlite3), so every method runs its work at once and hands the
 * result over as a Promise; what this class adds is the one way in:
 *  - each call gets the connection from the StoreHandle, which fails closed
 *    while the database is unusable and reopens it when it is back;
 *  - each failure is reported to the handle here (a broken file drops the
 *    connection, a failed write makes `writable()` refuse logins until a
 *    probe shows writes work again), so no caller has to;
 *  - changes this process commits that may end sessions are announced to
 *    `onChange` listeners at once (SQLite's data_version does not move for a
 *    connection's own commits); other processes' commits show as a moved
 *    `foreignChangeToken()`.
 * In the gateway it also runs the WAL checkpoints, off the event loop.
 */
import { EventEmitter } from 'node:events';
import { ErrorCodes, MailgateError } from '../../errors.js';
import type { Logger } from '../../log/logger.js';
import type {
  AccountStore,
  AppPasswordStore,
  AuditStore,
  CredentialsNow,
  CredentialsQuery,
  LoginRecord,
  LoginStore,
  PenaltyStore,
  RecoveryCodeStore,
  Store,
  StoreChange,
  TotpStore,
  WebSessionStore,
} from '../store.js';
import type { CachedLogin, CredentialLookup, LoginContext, PenaltyKind, PenaltyRules, Scope, WebSessionLimits } from '../types.js';
import { Checkpointer } from './checkpointer.js';
import type { SqliteRepositories, StoreOptions } from './repositories.js';
import { StoreHandle } from './store-handle.js';

export interface SqliteStoreOptions {
  log: Logger;
  /** WAL checkpoints in a worker thread at this interval (the gateway); none: SQLite's automatic ones (the CLI). */
  checkpointIntervalMs?: number;
}

type Work<T> = (repositories: SqliteRepositories) => T;

export class SqliteStore implements Store {
  readonly accounts: AccountStore;
  readonly appPasswords: AppPasswordStore;
  readonly totp: TotpStore;
  readonly penalties: PenaltyStore;
  readonly audit: AuditStore;
  readonly logins: LoginStore;
  readonly recoveryCodes: RecoveryCodeStore;
  readonly webSessions: WebSessionStore;
  private readonly changes = new EventEmitter();
  private readonly checkpointer: Checkpointer | null;

  private constructor(
    private readonly handle: StoreHandle,
    options: StoreOptions,
    settings: SqliteStoreOptions,
  ) {
    // Each session subscribes nothing; only the watcher and the web page listen.
    this.changes.setMaxListeners(50);
    this.checkpointer =
      settings.checkpointIntervalMs === undefined
        ? null
        : new Checkpointer(options.path, settings.checkpointIntervalMs, settings.log, () => handle.enableAutoCheckpoint());
    this.accounts = this.accountStore();
    this.appPasswords = this.appPasswordStore();
    this.totp = this.totpStore();
    this.penalties = this.penaltyStore();
    this.audit = {
      record: (event, entry) => this.write((r) => r.audit.record(event, entry)),
      list: (options) => this.read((r) => r.audit.list(options)),
      activity: (username, limit) => this.read((r) => r.audit.activity(r.accounts.get(username), limit)),
    };
    this.logins = this.loginStore();
    this.recoveryCodes = {
      regenerate: (username) => this.write((r) => r.recoveryCodes.regenerate(username)),
      consume: (username, code) => this.write((r) => r.recoveryCodes.consume(username, code)),
      remaining: (username) => this.read((r) => r.recoveryCodes.remaining(username)),
    };
    this.webSessions = this.webSessionStore();
  }

  /**
   * Opens the database (creating a new one when `options.mustExist` is not
   * set), with the checkpoint worker when asked for.
   */
  static open(options: StoreOptions, settings: SqliteStoreOptions): SqliteStore {
    const store = new SqliteStore(new StoreHandle(options, settings.log), options, settings);
    store.checkpointer?.start();
    return store;
  }

  /** Over repositories already open (tests, and tools holding a connection): no checkpoint worker. */
  static over(repositories: SqliteRepositories, options: StoreOptions, log: Logger): SqliteStore {
    return new SqliteStore(new StoreHandle(options, log, repositories), options, { log });
  }

  /** The connection in use now, for tests that inject faults into it (never for the running code). */
  currentConnection(): SqliteRepositories {
    return this.repositories();
  }

  credentialsNow(query: CredentialsQuery): Promise<CredentialsNow> {
    return this.read((r) => ({
      accounts: r.accounts.findByIds(query.accountIds),
      appPasswords: r.appPasswords.findByIds(query.appPasswordIds),
      accountsByName: query.names.length > 0 ? r.accounts.findByNames(query.names) : new Map(),
      blockedNames: query.names.length > 0 ? r.penalties.blockedAccounts(query.names) : new Set<string>(),
    }));
  }

  async writable(): Promise<void> {
    this.handle.writable();
  }

  async probeWrites(): Promise<void> {
    this.handle.probeWrites();
  }

  onChange(listener: (change: StoreChange) => void): () => void {
    this.changes.on('change', listener);
    return () => this.changes.off('change', listener);
  }

  foreignChangeToken(): Promise<string> {
    // A reopened connection starts a new data_version count: the generation tells them apart.
    return this.read((r) => `${this.handle.generation}:${r.dataVersion()}`);
  }

  prune(options: { penaltiesOlderThanMs: number; auditMaxAgeMs: number; webSessions?: WebSessionLimits }): Promise<{ penalties: number; audit: number; webSessions: number }> {
    return this.write((r) => ({
      penalties: r.penalties.prune(options.penaltiesOlderThanMs),
      audit: options.auditMaxAgeMs > 0 ? r.audit.prune(options.auditMaxAgeMs) : 0,
      webSessions: options.webSessions === undefined ? 0 : r.webSessions.prune(options.webSessions),
    }));
  }

  async close(): Promise<void> {
    await this.checkpointer?.stop();
    this.handle.close();
    this.changes.removeAllListeners();
  }

  private accountStore(): AccountStore {
    return {
      add: (username) => this.write((r) => r.accounts.add(username), { kind: 'account' }),
      find: (username) => this.read((r) => r.accounts.find(username)),
      get: (username) => this.read((r) => r.accounts.get(username)),
      list: () => this.read((r) => r.accounts.list()),
      remove: (username) =>
        this.write((r) => {
          const { account, webSessionsEnded } = r.accounts.remove(username);
          this.announceWebSessionsEnded(webSessionsEnded, account.username);
        }, { kind: 'account' }),
    };
  }

  private appPasswordStore(): AppPasswordStore {
    return {
      // Hashing is asynchronous (the libuv pool): the one repository call that awaits.
      create: async (username, options) => {
        const repositories = this.repositories();
        try {
          return await repositories.appPasswords.create(username, options);
        } catch (err) {
          throw this.failure(err, true);
        }
      },
      list: (username) => this.read((r) => r.appPasswords.list(username)),
      revoke: (username, id) => this.write((r) => r.appPasswords.revoke(username, id), { kind: 'app-password', username }),
      revokeAll: (username) => this.write((r) => r.appPasswords.revokeAll(username), { kind: 'app-password', username }),
    };
  }

  private totpStore(): TotpStore {
    return {
      status: (username) => this.read((r) => r.totp.status(username)),
      enroll: (username) => this.write((r) => r.totp.enroll(username)),
      pending: (username) => this.read((r) => r.totp.pending(username)),
      confirm: (username, code, options) =>
        this.write((r) => {
          const { account, recoveryCodes, webSessionsEnded } = r.totp.confirm(username, code, options);
          this.announceWebSessionsEnded(webSessionsEnded, account.username);
          return { account, recoveryCodes };
        }, { kind: 'totp', username }),
      disable: (username, options) =>
        this.write((r) => {
          const { account, webSessionsEnded } = r.totp.disable(username, options);
          this.announceWebSessionsEnded(webSessionsEnded, account.username);
          return account;
        }, { kind: 'totp', username }),
      verify: (username, code) => this.write((r) => r.totp.verify(username, code)),
    };
  }

  private penaltyStore(): PenaltyStore {
    const counted = (kind: PenaltyKind, key: string, rules: PenaltyRules, repeat: boolean) =>
      this.write((r) => {
        const result = repeat ? r.penalties.recordRepeat(kind, key, rules) : r.penalties.recordFailure(kind, key, rules);
        if (result.blockStarted) this.announce({ kind: 'block', username: kind === 'account' ? key : undefined });
        return result;
      });
    return {
      get: (kind, key, windowMs) => this.read((r) => r.penalties.get(kind, key, windowMs)),
      recordFailure: (kind, key, rules) => counted(kind, key, rules, false),
      recordRepeat: (kind, key, rules) => counted(kind, key, rules, true),
      activeBlocks: () => this.read((r) => r.penalties.activeBlocks()),
      all: () => this.read((r) => r.penalties.all()),
      clear: (key) => this.write((r) => r.penalties.clear(key), { kind: 'penalties-cleared' }),
    };
  }

  private webSessionStore(): WebSessionStore {
    return {
      // A write: a session found past its timeout is ended on the way.
      get: (idHash, limits) => this.write((r) => r.webSessions.get(idHash, limits)),
      save: (record) => this.write((r) => r.webSessions.save(record)),
      destroy: (idHash) => this.write((r) => r.webSessions.destroy(idHash)),
      list: (username, limits) => this.read((r) => r.webSessions.list(r.accounts.get(username), limits)),
      endAll: (username, options) =>
        this.write((r) => {
          const account = r.accounts.get(username);
          const ended = r.webSessions.endAll(account, options?.except);
          this.announceWebSessionsEnded(ended, account.username);
          return ended;
        }),
    };
  }

  private loginStore(): LoginStore {
    return {
      check: async (username: string, password: string, protocol: Scope) => {
        const repositories = this.repositories();
        try {
          return await repositories.verifier.check(username, password, protocol);
        } catch (err) {
          throw this.failure(err, false);
        }
      },
      lookup: async (username: string, password: string) => {
        const repositories = this.repositories();
        try {
          return await repositories.verifier.lookup(username, password);
        } catch (err) {
          throw this.failure(err, false);
        }
      },
      // No read (argon2 on what lookup read), but still refused while the database is unusable.
      verifyFound: async (found: CredentialLookup, password: string, protocol: Scope) => this.repositories().verifier.verifyFound(found, password, protocol),
      recheck: async (login: CachedLogin, protocol: Scope) => {
        const repositories = this.repositories();
        try {
          return await repositories.verifier.recheck(login, protocol);
        } catch (err) {
          throw this.failure(err, false);
        }
      },
      recordSuccess: (record: LoginRecord) => this.write((r) => r.verifier.recordSuccess(record)),
      recordFailure: (username: string, reason: string, context: LoginContext) => this.write((r) => r.verifier.recordFailure(username, reason, context)),
    };
  }

  /** The open repositories; throws (fails closed) while the database is unusable. */
  private repositories(): SqliteRepositories {
    return this.handle.get();
  }

  private read<T>(work: Work<T>): Promise<T> {
    return this.run(work, false);
  }

  private write<T>(work: Work<T>, change?: StoreChange): Promise<T> {
    return this.run(work, true, change);
  }

  private async run<T>(work: Work<T>, writes: boolean, change?: StoreChange): Promise<T> {
    let result: T;
    try {
      result = work(this.repositories());
    } catch (err) {
      throw this.failure(err, writes);
    }
    if (change) this.announce(change);
    return result;
  }

  private announce(change: StoreChange): void {
    this.changes.emit('change', change);
  }

  /** Page sessions the store ended (not one signing itself out): their pages must stop at once. */
  private announceWebSessionsEnded(count: number, username: string): void {
    if (count > 0) this.announce({ kind: 'web-sessions', username });
  }

  /**
   * Reports a database failure to the handle (a refusal the store decided,
   * such as an unknown account, is not one) and returns the error to throw.
   */
  private failure(err: unknown, writes: boolean): unknown {
    if (isDatabaseError(err)) {
      if (writes) this.handle.writeFailed(err);
      else this.handle.failed(err);
    }
    return err;
  }
}

/** An error of the database itself, as opposed to a refusal decided by the store (a MailgateError). */
function isDatabaseError(err: unknown): boolean {
  if (err instanceof MailgateError) return err.code === ErrorCodes.DB_UNAVAILABLE;
  const code = (err as { code?: unknown } | null)?.code;
  return (typeof code === 'string' && code.startsWith('SQLITE_')) || (err instanceof Error && err.name === 'SqliteError');
}
