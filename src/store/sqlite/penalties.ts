/**
 * Failed-login counters and temporary blocks, per client (IP or IPv6 /64)
 * and per account. They live in the database so that `mailgate blocks` (another
 * process) sees and lifts them, and so a restart does not hand an attacker a
 * fresh budget.
 *
 * Two counts per row: `failures` (distinct wrong passwords) and `repeats` (a
 * wrong password already counted, tried again). Each has its own threshold,
 * so a stale saved password retried all day does not block a household, while
 * an address repeating one guess forever is still stopped.
 */
import { selectIn, type Db } from './database.js';
import { countedPenalty, currentPenalty } from '../penalty-counting.js';
import { toPenaltyState, type PenaltyRow } from '../rows.js';
import type { Clock, PenaltyKind, PenaltyState, PenaltyRules } from '../types.js';

type Row = PenaltyRow;
const toState = toPenaltyState;

export class PenaltyRepository {
  private readonly select;
  private readonly upsert;

  constructor(
    private readonly db: Db,
    private readonly now: Clock,
  ) {
    this.select = db.prepare('SELECT * FROM penalties WHERE kind = ? AND key = ?');
    this.upsert = db.prepare(
      `INSERT INTO penalties (kind, key, failures, repeats, window_start, last_failure, blocked_until)
       VALUES (@kind, @key, @failures, @repeats, @windowStart, @lastFailure, @blockedUntil)
       ON CONFLICT (kind, key) DO UPDATE SET failures = excluded.failures, repeats = excluded.repeats,
         window_start = excluded.window_start, last_failure = excluded.last_failure, blocked_until = excluded.blocked_until`,
    );
  }

  /** The counter as it stands now: an expired window counts as no failures. */
  get(kind: PenaltyKind, key: string, windowMs: number): PenaltyState {
    const row = this.select.get(kind, key) as Row | undefined;
    return currentPenalty(row ? toState(row) : null, kind, key, windowMs, this.now());
  }

  /** Counts one failure; starts a block when the window's count reaches the threshold. */
  recordFailure(kind: PenaltyKind, key: string, rules: PenaltyRules): { state: PenaltyState; blockStarted: boolean } {
    return this.count(kind, key, rules, 'failures');
  }

  /** Counts one repeat of a failure already counted; starts a block at the repeat threshold. */
  recordRepeat(kind: PenaltyKind, key: string, rules: PenaltyRules): { state: PenaltyState; blockStarted: boolean } {
    return this.count(kind, key, rules, 'repeats');
  }

  private count(kind: PenaltyKind, key: string, rules: PenaltyRules, field: 'failures' | 'repeats'): { state: PenaltyState; blockStarted: boolean } {
    return this.db
      .transaction(() => {
        const counted = countedPenalty(this.get(kind, key, rules.windowMs), field, rules, this.now());
        this.upsert.run(counted.state);
        return counted;
      })
      .immediate();
  }

  /** Blocks in force now. */
  activeBlocks(): PenaltyState[] {
    const rows = this.db
      .prepare('SELECT * FROM penalties WHERE blocked_until IS NOT NULL AND blocked_until > ? ORDER BY blocked_until DESC')
      .all(this.now()) as Row[];
    return rows.map(toState);
  }

  /** Of these account keys, the ones blocked now (for closing sessions of names that got blocked). */
  blockedAccounts(keys: readonly string[]): Set<string> {
    const now = this.now();
    const rows = selectIn<{ key: string; blocked_until: number | null }>(
      this.db,
      "SELECT key, blocked_until FROM penalties WHERE kind = 'account' AND key IN",
      keys,
    );
    return new Set(rows.filter((row) => row.blocked_until !== null && row.blocked_until > now).map((row) => row.key));
  }

  /** Counters with failures in their window (for `blocks list --all`). */
  all(): PenaltyState[] {
    return (this.db.prepare('SELECT * FROM penalties ORDER BY last_failure DESC').all() as Row[]).map(toState);
  }

  /** Lifts blocks and forgets failures: for one key (an IP or a username), or for all. Returns rows removed. */
  clear(key?: string): number {
    if (key === undefined) return this.db.prepare('DELETE FROM penalties').run().changes;
    return this.db.prepare('DELETE FROM penalties WHERE key = ?').run(key).changes;
  }

  /** Drops counters whose window and block are long over, so the table stays small. */
  prune(olderThanMs: number): number {
    const cutoff = this.now() - olderThanMs;
    return this.db
      .prepare('DELETE FROM penalties WHERE last_failure < ? AND (blocked_until IS NULL OR blocked_until < ?)')
      .run(cutoff, this.now()).changes;
  }
}
