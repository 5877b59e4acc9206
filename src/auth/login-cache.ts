/**
 * The verified-login cache: after argon2 confirmed an app password once, the
 * next logins with the same credentials skip argon2 for a while. Mail
 * programs reconnect all day (Thunderbird keeps several connections, phones
 * reconnect on every network change), so this is most logins.
 *
 * Entries are keyed by an HMAC, with a random per-process key, of the account
 * and the password: the password itself is never stored, and the keys are
 * worthless outside this process. A hit only says "this password matched app
 * password N"; the caller still reads that row (revoked? expired? in scope?
 * TOTP state unchanged?) before letting anyone in, so a revocation made by
 * another process applies to the very next login.
 *
 * The negative side remembers refusals, so repeating one costs no hashing
 * and no upstream check: app-password-shaped guesses that failed argon2 (by
 * their canonical form, so spacing and case variants are one guess), and
 * every refused attempt as typed (protocol, name, authzid, password bytes),
 * whatever the password's shape. A remembered refusal carries a stamp of the
 * account's state when it was decided (exists? which one? two-step state?);
 * the caller re-reads the account and trusts the entry only while the stamp
 * still matches, so adding an account or turning 2FA off takes effect at
 * once. It never shortens a penalty: the caller counts and delays every
 * failure as before.
 */
import { createHmac, randomBytes } from 'node:crypto';
import type { Clock } from '../store/types.js';
import type { CachedLogin } from '../store/types.js';

export type { CachedLogin };


export interface LoginCacheOptions {
  ttlMs: number;
  maxEntries: number;
  negativeTtlMs: number;
  negativeMaxEntries: number;
}

interface Entry<T> {
  value: T;
  expiresAt: number;
}

/** A Map used as an LRU: insertion order is recency order. */
class LruMap<T> {
  private readonly map = new Map<string, Entry<T>>();

  constructor(
    private readonly maxEntries: number,
    private readonly ttlMs: number,
    private readonly now: Clock,
  ) {}

  get size(): number {
    return this.map.size;
  }

  get(key: string): T | undefined {
    const entry = this.map.get(key);
    if (!entry) return undefined;
    this.map.delete(key);
    if (entry.expiresAt <= this.now()) return undefined;
    this.map.set(key, entry); // most recently used goes last
    return entry.value;
  }

  set(key: string, value: T): void {
    if (this.ttlMs <= 0 || this.maxEntries <= 0) return;
    this.map.delete(key);
    this.map.set(key, { value, expiresAt: this.now() + this.ttlMs });
    while (this.map.size > this.maxEntries) this.map.delete(this.map.keys().next().value!);
  }

  delete(key: string): void {
    this.map.delete(key);
  }

  clear(): void {
    this.map.clear();
  }
}

/** A refusal decided before, and the account state it was decided on. */
export interface KnownRefusal {
  reason: string;
  /** The name the refusal was about (for the log and the penalties). */
  username: string;
  stamp: string;
}

/** What the attempt was, for the refusal side's key: the whole of what the client sent. */
export interface AttemptShape {
  protocol: string;
  username: string;
  authzid: string;
  password: Buffer;
}

export class LoginCache {
  private readonly key = randomBytes(32);
  private readonly verified: LruMap<CachedLogin>;
  private readonly failed: LruMap<string>;
  private readonly refused: LruMap<KnownRefusal>;

  constructor(options: LoginCacheOptions, now: Clock = Date.now) {
    this.verified = new LruMap(options.maxEntries, options.ttlMs, now);
    this.failed = new LruMap(options.negativeMaxEntries, options.negativeTtlMs, now);
    this.refused = new LruMap(options.negativeMaxEntries, options.negativeTtlMs, now);
  }

  get size(): { verified: number; failed: number; refused: number } {
    return { verified: this.verified.size, failed: this.failed.size, refused: this.refused.size };
  }

  /** The refusal side's key for an attempt exactly as sent. */
  attemptKey(attempt: AttemptShape): string {
    return createHmac('sha256', this.key)
      .update(`attempt\0${attempt.protocol}\0${attempt.username}\0${attempt.authzid}\0`)
      .update(attempt.password)
      .digest('base64url');
  }

  /** The refusal this exact attempt got recently, if any (the caller checks the stamp). */
  knownRefusal(key: string): KnownRefusal | undefined {
    return this.refused.get(key);
  }

  rememberRefusal(key: string, refusal: KnownRefusal): void {
    this.refused.set(key, refusal);
  }

  forgetRefusal(key: string): void {
    this.refused.delete(key);
  }

  /** Forgets every refusal (the policy changed: a reload). */
  clearRefusals(): void {
    this.refused.clear();
    this.failed.clear();
  }

  /** The cache key for (account, canonical app password). */
  keyFor(username: string, canonicalPassword: string): string {
    return createHmac('sha256', this.key).update(username).update('\0').update(canonicalPassword).digest('base64url');
  }

  verifiedLogin(key: string): CachedLogin | undefined {
    return this.verified.get(key);
  }

  rememberVerified(key: string, login: CachedLogin): void {
    this.failed.delete(key);
    this.verified.set(key, login);
  }

  forgetVerified(key: string): void {
    this.verified.delete(key);
  }

  /** Why this exact guess failed before, if it did recently. */
  knownFailure(key: string): string | undefined {
    return this.failed.get(key);
  }

  rememberFailure(key: string, reason: string): void {
    this.failed.set(key, reason);
  }
}
