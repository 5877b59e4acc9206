/**
 * Log lines a storm would repeat thousands of times a minute: refusals of a
 * wrong password already refused, attempts turned away by a block, temporary
 * failures. Lines are grouped by message, client address and what the caller
 * says makes them the same (the user and the reason, say): the first few
 * lines of a group in each period are written as they come; the rest of the
 * period's are counted, and one summary line (the last one's fields plus
 * `repeated: N`) is written when the period ends. fail2ban therefore still
 * sees every such address, at least once per period, while a storm writes a
 * few lines per address per period instead of megabytes.
 */
import type { Logger } from './logger.js';

type Level = 'info' | 'warn';

interface Pending {
  level: Level;
  msg: string;
  fields: Record<string, unknown>;
  count: number;
}

export class RepeatedLines {
  /** Lines written in full this period, per group. */
  private readonly written = new Map<string, number>();
  private readonly pending = new Map<string, Pending>();
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly log: Logger,
    private readonly periodMs: number,
    /** Lines of a group written in full per period before the rest are counted. */
    private readonly burst = 1,
  ) {}

  /** `same`: what, besides the message and the address, makes two lines the same one repeated. */
  write(level: Level, msg: string, same: string, fields: { clientIp: string } & Record<string, unknown>): void {
    const key = `${msg}\0${fields.clientIp}\0${same}`;
    const written = this.written.get(key) ?? 0;
    if (written < this.burst) {
      this.written.set(key, written + 1);
      this.log[level](fields, msg);
      this.arm();
      return;
    }
    const entry = this.pending.get(key);
    if (entry) {
      entry.count += 1;
      entry.fields = fields;
    } else {
      this.pending.set(key, { level, msg, fields, count: 1 });
    }
  }

  /** Writes the summaries of the period and starts a new one. */
  flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    for (const entry of this.pending.values()) this.log[entry.level]({ ...entry.fields, repeated: entry.count }, entry.msg);
    this.pending.clear();
    this.written.clear();
  }

  private arm(): void {
    if (this.timer) return;
    this.timer = setTimeout(() => this.flush(), this.periodMs);
    // Never what keeps the process alive: shutdown flushes explicitly.
    this.timer.unref();
  }
}
