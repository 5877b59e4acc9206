/** Shapes shared by the store's repositories and its callers. */

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
