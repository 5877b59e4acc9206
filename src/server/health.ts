/**
 * The readiness checks behind /readyz and the `mailgate_*_up` gauges, run in
 * the background so that a load balancer's frequent requests cost nothing
 * and cannot pile work onto the store or the mail server:
 *   - store: a write probe (the write lock taken, nothing written);
 *   - upstream_imap / upstream_pop3: each upstream a listener uses, reached
 *     as a login would (TLS and certificate verification as configured);
 *   - master_login_imap / master_login_pop3: a master login for
 *     `upstream.login.probe_account`, then LOGOUT/QUIT. Never a user's
 *     password. Dovecot's master passdb always needs an account to log in
 *     as, so without a probe account this check is skipped (and says so):
 *     a login as an account that does not exist would pass for Dovecot's
 *     configuration of today only, and fill its log with failed logins.
 * Each result says when it was taken; a passing one older than
 * health_check_max_age_seconds no longer counts.
 */
import { FIXED_LIMITS } from '../config/limits.js';
import { errorMessage } from '../errors.js';
import type { Logger } from '../log/logger.js';
import type { Store } from '../store/store.js';
import type { UpstreamProtocol, Upstreams } from '../upstream/upstreams.js';

/** pending: not run yet; stale: passed, but too long ago to count. */
export type CheckState = 'ok' | 'failing' | 'skipped' | 'pending' | 'stale';

export interface CheckStatus {
  state: CheckState;
  detail: string;
  /** When it last ran (ISO 8601), or null. */
  checkedAt: string | null;
}

export interface Readiness {
  ready: boolean;
  checks: Record<string, CheckStatus>;
}

export interface HealthOptions {
  store: Pick<Store, 'probeWrites'>;
  /** The upstreams the listeners use (listeners change only with a restart). */
  protocols: readonly UpstreamProtocol[];
  log: Logger;
  /** Tests: a faster pace than health_check_interval_seconds. */
  intervalMs?: number;
}

/** What the checks log in with; a reload hands in new ones (configure). */
export interface HealthTargets {
  upstreams: Pick<Upstreams, 'reachable' | 'masterLogin'>;
  masterUser: string;
  masterPassword: Buffer | null;
  probeAccount: string;
}

interface Result {
  state: 'ok' | 'failing' | 'skipped' | 'pending';
  detail: string;
  at: number | null;
}

export class HealthMonitor {
  private readonly results = new Map<string, Result>();
  private readonly intervalMs: number;
  private readonly timeoutMs = FIXED_LIMITS.health_check_timeout_seconds * 1000;
  private readonly maxAgeMs = FIXED_LIMITS.health_check_max_age_seconds * 1000;
  private readonly stopped = new AbortController();
  private timer: NodeJS.Timeout | null = null;
  private round: Promise<void> | null = null;
  private targets: HealthTargets | null = null;

  constructor(private readonly options: HealthOptions) {
    this.intervalMs = options.intervalMs ?? FIXED_LIMITS.health_check_interval_seconds * 1000;
    this.results.set('store', pending());
    for (const protocol of options.protocols) {
      this.results.set(`upstream_${protocol}`, pending());
      this.results.set(`master_login_${protocol}`, pending());
    }
  }

  /**
   * The upstreams and the master credentials to check with, at start and
   * after each reload; the next round uses them. A probe account set or
   * removed by a reload starts that check afresh.
   */
  configure(targets: HealthTargets): void {
    const before = this.targets;
    this.targets = targets;
    if (before && before.probeAccount === targets.probeAccount) return;
    for (const protocol of this.options.protocols) {
      this.results.set(
        `master_login_${protocol}`,
        targets.probeAccount ? pending() : { state: 'skipped', detail: 'upstream.login.probe_account is not set: the master login is not checked', at: null },
      );
    }
  }

  /** Runs the checks now, then every interval, until stop(). configure() first. */
  start(): void {
    if (this.round || this.stopped.signal.aborted || !this.targets) return;
    this.next();
  }

  async stop(): Promise<void> {
    this.stopped.abort();
    if (this.timer) clearTimeout(this.timer);
    await this.round;
  }

  /** The latest results, and whether they all pass now. */
  readiness(now = Date.now()): Readiness {
    const checks: Record<string, CheckStatus> = {};
    let ready = true;
    for (const [name, result] of this.results) {
      const stale = result.state === 'ok' && result.at !== null && now - result.at > this.maxAgeMs;
      const state: CheckState = stale ? 'stale' : result.state;
      if (state !== 'ok' && state !== 'skipped') ready = false;
      checks[name] = {
        state,
        detail: stale ? `${result.detail} (but last checked ${Math.round((now - result.at!) / 1000)} s ago)` : result.detail,
        checkedAt: result.at === null ? null : new Date(result.at).toISOString(),
      };
    }
    return { ready, checks };
  }

  /** 1 passing, 0 not (failing, pending, stale), null skipped or not configured: for the gauges. */
  up(name: string, now = Date.now()): 0 | 1 | null {
    const check = this.readiness(now).checks[name];
    if (!check || check.state === 'skipped') return null;
    return check.state === 'ok' ? 1 : 0;
  }

  /** One round of every check, at once. */
  async runOnce(): Promise<void> {
    const { protocols } = this.options;
    const targets = this.targets!;
    await Promise.all([
      this.check('store', () => this.store()),
      ...protocols.map((protocol) => this.check(`upstream_${protocol}`, () => this.upstream(targets, protocol))),
      ...(targets.probeAccount ? protocols.map((protocol) => this.check(`master_login_${protocol}`, () => this.masterLogin(targets, protocol), targets)) : []),
    ]);
  }

  private next(): void {
    this.round = this.runOnce().finally(() => {
      if (this.stopped.signal.aborted) return;
      this.timer = setTimeout(() => this.next(), this.intervalMs);
      this.timer.unref();
    });
  }

  private async store(): Promise<string> {
    await this.options.store.probeWrites();
    return 'writes work';
  }

  private async upstream(targets: HealthTargets, protocol: UpstreamProtocol): Promise<string> {
    const report = await targets.upstreams.reachable(protocol, this.timeoutMs, this.stopped.signal);
    const tls = report.certificate ? `${report.tls}, certificate ${report.certificate.verified ? 'verified' : 'not verified (verify = false)'}` : 'no TLS';
    return `reachable (${tls})`;
  }

  private async masterLogin(targets: HealthTargets, protocol: UpstreamProtocol): Promise<string> {
    const { masterPassword, masterUser, probeAccount } = targets;
    if (!masterPassword) throw new Error('no master password configured (upstream.login.master_password_file or MAILGATE_MASTER_PASSWORD)');
    const result = await targets.upstreams.masterLogin(protocol, probeAccount, masterPassword, this.timeoutMs, this.stopped.signal);
    if (result.ok) return `logged in as ${masterUser} for ${probeAccount}`;
    if (result.kind === 'no-such-account') {
      throw new Error(`the mail server does not know upstream.login.probe_account "${probeAccount}"; set it to an account that exists`);
    }
    throw new Error(result.reason);
  }

  /**
   * Runs one check and records its result; a change of state is logged once.
   * A master login that ran with targets a reload has since replaced (another
   * probe account) is not recorded.
   */
  private async check(name: string, run: () => Promise<string>, targets?: HealthTargets): Promise<void> {
    let next: Result;
    try {
      next = { state: 'ok', detail: await run(), at: Date.now() };
    } catch (err) {
      next = { state: 'failing', detail: errorMessage(err), at: Date.now() };
    }
    // A round cut short by stop() says nothing about the check.
    if (this.stopped.signal.aborted) return;
    if (targets && this.targets?.probeAccount !== targets.probeAccount) return;
    const before = this.results.get(name)!;
    this.results.set(name, next);
    if (next.state === 'failing' && (before.state !== 'failing' || before.detail !== next.detail)) {
      this.options.log.warn({ check: name, detail: next.detail }, 'readiness check failing');
    } else if (next.state === 'ok' && before.state === 'failing') {
      this.options.log.info({ check: name }, 'readiness check passing again');
    }
  }
}

function pending(): Result {
  return { state: 'pending', detail: 'not checked yet', at: null };
}
