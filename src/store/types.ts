/** Shapes shared by the store's repositories and its callers. */
import type { PasswordHasher } from './hasher.js';

/** What every engine is opened with, besides where its data is. */
export interface EngineOptions {
  keyFile: string;
  argon2: { memoryKib: number; iterations: number; parallelism: number };
  hashConcurrency?: number;
  hashQueue?: number;
  maxAppPasswords: number;
  totpIssuer?: string;
  now?: Clock;
  /** Share one hasher (and its concurrency limit) across reopened stores. */
  hasher?: PasswordHasher;
  /** Refuse a store that does not exist yet (and a missing key file) instead of making it. */
  mustExist?: boolean;
  /** Bring an older schema up to date (the gateway, and `store migrate`); other opens refuse it. */
  upgrade?: boolean;
  /** upstream.login.separator, which new account names may not contain; default `*` (Dovecot's usual). */
  masterSeparator?: string;
}

export type TotpState = 'none' | 'pending' | 'enabled';

export const SCOPES = ['imap', 'pop3'] as const;
export type Scope = (typeof SCOPES)[number];

export interface Account {
  id: number;
  username: string;
  createdAt: number;
  totpState: TotpState;
  /** When two-step verification last changed state; sessions older than this may be stale. */
  totpChangedAt: number | null;
}

export type AppPasswordStatus = 'active' | 'expired' | 'revoked';

export interface AppPasswordInfo {
  id: number;
  accountId: number;
  name: string;
  scopes: Scope[];
  createdAt: number;
  expiresAt: number | null;
  revokedAt: number | null;
  lastUsed: { at: number; ip: string | null; protocol: string | null; client: string | null } | null;
}

/** A clock in Unix milliseconds; injectable so expiry and TOTP can be tested. */
export type Clock = () => number;

export function appPasswordStatus(info: Pick<AppPasswordInfo, 'expiresAt' | 'revokedAt'>, now: number): AppPasswordStatus {
  if (info.revokedAt !== null) return 'revoked';
  if (info.expiresAt !== null && info.expiresAt <= now) return 'expired';
  return 'active';
}

/** A row as the verifier needs it: the public info plus the hash to check. */
export interface AppPasswordCandidate {
  info: AppPasswordInfo;
  hash: string;
}

export interface CreateOptions {
  name: string;
  scopes?: readonly Scope[];
  expiresAt?: number | null;
  /**
   * Self-service issuance: a current code from the account's authenticator
   * app, checked and consumed in the same transaction as the insert. A
   * create refused for another reason (duplicate name, limit) keeps the code
   * unspent; a wrong code creates nothing.
   */
  totpCode?: string;
}

export interface CreatedAppPassword {
  info: AppPasswordInfo;
  /** Shown once, in groups of four: "abcd efgh ijkl mnop". */
  password: string;
}

export const AUDIT_EVENTS = [
  'account-added',
  'account-removed',
  'created',
  'revoked',
  'revoked-all',
  'totp-enrolled',
  'totp-enabled',
  'totp-disabled',
  'totp-failed',
  'login-ok',
  'login-failed',
  /** An app password used from an address it had not been used from before. */
  'new-address',
  'recovery-codes-created',
  'recovery-code-used',
  'web-sign-in',
  'web-sign-out',
  'web-sessions-ended',
] as const;
export type AuditEvent = (typeof AUDIT_EVENTS)[number];

export interface AuditEntry {
  username?: string | null;
  appPasswordId?: number | null;
  ip?: string | null;
  protocol?: string | null;
  /** A short machine-readable reason or note, e.g. "wrong-password". */
  detail?: string | null;
}

export interface AuditRow extends Required<AuditEntry> {
  id: number;
  at: number;
  event: AuditEvent;
}

/** What the audit trail is read for (the CLI's `mailgate audit`). */
export interface AuditListOptions {
  /** One account's events (the normalised name); all when absent. */
  username?: string;
  /** Events at or after this time (Unix ms). */
  since?: number;
  /** At most this many, the newest; default 100. */
  limit?: number;
}

/** An audit row as listed: with the name of its app password, while that still exists. */
export interface AuditListRow extends AuditRow {
  appPasswordName: string | null;
}

export type PenaltyKind = 'ip' | 'account';

export interface PenaltyState {
  kind: PenaltyKind;
  key: string;
  /** Distinct failures counted in the current window. */
  failures: number;
  /** Repeats of an already counted failure in the current window. */
  repeats: number;
  windowStart: number;
  lastFailure: number;
  blockedUntil: number | null;
}

export interface PenaltyRules {
  windowMs: number;
  /** Failures in the window that start a block. */
  blockAfter: number;
  /** Repeats in the window that start a block; none: repeats never block. */
  repeatBlockAfter?: number;
  blockMs: number;
}

export interface Enrolment {
  /** Base32, for typing into an app by hand. */
  secret: string;
  /** otpauth:// URI, for a QR code. */
  uri: string;
}

/** What the verified-login cache remembers of a successful app-password check. */
export interface CachedLogin {
  accountId: number;
  /** Ids can be reused after a row is deleted; the creation times tell the rows apart. */
  accountCreatedAt: number;
  appPasswordId: number;
  appPasswordCreatedAt: number;
  /** The account's TOTP state change time when cached: any change since invalidates the entry. */
  totpChangedAt: number | null;
}

export type VerifyFailureReason = 'unknown-account' | 'wrong-password' | 'revoked' | 'expired' | 'out-of-scope';

/**
 * What a login's first look at the store found: the account, and the app
 * password the typed password's selector points at. Only LoginStore.verify
 * reads it (the hash is in it): callers hand it back as it is.
 */
export interface CredentialLookup {
  account: Account | null;
  candidate: AppPasswordCandidate | null;
}

export type VerifyResult =
  | { ok: true; account: Account; appPassword: AppPasswordInfo }
  | { ok: false; reason: VerifyFailureReason; account: Account | null };

/** Where a login came in: a mail protocol, or the self-service page. */
export type Channel = Scope | 'web';

export interface LoginContext {
  protocol: Channel;
  clientIp: string | null;
  /** "name/version" from the client's ID command, when it sent one. */
  client?: string | null;
}

export interface BackupResult {
  file: string;
  bytes: number;
  pages: number;
}

export interface CheckResult {
  ok: boolean;
  schemaVersion: number | null;
  /** What PRAGMA integrity_check found: ['ok'], or the problems. */
  integrity: string[];
  foreignKeys: Array<{ table: string; rowid: number | null; parent: string; fkid: number }>;
}

/** The events shown to a user as "Recent security activity": not every login, the ones worth a look. */
export const ACTIVITY_EVENTS: readonly AuditEvent[] = [
  'web-sign-in',
  'login-failed',
  'created',
  'new-address',
  'revoked',
  'revoked-all',
  'totp-enabled',
  'totp-disabled',
  'recovery-codes-created',
  'recovery-code-used',
  'web-sessions-ended',
  'account-added',
];

/** A session of the self-service page, as the store keeps it (only a hash of its id). */
/** When a page session ends by itself: unused this long, or this long after it began. */
export interface WebSessionLimits {
  idleMs: number;
  maxMs: number;
}

/** Whether a page session is past its idle or absolute timeout at `now` (exactly at a limit is still in time). */
export function webSessionExpired(session: { createdAt: number; lastSeenAt: number }, limits: WebSessionLimits, now: number): boolean {
  return now - session.lastSeenAt > limits.idleMs || now - session.createdAt > limits.maxMs;
}

export interface WebSessionRecord {
  /** SHA-256 of the session id, hex: the id itself is never stored. */
  idHash: string;
  /** The account, once the user has signed in (password, and code when 2-step verification is on). */
  accountId: number | null;
  createdAt: number;
  lastSeenAt: number;
  /** When the password was last confirmed (sign-in or "Confirm it's you"): sensitive actions need it recent. */
  passwordAt: number | null;
  /** Where it was last used from, for the user's and the administrator's lists. */
  ip: string | null;
  userAgent: string | null;
  /** The session's own data (the web layer's, opaque to the store): JSON. */
  data: string;
}

/** A page session as listed to people: no id, no hash. */
export interface WebSessionInfo {
  createdAt: number;
  lastSeenAt: number;
  passwordAt: number | null;
  ip: string | null;
  userAgent: string | null;
}
