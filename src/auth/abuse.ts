/**
 * Brute-force defence around the credential check.
 *
 * Failed logins are counted per client (IP, or IPv6 /64) and per account.
 * Each failure is answered after a delay that doubles with the count (2 s, 4 s,
 * 8 s, then 15 s by default), and past a threshold the client or the account is
 * blocked for a while: attempts are refused as temporarily unavailable without
 * checking the password at all.
 *
 * Two rules keep legitimate users out of harm's way:
 *  - The same wrong password for the same account counts once per window
 *    towards the blocks and the delays, so a mail program retrying a stale
 *    saved password (Thunderbird tries it three ways per attempt, every few
 *    minutes) does not escalate anything. Each repeat still counts for its
 *    client address, against a much higher threshold of its own, so one
 *    address cannot repeat a guess forever for free.
 *  - An account's block leaves one way in: from a client with no failures of
 *    its own, a password shaped like an app password is still checked, and
 *    only against the account's app passwords, so its owner can still log in.
 *    Anything else (the main password, a passthrough to the upstream) is
 *    refused without a check, from every client: a fresh address is not a
 *    free guess. An app password is generated (75 bits), so one guess per
 *    fresh address is worth nothing to an attacker, and that address has a
 *    failure afterwards.
 *
 * Each client may also only have a few credential checks in flight at once;
 * the rest wait their turn, so one address cannot occupy every hashing slot.
 */
import { createHash, createHmac, randomBytes } from 'node:crypto';
import { FIXED_LIMITS } from '../config/limits.js';
import type { Config } from '../config/schema.js';
import type { Logger } from '../log/logger.js';
import { canonicalAppPassword } from '../store/app-password-format.js';
import type { Store } from '../store/store.js';
import type { PenaltyRules, PenaltyState } from '../store/types.js';
import type { Clock } from '../store/types.js';
import { tryNormaliseUsername } from '../store/username.js';

export interface AbuseRules {
  ip: PenaltyRules;
  account: PenaltyRules;
  delayBaseMs: number;
  delayMaxMs: number;
  maxConcurrentPerClient: number;
}

/** The rules, from the configuration's [limits]. */
export function abuseRules(limits: Config['limits']): AbuseRules {
  return {
    ip: {
      windowMs: limits.ip_failure_window_seconds * 1000,
      blockAfter: limits.ip_block_after,
      repeatBlockAfter: limits.ip_repeat_block_after,
      blockMs: limits.block_seconds * 1000,
    },
    account: { windowMs: limits.account_failure_window_seconds * 1000, blockAfter: limits.account_block_after, blockMs: limits.block_seconds * 1000 },
    delayBaseMs: limits.failure_delay_base_ms,
    delayMaxMs: limits.failure_delay_max_ms,
    maxConcurrentPerClient: limits.max_concurrent_logins_per_ip,
  };
}

export type Admission =
  /** appPasswordsOnly: the account is blocked; check the password against its app passwords only. */
  | { ok: true; release: () => void; appPasswordsOnly: boolean }
  | { ok: false; blockedBy: 'ip' | 'account' };

/** How many (account, wrong password) fingerprints to remember; old ones are forgotten first. */
const MAX_FINGERPRINTS = FIXED_LIMITS.abuse_max_fingerprints;

export class AbuseGuard {
  /** Keyed with a per-process secret: the fingerprints are useless outside this process. */
  private readonly fingerprintKey = randomBytes(32);
  private readonly seen = new Map<string, number>();
  private readonly inFlight = new Map<string, { running: number; waiting: Array<() => void> }>();

  constructor(
    private readonly store: Store,
    private rules: AbuseRules,
    private readonly log: Logger,
    private readonly now: Clock = Date.now,
  ) {}

  /**
   * New rules from a reload, for the attempts that follow. The guard itself
   * is kept: its per-client slots in use and the fingerprints of passwords
   * already counted must outlive a reload.
   */
  useRules(rules: AbuseRules): void {
    this.rules = rules;
  }

  /**
   * Waits for a credential-check slot for this client, then says whether the
   * attempt may be checked at all. Call `release` when the check is over.
   * `username` is the account the attempt counts against (see AuthPolicy.penaltyAccount).
   */
  async admit(clientKey: string, username: string, password: Buffer): Promise<Admission> {
    await this.acquire(clientKey);
    const release = once(() => this.release(clientKey));
    try {
      const penalties = this.store.penalties;
      const account = tryNormaliseUsername(username);
      // Both read at once: on a database across the network each read is a round trip of every login.
      const [ip, accountState] = await Promise.all([
        penalties.get('ip', clientKey, this.rules.ip.windowMs),
        account === null ? null : penalties.get('account', account, this.rules.account.windowMs),
      ]);
      if (this.isBlocked(ip)) {
        release();
        return { ok: false, blockedBy: 'ip' };
      }
      if (accountState !== null && this.isBlocked(accountState)) {
        if (ip.failures > 0 || canonicalAppPassword(password.toString('utf8')) === null) {
          release();
          return { ok: false, blockedBy: 'account' };
        }
        return { ok: true, release, appPasswordsOnly: true };
      }
      return { ok: true, release, appPasswordsOnly: false };
    } catch (err) {
      release();
      throw err;
    }
  }

  /** Whether the account is blocked now (a second-factor check from outside the mail protocols asks this). */
  async accountBlocked(account: string): Promise<boolean> {
    const key = tryNormaliseUsername(account);
    return key !== null && this.isBlocked(await this.store.penalties.get('account', key, this.rules.account.windowMs));
  }

  /**
   * Counts a refused login and returns how long to wait before answering it.
   * `account` is the name the attempt counts against (see AuthPolicy.penaltyAccount);
   * `clientKey` null: not from the network (the CLI), counted for the account only.
   * A repeat of a wrong password already counted for the account counts
   * only as a repeat of its client, and is delayed like the failures before it.
   */
  async recordFailure(clientKey: string | null, account: string, password: Buffer): Promise<number> {
    // A name that cannot be an account (over-long, control characters) is
    // still counted, under a short stand-in, so it cannot bloat the table.
    const key = tryNormaliseUsername(account) ?? `invalid:${createHash('sha256').update(account).digest('hex').slice(0, 16)}`;
    const penalties = this.store.penalties;
    const repeat = this.isRepeat(key, password);
    const ip = clientKey === null ? null : await (repeat ? penalties.recordRepeat('ip', clientKey, this.rules.ip) : penalties.recordFailure('ip', clientKey, this.rules.ip));
    const acct = repeat
      ? { state: await penalties.get('account', key, this.rules.account.windowMs), blockStarted: false }
      : await penalties.recordFailure('account', key, this.rules.account);
    for (const { state, blockStarted } of ip ? [ip, acct] : [acct]) {
      // The store tells the revocation watcher itself (Store.onChange).
      if (blockStarted) this.log.warn({ kind: state.kind, key: state.key, failures: state.failures, repeats: state.repeats, until: new Date(state.blockedUntil!).toISOString() }, 'temporary block started');
    }
    return this.delayFor(Math.max(ip?.state.failures ?? 0, acct.state.failures, 1));
  }

  /** The answer delay after `failures` failures: base, doubling, capped. */
  delayFor(failures: number): number {
    return Math.min(this.rules.delayMaxMs, this.rules.delayBaseMs * 2 ** Math.min(30, Math.max(0, failures - 1)));
  }

  private isBlocked(state: PenaltyState): boolean {
    return state.blockedUntil !== null && state.blockedUntil > this.now();
  }

  /** True if this wrong password was already counted for this account in the window. */
  private isRepeat(account: string, password: Buffer): boolean {
    const fingerprint = createHmac('sha256', this.fingerprintKey).update(account).update('\0').update(password).digest('base64url');
    const now = this.now();
    const expires = this.seen.get(fingerprint);
    if (expires !== undefined && expires > now) return true;
    this.seen.delete(fingerprint);
    this.seen.set(fingerprint, now + this.rules.account.windowMs);
    if (this.seen.size > MAX_FINGERPRINTS) {
      // Maps iterate in insertion order: the first key is the oldest.
      this.seen.delete(this.seen.keys().next().value!);
    }
    return false;
  }

  private acquire(clientKey: string): Promise<void> {
    let slot = this.inFlight.get(clientKey);
    if (!slot) {
      slot = { running: 0, waiting: [] };
      this.inFlight.set(clientKey, slot);
    }
    if (slot.running < this.rules.maxConcurrentPerClient) {
      slot.running += 1;
      return Promise.resolve();
    }
    return new Promise((resolve) => slot.waiting.push(resolve));
  }

  private release(clientKey: string): void {
    const slot = this.inFlight.get(clientKey);
    if (!slot) return;
    const next = slot.waiting.shift();
    if (next) {
      next();
      return;
    }
    slot.running -= 1;
    if (slot.running === 0) this.inFlight.delete(clientKey);
  }
}

function once(fn: () => void): () => void {
  let done = false;
  return () => {
    if (done) return;
    done = true;
    fn();
  };
}
