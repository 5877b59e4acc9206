/**
 * Periodic clean-up of what grows with traffic: failure counters whose
 * window and block are long over, and audit events past their retention.
 * Without it a steady trickle of guesses under ever-new names would grow the
 * database without bound.
 */
import type { Config } from '../config/schema.js';
import type { Logger } from '../log/logger.js';
import type { StoreHandle } from '../store/store-handle.js';
import { errorMessage } from '../errors.js';

const EVERY_MS = 10 * 60_000;
const DAY_MS = 86_400_000;

export class Housekeeping {
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly store: StoreHandle,
    private readonly config: Config,
    private readonly log: Logger,
  ) {}

  start(): void {
    this.timer = setInterval(() => this.run(), EVERY_MS);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** One pass; public so tests can drive it. */
  run(): { penalties: number; audit: number } {
    const { limits, store } = this.config;
    // A counter is useless once its window has passed and its block ended.
    const penaltyAge = Math.max(limits.ip_failure_window_seconds, limits.account_failure_window_seconds, limits.block_seconds) * 1000;
    try {
      const current = this.store.get();
      const penalties = current.penalties.prune(penaltyAge);
      const audit = store.audit_retention_days > 0 ? current.audit.prune(store.audit_retention_days * DAY_MS) : 0;
      if (penalties + audit > 0) this.log.debug({ penalties, audit }, 'housekeeping removed old rows');
      return { penalties, audit };
    } catch (err) {
      this.store.failed(err);
      this.log.warn({ err: errorMessage(err) }, 'housekeeping failed');
      return { penalties: 0, audit: 0 };
    }
  }
}
