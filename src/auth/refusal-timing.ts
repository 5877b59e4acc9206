/**
 * Makes every refused login take about as long, wherever it was refused.
 *
 * Some refusals are decided locally (one argon2 run: tens of milliseconds),
 * others by the upstream (a wrong main password passed through: Dovecot
 * answers failures after its auth_failure_delay, 2 s by default). Without
 * this, an attacker could tell accounts mailgate knows (main password checked
 * upstream) from unknown ones (refused locally) by the clock alone.
 *
 * Each refusal's own duration is recorded in its pool (local or upstream).
 * Before answering, a refusal waits until it is as old as a duration drawn
 * at random from the other pool, so both kinds of answer follow the slower
 * distribution. With one pool empty (a configuration without passthrough)
 * nothing waits.
 */

import { FIXED_LIMITS } from '../config/limits.js';

export type RefusalSource = 'local' | 'upstream';

const SAMPLES = FIXED_LIMITS.refusal_timing_samples;
/** Never wait longer than this, whatever the upstream did: a stuck upstream must not stall refusals. */
const MAX_FLOOR_MS = FIXED_LIMITS.refusal_timing_max_floor_ms;

export class RefusalTiming {
  private readonly pools = new Map<string, number[]>();

  /**
   * @param upstreamEstimateMs how long the upstream is expected to take to
   *   refuse (Dovecot: auth_failure_delay, 2 s by default), used for the
   *   protocols in `protocols` until real refusals have been measured, so
   *   the first minutes after a start are covered too; 0 for none.
   */
  constructor(
    upstreamEstimateMs = 0,
    protocols: readonly string[] = [],
    private readonly random: () => number = Math.random,
  ) {
    if (upstreamEstimateMs > 0) for (const protocol of protocols) this.record(`${protocol}:upstream`, upstreamEstimateMs);
  }

  /** Records how long a refusal took, and returns how much longer to wait before answering it. */
  settle(protocol: string, source: RefusalSource, elapsedMs: number): number {
    this.record(`${protocol}:${source}`, elapsedMs);
    const other = this.pools.get(`${protocol}:${source === 'local' ? 'upstream' : 'local'}`);
    if (!other || other.length === 0) return 0;
    const floor = Math.min(MAX_FLOOR_MS, other[Math.floor(this.random() * other.length)]!);
    return Math.max(0, floor - elapsedMs);
  }

  private record(key: string, ms: number): void {
    let pool = this.pools.get(key);
    if (!pool) this.pools.set(key, (pool = []));
    pool.push(ms);
    if (pool.length > SAMPLES) pool.shift();
  }
}
