/** The results' shape, the target checks, and the printed table. */
import type { BenchOptions } from './options.js';
import type { PhaseLoad } from './proc.js';
import { fmt, ratio, round, type Summary } from './stats.js';

export type TargetKey = 'dovecot' | 'mailgate' | 'mailgatePostgres' | 'nginx';

/** The table's columns, in order. */
const COLUMNS: ReadonlyArray<{ key: TargetKey; label: string }> = [
  { key: 'dovecot', label: 'Dovecot direct' },
  { key: 'mailgate', label: 'mailgate' },
  { key: 'mailgatePostgres', label: 'mailgate (PostgreSQL)' },
  { key: 'nginx', label: 'nginx mail' },
];

/** How much slower the PostgreSQL store's warm and cold login p50 may be than SQLite's, same run, ms. */
export const POSTGRES_P50_MARGIN_MS = 2;

export interface LatencyResult {
  /** connect + TLS + greeting + LOGIN until its tagged OK, ms: the login latency */
  loggedIn: Summary;
  /** the whole cycle including LOGOUT until its tagged OK, ms */
  cycle: Summary;
  /** connect + TLS handshake, ms */
  connect: Summary;
  /** connected to greeting received, ms */
  greeting: Summary;
  /** LOGIN sent to tagged OK, ms */
  login: Summary;
  /** loggedIn minus the greeting wait, ms (shows what nginx costs without its 40 ms greeting stall) */
  withoutGreetingWait: Summary;
  /** LOGOUT sent to tagged OK, ms */
  logout: Summary;
  errors: number;
}

export interface TargetResults {
  cold?: LatencyResult;
  warm?: LatencyResult;
  throughput?: {
    clients: number;
    seconds: number;
    logins: number;
    errors: number;
    perSecond: number;
    /** CPU used by the target's processes, in cores (1.0 = one core busy). */
    cpuCores: number;
    benchClientCpuCores: number;
    errorSample?: string;
  };
  fetch?: {
    bytes: number;
    runs: number;
    mibPerSecond: number;
    allMibPerSecond: number[];
    medianMs: number;
    cpuSecondsPerFetch: number;
  };
  idle?: {
    sessions: number;
    opened: number;
    heldAtEnd: number;
    errors: number;
    errorSample?: string;
    openSeconds: number;
    processes: number;
    rssBeforeMiB: number;
    /** After the first half of the sessions: the slope is measured from here. */
    rssMidMiB: number;
    rssAfterMiB: number;
    /** (RSS after N - RSS before) / N: the issue's figure, one-off growth of the process included. */
    rssKiBPerSession: number;
    /** (RSS after N - RSS after N/2) / (N/2): what one more idle session costs. */
    rssKiBPerSessionSlope: number;
    pssKiBPerSession: number;
    upstreamDovecotRssKiBPerSession?: number;
    heapUsedKiBPerSession?: number;
    externalKiBPerSession?: number;
    gatewaySessions?: number | undefined;
  };
  storm?: {
    clients: number;
    seconds: number;
    wrongAttempts: number;
    wrongPerSecond: number;
    refused: number;
    otherAnswers: number;
    connectionErrors: number;
    wrongAttemptMs: Summary;
    correctLogins: Summary;
    correctErrors: number;
    cpuCores: number;
    /** mailgate: CPU of the event-loop thread and of the other threads (argon2 on the libuv pool), cores */
    eventLoopThreadCores?: number;
    otherThreadsCores?: number;
    /** mailgate: involuntary context switches of the event-loop thread per second */
    eventLoopPreemptionsPerSecond?: number;
    eventLoopLagP99Ms?: number;
    eventLoopLagMaxMs?: number;
    eventLoopLagMedianMs?: number;
    argon2Verifications?: number;
  };
}

export interface Check {
  target: string;
  measured: string;
  met: boolean | null;
}

export interface Results {
  generatedAt: string;
  command: string;
  options: BenchOptions;
  machine: {
    cpus: number;
    cpuModel: string;
    memoryGiB: number;
    kernel: string;
    node: string;
    openssl: string;
    dovecot: string;
    nginx: string;
    argon2Package: string;
    commit: string | null;
    dirty: boolean;
  };
  setup: {
    argon2: { memoryKib: number; iterations: number; parallelism: number };
    nofile: { soft: number; hard: number };
    messageBytes: number;
    nginxWorkers: number;
    nginxSkipped?: string;
    /** Why the PostgreSQL column is missing (--no-postgres, or no server installed). */
    postgresSkipped?: string;
    /** The PostgreSQL server behind the second mailgate: its version and the settings the bench gave it. */
    postgres?: { version: string; settings: Record<string, string>; poolSize: number };
    ciphers?: Partial<Record<TargetKey, string>>;
  };
  reference: {
    /** argon2id verify alone, in the bench process, ms */
    argon2?: Summary;
    /** plain-TCP connect + greeting + master LOGIN until its OK, straight to Dovecot, ms */
    upstreamLogin?: Summary;
    /** argon2 verifications mailgate ran per cold login (from its metrics) */
    mailgateArgon2PerColdLogin?: number;
    /** the same for the mailgate on the PostgreSQL store */
    mailgatePostgresArgon2PerColdLogin?: number;
  };
  /** CPU used by processes outside the benchmark, per phase. */
  background?: Record<string, PhaseLoad>;
  loadAverageAtStart?: number[];
  quietWait?: { waitedSeconds: number; quiet: boolean; otherCores: number } | undefined;
  /** mailgate's event-loop lag over the warm-login phase. */
  quietLag?: QuietLag;
  /** The same for the mailgate on the PostgreSQL store. */
  quietLagPostgres?: QuietLag;
  targets: Partial<Record<TargetKey, TargetResults>>;
  checks?: Check[];
  durationSeconds?: number;
  mailgateLogTail?: string[];
  mailgatePostgresLogTail?: string[];
}

export interface QuietLag {
  seconds: number;
  p99Ms: number;
  maxMs: number;
  eventLoopPreemptionsPerSecond: number;
}

export function computeChecks(r: Results): Check[] {
  const d = r.targets.dovecot;
  const m = r.targets.mailgate;
  const n = r.targets.nginx;
  const checks: Check[] = [];
  const nginxMissing = 'nginx not measured';

  if (m?.fetch && d?.fetch) {
    const share = m.fetch.mibPerSecond / d.fetch.mibPerSecond;
    const vsNginx = n?.fetch ? m.fetch.mibPerSecond >= n.fetch.mibPerSecond : null;
    checks.push({
      target: 'FETCH through mailgate >= 90% of direct Dovecot (TLS) and >= nginx',
      measured: `${fmt(m.fetch.mibPerSecond)} MiB/s = ${fmt(share * 100, 0)}% of Dovecot's ${fmt(d.fetch.mibPerSecond)}; ${n?.fetch ? `nginx ${fmt(n.fetch.mibPerSecond)} MiB/s` : 'nginx not measured'}`,
      met: share < 0.9 || vsNginx === false ? false : vsNginx === null ? null : true,
    });
  }
  if (m?.warm) {
    checks.push({
      target: "warm login p50 <= nginx's warm login p50",
      measured: n?.warm
        ? `${fmt(m.warm.loggedIn.p50)} ms vs nginx ${fmt(n.warm.loggedIn.p50)} ms (nginx's greeting wait alone p50 ${fmt(n.warm.greeting.p50)} ms; ` +
          `without the greeting wait: mailgate ${fmt(m.warm.withoutGreetingWait.p50)} vs nginx ${fmt(n.warm.withoutGreetingWait.p50)} ms)`
        : nginxMissing,
      met: n?.warm ? m.warm.loggedIn.p50 <= n.warm.loggedIn.p50 : null,
    });
  }
  if (m?.cold && r.reference.argon2 && r.reference.upstreamLogin) {
    const budget = r.reference.argon2.p50 + r.reference.upstreamLogin.p50 + 10;
    checks.push({
      target: 'cold login p50 <= argon2 + upstream login + 10 ms',
      measured: `${fmt(m.cold.loggedIn.p50)} ms vs ${fmt(r.reference.argon2.p50)} + ${fmt(r.reference.upstreamLogin.p50)} + 10 = ${fmt(budget)} ms`,
      met: m.cold.loggedIn.p50 <= budget,
    });
  }
  const postgres = postgresCheck(r);
  if (postgres) checks.push(postgres);
  if (m?.idle) {
    const tooFew = m.idle.sessions < 500;
    checks.push({
      target: 'memory per idle TLS session <= 48 KiB',
      measured: `${fmt(m.idle.rssKiBPerSession)} KiB RSS per session (N = ${m.idle.sessions}${tooFew ? ': too few sessions for a per-session figure, use --idle 1000 or more' : ''})`,
      met: tooFew ? null : m.idle.rssKiBPerSession <= 48,
    });
    checks.push({
      target: '10,000 idle sessions held at once, without errors',
      measured:
        m.idle.sessions >= 10_000
          ? `${m.idle.heldAtEnd} of ${m.idle.sessions} held, ${m.idle.errors} errors`
          : `not run at this N (${m.idle.sessions}); run with --idle 10000`,
      met: m.idle.sessions >= 10_000 ? m.idle.errors === 0 && m.idle.heldAtEnd === m.idle.sessions : null,
    });
  }
  if (m?.storm) {
    const lag = m.storm.eventLoopLagP99Ms ?? Number.NaN;
    checks.push({
      target: 'event-loop lag p99 < 20 ms during the wrong-password storm',
      measured: `${fmt(lag)} ms (max ${fmt(m.storm.eventLoopLagMaxMs)} ms) at ${fmt(m.storm.wrongPerSecond)} wrong passwords/s`,
      met: lag < 20,
    });
    if (m.warm) {
      const limit = 2 * m.warm.loggedIn.p99;
      checks.push({
        target: 'correct logins during the storm within 2x their quiet p99',
        measured: `storm p99 ${fmt(m.storm.correctLogins.p99)} ms (p50 ${fmt(m.storm.correctLogins.p50)}) vs 2 x quiet warm p99 ${fmt(m.warm.loggedIn.p99)} = ${fmt(limit)} ms; ${m.storm.correctErrors} errors`,
        met: m.storm.correctLogins.p99 <= limit && m.storm.correctErrors === 0,
      });
    }
  }
  return checks;
}

/**
 * The PostgreSQL store against SQLite's, from the same run: its warm and
 * cold login p50 at most POSTGRES_P50_MARGIN_MS above SQLite's, and no login
 * through it failed. Faster is never a miss (the store can only add time;
 * a lower figure is the noise of the run).
 */
export function postgresCheck(r: Results): Check | null {
  const m = r.targets.mailgate;
  const p = r.targets.mailgatePostgres;
  if (!m?.warm || !m.cold) return null;
  const target = `PostgreSQL store: warm and cold login p50 within ${POSTGRES_P50_MARGIN_MS} ms of SQLite's`;
  if (!p?.warm || !p.cold) return { target, measured: `not measured (${r.setup.postgresSkipped ?? 'no PostgreSQL column'})`, met: null };
  // The p50s are rounded to 0.01 ms: so is their difference (4.03 - 2.03 is 2.0000000000000004).
  const warm = round(p.warm.loggedIn.p50 - m.warm.loggedIn.p50, 2);
  const cold = round(p.cold.loggedIn.p50 - m.cold.loggedIn.p50, 2);
  const errors = p.warm.errors + p.cold.errors;
  const signed = (x: number) => `${x >= 0 ? '+' : ''}${fmt(x, 2)}`;
  return {
    target,
    measured:
      `warm ${fmt(p.warm.loggedIn.p50)} vs ${fmt(m.warm.loggedIn.p50)} ms (${signed(warm)}), ` +
      `cold ${fmt(p.cold.loggedIn.p50)} vs ${fmt(m.cold.loggedIn.p50)} ms (${signed(cold)}); ${errors} failed logins on PostgreSQL`,
    met: warm <= POSTGRES_P50_MARGIN_MS && cold <= POSTGRES_P50_MARGIN_MS && errors === 0,
  };
}

// ---------------------------------------------------------------------------

function table(head: string[], rows: string[][]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' | ')} |`;
  const sep = `|${widths.map((w, i) => (i === 0 ? `${'-'.repeat(w + 1)}-` : `${'-'.repeat(w + 1)}:`)).join('|')}|`;
  return [line(head), sep, ...rows.map(line)].join('\n');
}

export function renderReport(r: Results): string {
  const d = r.targets.dovecot ?? {};
  const m = r.targets.mailgate ?? {};
  const n = r.targets.nginx ?? {};
  const pg = r.targets.mailgatePostgres;
  const hasNginx = r.targets.nginx !== undefined;
  const N = m.idle?.sessions ?? r.options.idle;
  type Pick = (t: TargetResults) => number | null | undefined;
  // [label, value of a target, digits, gateways only]
  type Row = [string, Pick, number?, boolean?];
  const rows: Row[] = [
    ['cold login p50 (ms)', (t) => t.cold?.loggedIn.p50],
    ['cold login p99 (ms)', (t) => t.cold?.loggedIn.p99],
    ['warm login p50 (ms)', (t) => t.warm?.loggedIn.p50],
    ['warm login p99 (ms)', (t) => t.warm?.loggedIn.p99],
    [`login throughput, ${m.throughput?.clients ?? r.options.tputClients} clients (logins/s)`, (t) => t.throughput?.perSecond, 0],
    [`FETCH ${r.options.fetchMiB} MiB, median of ${r.options.fetchRuns} (MiB/s)`, (t) => t.fetch?.mibPerSecond],
    [`idle session memory, N=${N} (KiB RSS/session)`, (t) => t.idle?.rssKiBPerSession],
    [`idle session memory, slope N/2..N (KiB RSS/session)`, (t) => t.idle?.rssKiBPerSessionSlope],
    [`idle sessions held of ${N}`, (t) => t.idle?.heldAtEnd, 0],
    ['storm: wrong passwords answered/s', (t) => t.storm?.wrongPerSecond, 1, true],
    ['storm: correct login p50 (ms)', (t) => t.storm?.correctLogins.p50, 1, true],
    ['storm: correct login p99 (ms)', (t) => t.storm?.correctLogins.p99, 1, true],
    ['storm: event-loop lag p99 (ms)', (t) => t.storm?.eventLoopLagP99Ms, 1, true],
  ];
  const columns = COLUMNS.filter((c) => r.targets[c.key] !== undefined);
  const ratios: Array<{ label: string; a: TargetKey; b: TargetKey }> = [
    { label: 'mailgate/Dovecot', a: 'mailgate', b: 'dovecot' },
    ...(pg ? [{ label: 'PostgreSQL/SQLite', a: 'mailgatePostgres', b: 'mailgate' } as const] : []),
    ...(hasNginx ? [{ label: 'mailgate/nginx', a: 'mailgate', b: 'nginx' } as const] : []),
  ];
  const value = (key: TargetKey, pick: Pick, gatewaysOnly?: boolean) => (gatewaysOnly && key === 'dovecot' ? null : pick(r.targets[key] ?? {}));
  const head = ['', ...columns.map((c) => c.label), ...ratios.map((x) => x.label)];
  const body = rows.map(([label, pick, digits, gatewaysOnly]) => [
    label,
    ...columns.map((c) => fmt(value(c.key, pick, gatewaysOnly), digits ?? 1)),
    ...ratios.map((x) => ratio(value(x.a, pick, gatewaysOnly), value(x.b, pick, gatewaysOnly))),
  ]);

  const out: string[] = [];
  const mc = r.machine;
  out.push('');
  out.push(`mailgate benchmark, ${r.generatedAt} (${r.durationSeconds ?? '?'} s)`);
  out.push(`machine: ${mc.cpus} x ${mc.cpuModel}, ${mc.memoryGiB} GiB, ${mc.kernel}; Node ${mc.node} (OpenSSL ${mc.openssl}); Dovecot ${mc.dovecot}; nginx ${mc.nginx}; mailgate ${mc.commit ?? '?'}${mc.dirty ? ' + uncommitted src/ changes' : ''}`);
  if (r.setup.nginxSkipped) out.push(`nginx column skipped: ${r.setup.nginxSkipped}`);
  if (r.setup.postgresSkipped) out.push(`PostgreSQL column skipped: ${r.setup.postgresSkipped}`);
  if (r.setup.postgres) {
    const settings = Object.entries(r.setup.postgres.settings).map(([k, v]) => `${k}=${v}`).join(' ');
    out.push(`mailgate (PostgreSQL): the same config on PostgreSQL ${r.setup.postgres.version} on loopback (${settings}), pool_size ${r.setup.postgres.poolSize}`);
  }
  if (r.options.mailgateExtraToml) out.push(`EXPERIMENT: mailgate config extended with: ${r.options.mailgateExtraToml.trim().replace(/\n/g, ' ')}`);
  out.push(`open-file limit per process: ${r.setup.nofile.soft} (hard ${r.setup.nofile.hard})${hasNginx ? `; nginx worker_processes ${r.setup.nginxWorkers}` : ''}`);
  out.push('');
  out.push(table(head, body));
  out.push('');
  const ref = r.reference;
  out.push(
    `references: argon2id verify alone (${r.setup.argon2.memoryKib} KiB, t=${r.setup.argon2.iterations}, p=${r.setup.argon2.parallelism}) p50 ${fmt(ref.argon2?.p50)} ms; ` +
      `plain-TCP master LOGIN cycle straight to Dovecot p50 ${fmt(ref.upstreamLogin?.p50)} ms; ` +
      `TLS connect p50: Dovecot ${fmt(d.warm?.connect.p50)} / mailgate ${fmt(m.warm?.connect.p50)}${hasNginx ? ` / nginx ${fmt(n.warm?.connect.p50)}` : ''} ms`,
  );
  out.push(
    `warm full cycle incl. LOGOUT p50: Dovecot ${fmt(d.warm?.cycle.p50)} / mailgate ${fmt(m.warm?.cycle.p50)}${hasNginx ? ` / nginx ${fmt(n.warm?.cycle.p50)}` : ''} ms ` +
      `(LOGOUT alone p50: ${fmt(d.warm?.logout.p50)} / ${fmt(m.warm?.logout.p50)}${hasNginx ? ` / ${fmt(n.warm?.logout.p50)}` : ''} ms); ` +
      `argon2 runs per cold mailgate login: ${fmt(ref.mailgateArgon2PerColdLogin, 2)}`,
  );
  out.push(
    `warm greeting wait after the TLS handshake p50: Dovecot ${fmt(d.warm?.greeting.p50)} / mailgate ${fmt(m.warm?.greeting.p50)}${hasNginx ? ` / nginx ${fmt(n.warm?.greeting.p50)}` : ''} ms; ` +
      `warm login without it p50: ${fmt(d.warm?.withoutGreetingWait.p50)} / ${fmt(m.warm?.withoutGreetingWait.p50)}${hasNginx ? ` / ${fmt(n.warm?.withoutGreetingWait.p50)}` : ''} ms`,
  );
  if (r.quietLag) {
    out.push(
      `mailgate event-loop lag during the quiet warm-login phase: p99 ${fmt(r.quietLag.p99Ms)} ms, max ${fmt(r.quietLag.maxMs)} ms; ` +
        `event loop preempted ${fmt(r.quietLag.eventLoopPreemptionsPerSecond, 0)} times/s`,
    );
  }
  if (pg) {
    const lag = r.quietLagPostgres;
    out.push(
      `mailgate (PostgreSQL) vs mailgate: LOGIN sent to OK p50 warm ${fmt(pg.warm?.login.p50)} vs ${fmt(m.warm?.login.p50)} ms, cold ${fmt(pg.cold?.login.p50)} vs ${fmt(m.cold?.login.p50)} ms; ` +
        `argon2 runs per cold login ${fmt(ref.mailgatePostgresArgon2PerColdLogin, 2)}` +
        (lag ? `; event-loop lag in the warm phase p99 ${fmt(lag.p99Ms)} ms, max ${fmt(lag.maxMs)} ms` : ''),
    );
  }
  if (m.idle) {
    out.push(
      `mailgate idle sessions: heap ${fmt(m.idle.heapUsedKiBPerSession)} KiB + external ${fmt(m.idle.externalKiBPerSession)} KiB per session; ` +
        `RSS ${fmt(m.idle.rssBeforeMiB)} -> ${fmt(m.idle.rssAfterMiB)} MiB; opened in ${fmt(m.idle.openSeconds)} s`,
    );
  }
  if (m.throughput) {
    out.push(
      `CPU during login throughput (cores): Dovecot ${fmt(d.throughput?.cpuCores, 2)}, mailgate ${fmt(m.throughput.cpuCores, 2)}${hasNginx ? `, nginx+auth ${fmt(n.throughput?.cpuCores, 2)}` : ''}; bench clients ${fmt(m.throughput.benchClientCpuCores, 2)} (mailgate slice)`,
    );
  }
  if (m.fetch) {
    out.push(
      `CPU seconds per FETCH: Dovecot (all processes) ${fmt(d.fetch?.cpuSecondsPerFetch, 3)}, mailgate ${fmt(m.fetch.cpuSecondsPerFetch, 3)}${hasNginx ? `, nginx ${fmt(n.fetch?.cpuSecondsPerFetch, 3)}` : ''}`,
    );
  }
  if (m.storm) {
    out.push(
      `mailgate during the storm: event-loop thread ${fmt(m.storm.eventLoopThreadCores, 2)} cores, other threads (argon2) ${fmt(m.storm.otherThreadsCores, 2)} cores, ` +
        `event loop preempted ${fmt(m.storm.eventLoopPreemptionsPerSecond, 0)} times/s; lag median ${fmt(m.storm.eventLoopLagMedianMs)} ms`,
    );
  }
  if (r.background) {
    const phases = Object.entries(r.background);
    const busy = phases.filter(([, p]) => p.otherCoresMean > 0.25);
    out.push(
      `background CPU (other processes, cores, mean/max per phase): ${phases.map(([k, p]) => `${k} ${fmt(p.otherCoresMean, 2)}/${fmt(p.otherCoresMax, 2)}`).join(', ')}` +
        (busy.length ? `\nWARNING: something else used > 0.25 core during ${busy.map(([k]) => k).join(', ')}: those numbers are not from a quiet machine.` : ''),
    );
  }
  if (r.setup.ciphers) out.push(`TLS: ${Object.entries(r.setup.ciphers).map(([k, v]) => `${k} ${v}`).join('; ')}`);
  const errs = COLUMNS.map((c) => c.key)
    .map((k) => {
      const t = r.targets[k];
      if (!t) return null;
      const e = (t.cold?.errors ?? 0) + (t.warm?.errors ?? 0) + (t.throughput?.errors ?? 0) + (t.idle?.errors ?? 0) + (t.storm?.correctErrors ?? 0);
      return e > 0 ? `${k}: ${e}` : null;
    })
    .filter(Boolean);
  out.push(`errors: ${errs.length ? errs.join(', ') : 'none'}`);
  if (r.checks) {
    out.push('');
    out.push(
      table(
        ['target', 'measured', 'result'],
        r.checks.map((c) => [c.target, c.measured, c.met === null ? 'n/a' : c.met ? 'MET' : 'MISSED']),
      ),
    );
  }
  return `${out.join('\n')}\n`;
}
