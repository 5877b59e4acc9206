/**
 * The arithmetic of failed-login counters, for every engine: the window,
 * the two counts (failures and repeats) and when a block starts. The engines
 * only read and write the row, each under its own lock.
 */
import type { PenaltyKind, PenaltyRules, PenaltyState } from './types.js';

/** The counter as it stands at `now`: no row, or an expired window, counts as no failures. */
export function currentPenalty(state: PenaltyState | null, kind: PenaltyKind, key: string, windowMs: number, now: number): PenaltyState {
  if (!state) return { kind, key, failures: 0, repeats: 0, windowStart: now, lastFailure: 0, blockedUntil: null };
  if (now - state.windowStart >= windowMs) {
    return { ...state, failures: 0, repeats: 0, windowStart: now, blockedUntil: state.blockedUntil !== null && state.blockedUntil > now ? state.blockedUntil : null };
  }
  return state;
}

/** The counter after one more failure (or repeat); a block starts when the window's count reaches its threshold. */
export function countedPenalty(current: PenaltyState, field: 'failures' | 'repeats', rules: PenaltyRules, now: number): { state: PenaltyState; blockStarted: boolean } {
  const next: PenaltyState = { ...current, [field]: current[field] + 1, lastFailure: now };
  const threshold = field === 'failures' ? rules.blockAfter : rules.repeatBlockAfter;
  const free = current.blockedUntil === null || current.blockedUntil <= now;
  const blockStarted = threshold !== undefined && next[field] >= threshold && free;
  if (blockStarted) next.blockedUntil = now + rules.blockMs;
  return { state: next, blockStarted };
}
