/**
 * Periodic clean-up of what grows with traffic: failure counters whose
 * window and block are long over, and audit events past their retention.
 * Without it a steady trickle of guesses under ever-new names would grow the
 * database without bound.
 */
import { FIXED_LIMITS } from '../config/limits.js';
import { webSessionLimits, type Config } from '../config/schema.js';
import type { Logger } from '../log/logger.js';
import type { Store } from '../store/store.js';
import { errorMessage } from '../errors.js';

const DAY_MS = 86_400_000;

export class Housekeeping {
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly store: Store,
    /** Replaced by a reload: the next pass uses the new retention and windows. */
    public config: Config,
    private readonly log: Logger,
  ) {}

  start(): void {
    this.timer = setInterval(() => void this.run(), FIXED_LIMITS.housekeeping_interval_seconds * 1000);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** One pass; public so tests can drive it. */
  async run(): Promise<{ penalties: number; audit: number; webSessions: number }> {
    const { limits, store } = this.config;
    // A counter is useless once its window has passed and its block ended.
    const penaltyAge = Math.max(limits.ip_failure_window_seconds, limits.account_failure_window_seconds, limits.block_seconds) * 1000;
    try {
      const removed = await this.store.prune({
        penaltiesOlderThanMs: penaltyAge,
        auditMaxAgeMs: store.audit_retention_days * DAY_MS,
        // A page session past either timeout is over: its row can go.
        webSessions: webSessionLimits(this.config),
      });
      if (removed.penalties + removed.audit + removed.webSessions > 0) this.log.debug(removed, 'housekeeping removed old rows');
      return removed;
    } catch (err) {
      this.log.warn({ err: errorMessage(err) }, 'housekeeping failed');
      return { penalties: 0, audit: 0, webSessions: 0 };
    }
  }
}
