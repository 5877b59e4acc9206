/**
 * The tables' rows as both engines return them (snake_case columns), and
 * their mapping to the shapes the rest of mailgate sees: one definition, so
 * the engines cannot drift apart in what a row means.
 */
import { SCOPES, type Account, type AppPasswordInfo, type AuditEntry, type AuditEvent, type PenaltyKind, type PenaltyState, type Scope, type TotpState, type WebSessionRecord } from './types.js';

export interface AccountRow {
  id: number;
  username: string;
  created_at: number;
  totp_state: TotpState;
  totp_changed_at: number | null;
}

/** The account columns every read selects (never the secret). */
export const ACCOUNT_COLUMNS = 'id, username, created_at, totp_state, totp_changed_at';

export function toAccount(row: AccountRow): Account {
  return {
    id: row.id,
    username: row.username,
    createdAt: row.created_at,
    totpState: row.totp_state,
    totpChangedAt: row.totp_changed_at,
  };
}

export interface AppPasswordRow {
  id: number;
  account_id: number;
  name: string;
  selector: string;
  hash: string;
  scopes: string;
  created_at: number;
  expires_at: number | null;
  revoked_at: number | null;
  last_used_at: number | null;
  last_used_ip: string | null;
  last_used_protocol: string | null;
  last_used_client: string | null;
}

/** Every app-password column, named (a prepared statement must not select `*`: see postgres/database.ts). */
export const APP_PASSWORD_COLUMNS =
  'id, account_id, name, selector, hash, scopes, created_at, expires_at, revoked_at, last_used_at, last_used_ip, last_used_protocol, last_used_client';

export function toAppPasswordInfo(row: AppPasswordRow): AppPasswordInfo {
  return {
    id: row.id,
    accountId: row.account_id,
    name: row.name,
    scopes: row.scopes.split(',').filter((s): s is Scope => (SCOPES as readonly string[]).includes(s)),
    createdAt: row.created_at,
    expiresAt: row.expires_at,
    revokedAt: row.revoked_at,
    lastUsed:
      row.last_used_at === null
        ? null
        : { at: row.last_used_at, ip: row.last_used_ip, protocol: row.last_used_protocol, client: row.last_used_client },
  };
}

export interface PenaltyRow {
  kind: PenaltyKind;
  key: string;
  failures: number;
  repeats: number;
  window_start: number;
  last_failure: number;
  blocked_until: number | null;
}

/** Every penalty column, named. */
export const PENALTY_COLUMNS = 'kind, key, failures, repeats, window_start, last_failure, blocked_until';

export function toPenaltyState(row: PenaltyRow): PenaltyState {
  return {
    kind: row.kind,
    key: row.key,
    failures: row.failures,
    repeats: row.repeats,
    windowStart: row.window_start,
    lastFailure: row.last_failure,
    blockedUntil: row.blocked_until,
  };
}

export interface WebSessionRow {
  id_hash: string;
  account_id: number | null;
  created_at: number;
  last_seen_at: number;
  password_at: number | null;
  ip: string | null;
  user_agent: string | null;
  data: string;
}

export function toWebSessionRecord(row: WebSessionRow): WebSessionRecord {
  return {
    idHash: row.id_hash,
    accountId: row.account_id,
    createdAt: row.created_at,
    lastSeenAt: row.last_seen_at,
    passwordAt: row.password_at,
    ip: row.ip,
    userAgent: row.user_agent,
    data: row.data,
  };
}

/** The audit columns as AuditRow names them. */
/** An audit row's values, in the order of both engines' INSERT (at, event, username, app_password_id, ip, protocol, detail). */
export function auditValues(at: number, event: AuditEvent, entry: AuditEntry): [number, AuditEvent, string | null, number | null, string | null, string | null, string | null] {
  return [at, event, entry.username ?? null, entry.appPasswordId ?? null, entry.ip ?? null, entry.protocol ?? null, entry.detail ?? null];
}

export const AUDIT_COLUMNS = 'id, at, event, username, app_password_id AS "appPasswordId", ip, protocol, detail';
