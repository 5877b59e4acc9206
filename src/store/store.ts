/**
 * The store as the rest of mailgate sees it: accounts, app passwords,
 * two-step verification, failure counters, the audit trail, and what the
 * login path and the revocation watcher need, behind one interface whose
 * methods return Promises.
 *
 * Nothing outside src/store/ knows which engine is behind it (SQLite today,
 * src/store/sqlite/). An implementation also owns its failures: while its
 * database is unusable every call rejects (logins fail closed), it notices by
 * itself when it is usable again, and callers never report errors back.
 */
import type {
  Account,
  AppPasswordInfo,
  AuditEntry,
  AuditEvent,
  AuditListOptions,
  AuditListRow,
  AuditRow,
  CachedLogin,
  CreatedAppPassword,
  CreateOptions,
  Enrolment,
  LoginContext,
  PenaltyKind,
  PenaltyRules,
  PenaltyState,
  Scope,
  TotpState,
  VerifyResult,
  CredentialLookup,
  WebSessionInfo,
  WebSessionLimits,
  WebSessionRecord,
} from './types.js';

export interface AccountStore {
  /** Adds an account; a name no mail server would accept is refused (INVALID_USERNAME). */
  add(username: string): Promise<Account>;
  /** The account, or null; a name that cannot be valid is simply not found. */
  find(username: string): Promise<Account | null>;
  /** The account; UNKNOWN_ACCOUNT when there is none. */
  get(username: string): Promise<Account>;
  list(): Promise<Account[]>;
  /** Removes the account and all its app passwords. */
  remove(username: string): Promise<void>;
}

export interface AppPasswordStore {
  /** Generates, hashes and stores a new app password; the plaintext is in the result only. */
  create(username: string, options: CreateOptions): Promise<CreatedAppPassword>;
  list(username: string): Promise<AppPasswordInfo[]>;
  revoke(username: string, id: number): Promise<AppPasswordInfo>;
  /** Revokes every app password not revoked yet; how many. */
  revokeAll(username: string): Promise<number>;
}

/**
 * Two-step verification. Turning it on or off ends the account's page
 * sessions (all but `keepWebSession`, the one that made the change), in the
 * same commit.
 */
export interface TotpStore {
  status(username: string): Promise<TotpState>;
  /** A new secret, pending until confirmed. */
  enroll(username: string): Promise<Enrolment>;
  /** The enrolment waiting for its first code (the same secret again), or null when none is. */
  pending(username: string): Promise<Enrolment | null>;
  /**
   * Turns two-step verification on if `code` is valid for the pending secret
   * (and spends it), and makes the account's recovery codes (shown once).
   */
  confirm(username: string, code: string, options?: { keepWebSession?: string }): Promise<{ account: Account; recoveryCodes: string[] }>;
  disable(username: string, options?: { keepWebSession?: string }): Promise<Account>;
  /** Checks and spends a code of an account with two-step verification on. */
  verify(username: string, code: string): Promise<boolean>;
}

/** One-time recovery codes of an account with two-step verification: hashed at rest, each good once. */
export interface RecoveryCodeStore {
  /** Replaces the account's codes with new ones (RECOVERY_CODE_COUNT); returns them, to be shown once. */
  regenerate(username: string): Promise<string[]>;
  /** Spends one code (spacing and case as users type them); false when it is wrong or used. */
  consume(username: string, code: string): Promise<boolean>;
  /** How many are left unused. */
  remaining(username: string): Promise<number>;
}

/** The self-service page's sessions, shared by every node through the store. */
export interface WebSessionStore {
  /** The session, or null when there is none or it has expired (idle or absolute timeout). */
  get(idHash: string, limits: WebSessionLimits): Promise<WebSessionRecord | null>;
  /** Creates or updates it. */
  save(record: WebSessionRecord): Promise<void>;
  destroy(idHash: string): Promise<void>;
  /** The account's sessions (those still within `limits`, when given), newest first. */
  list(username: string, limits?: WebSessionLimits): Promise<WebSessionInfo[]>;
  /** Ends every session of the account (but `except`); how many. */
  endAll(username: string, options?: { except?: string }): Promise<number>;
}

export interface PenaltyStore {
  /** The counter as it stands now: an expired window counts as no failures. */
  get(kind: PenaltyKind, key: string, windowMs: number): Promise<PenaltyState>;
  recordFailure(kind: PenaltyKind, key: string, rules: PenaltyRules): Promise<{ state: PenaltyState; blockStarted: boolean }>;
  recordRepeat(kind: PenaltyKind, key: string, rules: PenaltyRules): Promise<{ state: PenaltyState; blockStarted: boolean }>;
  activeBlocks(): Promise<PenaltyState[]>;
  all(): Promise<PenaltyState[]>;
  /** Lifts blocks and forgets failures of one key (an IP or a username), or of all; rows removed. */
  clear(key?: string): Promise<number>;
}

export interface AuditStore {
  record(event: AuditEvent, entry?: AuditEntry): Promise<void>;
  /** Newest first; see AuditListOptions. */
  list(options?: AuditListOptions): Promise<AuditListRow[]>;
  /** The account's recent events worth showing its owner (ACTIVITY_EVENTS), newest first. */
  activity(username: string, limit: number): Promise<AuditRow[]>;
}

/** A login the upstream accepted, to be recorded before the client hears OK. */
export interface LoginRecord {
  /** The account, or null for a name mailgate does not know (passthrough). */
  account: Account | null;
  appPassword: AppPasswordInfo | null;
  /** The name as logged in upstream (for the audit row of an unknown name). */
  username: string;
  context: LoginContext;
}

/** What the login path reads and writes. */
export interface LoginStore {
  /** Checks an app password (one argon2 run on every path), recording nothing: lookup, then verifyFound. */
  check(username: string, password: string, protocol: Scope): Promise<VerifyResult>;
  /**
   * check's one read: the account, and the app password the password's
   * selector points at. A login that needs the account anyway (the policy)
   * reads it here, not twice.
   */
  lookup(username: string, password: string): Promise<CredentialLookup>;
  /** check's decision on what lookup read: one argon2 run (or a dummy one), no read. */
  verifyFound(found: CredentialLookup, password: string, protocol: Scope): Promise<VerifyResult>;
  /** Re-reads an app password verified before; null when the rows are not the ones verified. */
  recheck(login: CachedLogin, protocol: Scope): Promise<VerifyResult | null>;
  /** Last use and the login-ok audit event, in one commit; rejects when it cannot be committed. */
  recordSuccess(record: LoginRecord): Promise<void>;
  recordFailure(username: string, reason: string, context: LoginContext): Promise<void>;
}

/** Which sessions' credentials to look up, and how they stand now. */
export interface CredentialsQuery {
  accountIds: readonly number[];
  appPasswordIds: readonly number[];
  /** Normalised names of sessions passed through for names mailgate did not know. */
  names: readonly string[];
}

export interface CredentialsNow {
  accounts: Map<number, Account>;
  appPasswords: Map<number, AppPasswordInfo>;
  accountsByName: Map<string, Account>;
  blockedNames: Set<string>;
}

/** A change this process committed that may end open sessions. */
export interface StoreChange {
  kind: 'account' | 'app-password' | 'totp' | 'block' | 'penalties-cleared' | 'web-sessions';
  username?: string;
}

export interface Store {
  readonly accounts: AccountStore;
  readonly appPasswords: AppPasswordStore;
  readonly totp: TotpStore;
  readonly penalties: PenaltyStore;
  readonly audit: AuditStore;
  readonly logins: LoginStore;
  readonly recoveryCodes: RecoveryCodeStore;
  readonly webSessions: WebSessionStore;

  /** How the credentials of open sessions stand now (for the revocation watcher). */
  credentialsNow(query: CredentialsQuery): Promise<CredentialsNow>;

  /**
   * Resolves when writes work; rejects while they are failing (the database
   * locked, read-only, gone), so that no password is checked while failures
   * could not be counted nor successes recorded.
   */
  writable(): Promise<void>;

  /**
   * Tries a write now (the readiness check): takes the write lock and writes
   * nothing. Rejects when it fails, and then logins are refused as by a
   * failed write, until a write works again; resolves (and lifts that
   * refusal) when it works. `writable()` alone only knows what the last
   * write found, so a lock taken while no one logs in would go unseen.
   */
  probeWrites(): Promise<void>;

  /**
   * Calls `listener` after each change this process commits that may end
   * open sessions (a revocation, a block...), at once. Returns the
   * unsubscribe function.
   */
  onChange(listener: (change: StoreChange) => void): () => void;

  /**
   * An opaque token that moves when another process commits. The watcher
   * compares it between checks; this process's own commits come through
   * onChange instead.
   */
  foreignChangeToken(): Promise<string>;

  /**
   * Drops failure counters past their window and block, audit events past
   * `auditMaxAgeMs` (0: keep), and page sessions past either timeout.
   */
  prune(options: { penaltiesOlderThanMs: number; auditMaxAgeMs: number; webSessions?: WebSessionLimits }): Promise<{ penalties: number; audit: number; webSessions: number }>;

  /** Closes the store; calls after it reject. */
  close(): Promise<void>;
}
