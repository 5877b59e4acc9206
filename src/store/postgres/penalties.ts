/**
 * Failed-login counters and blocks on PostgreSQL, shared by every node: a
 * failure counted on one node counts on all. The arithmetic is
 * penalty-counting.ts's; the row is counted under its own lock. The row is
 * made or locked in one statement (INSERT ... ON CONFLICT DO UPDATE ...
 * RETURNING: no two nodes can both make it), then written back in the same
 * transaction, so two nodes counting at once add up instead of overwriting
 * each other.
 */
import { countedPenalty, currentPenalty } from '../penalty-counting.js';
import { PENALTY_COLUMNS, toPenaltyState, type PenaltyRow } from '../rows.js';
import type { Clock, PenaltyKind, PenaltyRules, PenaltyState } from '../types.js';
import { prepared, type Sql, type Tx } from './database.js';

// Every login reads two penalties, every failure counts two: prepared (database.ts says why).
const GET = prepared(`SELECT ${PENALTY_COLUMNS} FROM penalties WHERE kind = $1 AND key = $2`);
const MAKE_OR_LOCK = prepared(
  `INSERT INTO penalties (kind, key, failures, repeats, window_start, last_failure) VALUES ($1, $2, 0, 0, $3, 0)
   ON CONFLICT (kind, key) DO UPDATE SET kind = excluded.kind RETURNING ${PENALTY_COLUMNS}`,
);
const SAVE = prepared(
  'UPDATE penalties SET failures = $3, repeats = $4, window_start = $5, last_failure = $6, blocked_until = $7 WHERE kind = $1 AND key = $2',
);

export class PgPenalties {
  constructor(private readonly now: Clock) {}

  async get(sql: Sql, kind: PenaltyKind, key: string, windowMs: number): Promise<PenaltyState> {
    const row = await sql.one<PenaltyRow>(GET, [kind, key]);
    return currentPenalty(row ? toPenaltyState(row) : null, kind, key, windowMs, this.now());
  }

  async count(tx: Tx, kind: PenaltyKind, key: string, rules: PenaltyRules, field: 'failures' | 'repeats'): Promise<{ state: PenaltyState; blockStarted: boolean }> {
    const now = this.now();
    // A fresh row is a fresh window (window_start now): the same as no row.
    // One statement makes the row or locks the one there (the no-op update
    // takes the row lock): between a separate insert and SELECT ... FOR
    // UPDATE, another node's clear or prune could delete it, and the
    // failure would be lost.
    const row = await tx.one<PenaltyRow>(MAKE_OR_LOCK, [kind, key, now]);
    const counted = countedPenalty(currentPenalty(row ? toPenaltyState(row) : null, kind, key, rules.windowMs, now), field, rules, now);
    const next = counted.state;
    await tx.run(SAVE, [kind, key, next.failures, next.repeats, next.windowStart, next.lastFailure, next.blockedUntil]);
    return counted;
  }

  async activeBlocks(sql: Sql): Promise<PenaltyState[]> {
    const rows = await sql.rows<PenaltyRow>('SELECT * FROM penalties WHERE blocked_until IS NOT NULL AND blocked_until > $1 ORDER BY blocked_until DESC', [this.now()]);
    return rows.map(toPenaltyState);
  }

  /** Of these account keys, the ones blocked now. */
  async blockedAccounts(sql: Sql, keys: readonly string[]): Promise<Set<string>> {
    if (keys.length === 0) return new Set();
    const rows = await sql.rows<{ key: string }>(
      "SELECT key FROM penalties WHERE kind = 'account' AND key = ANY($1::text[]) AND blocked_until IS NOT NULL AND blocked_until > $2",
      [[...new Set(keys)], this.now()],
    );
    return new Set(rows.map((row) => row.key));
  }

  async all(sql: Sql): Promise<PenaltyState[]> {
    return (await sql.rows<PenaltyRow>('SELECT * FROM penalties ORDER BY last_failure DESC')).map(toPenaltyState);
  }

  clear(sql: Sql, key?: string): Promise<number> {
    return key === undefined ? sql.run('DELETE FROM penalties') : sql.run('DELETE FROM penalties WHERE key = $1', [key]);
  }

  prune(sql: Sql, olderThanMs: number): Promise<number> {
    const now = this.now();
    return sql.run('DELETE FROM penalties WHERE last_failure < $1 AND (blocked_until IS NULL OR blocked_until < $2)', [now - olderThanMs, now]);
  }
}
