/**
 * The benchmark's target checks (bench/lib/report.ts) on made-up results:
 * the PostgreSQL column's check compares the two mailgates of one run.
 */
import { describe, expect, it } from 'vitest';
import { computeChecks, postgresCheck, renderReport, type LatencyResult, type Results, type TargetResults } from '../../bench/lib/report.js';
import { parseOptions } from '../../bench/lib/options.js';
import type { Summary } from '../../bench/lib/stats.js';

const CHECK = "PostgreSQL store: warm and cold login p50 within 2 ms of SQLite's";

function summary(p50: number): Summary {
  return { n: 50, p50, p90: p50 + 1, p99: p50 + 2, min: p50 - 1, max: p50 + 3, mean: p50 };
}

function latency(p50: number, errors = 0): LatencyResult {
  const s = summary(p50);
  return { loggedIn: s, cycle: s, connect: s, greeting: s, login: s, withoutGreetingWait: s, logout: s, errors };
}

function gateway(warm: number, cold: number, errors = 0): TargetResults {
  return { warm: latency(warm, errors), cold: latency(cold) };
}

function results(targets: Results['targets'], setup: Partial<Results['setup']> = {}): Results {
  return {
    generatedAt: '2026-12-05T00:00:00.000Z',
    command: 'npm run bench',
    options: parseOptions([], {}, '/nowhere'),
    machine: { cpus: 2, cpuModel: 'test', memoryGiB: 1, kernel: 'Linux', node: 'v20', openssl: '3', dovecot: '2.3', nginx: 'not installed', argon2Package: '0.45', commit: null, dirty: false },
    setup: { argon2: { memoryKib: 19456, iterations: 2, parallelism: 1 }, nofile: { soft: 1024, hard: 1024 }, messageBytes: 0, nginxWorkers: 1, ...setup },
    reference: {},
    targets,
  };
}

const checkOf = (r: Results) => computeChecks(r).find((c) => c.target === CHECK);

describe('the PostgreSQL target check', () => {
  it("is met when both p50s are at most 2 ms above SQLite's, the exact margin included", () => {
    const check = checkOf(results({ mailgate: gateway(2.03, 40.0), mailgatePostgres: gateway(4.03, 41.5) }));
    expect(check?.met).toBe(true);
    expect(check?.measured).toContain('warm 4.0 vs 2.0 ms (+2.00)');
    expect(check?.measured).toContain('cold 41.5 vs 40.0 ms (+1.50)');
  });

  it('is missed when the warm p50 is more than 2 ms above', () => {
    expect(checkOf(results({ mailgate: gateway(8.6, 40.0), mailgatePostgres: gateway(10.7, 40.0) }))?.met).toBe(false);
  });

  it('is missed when the cold p50 is more than 2 ms above, however good the warm one', () => {
    expect(checkOf(results({ mailgate: gateway(8.6, 40.0), mailgatePostgres: gateway(8.0, 42.1) }))?.met).toBe(false);
  });

  it('compares PostgreSQL with SQLite, not the other way round: faster on PostgreSQL is met', () => {
    const check = checkOf(results({ mailgate: gateway(12.0, 48.0), mailgatePostgres: gateway(8.0, 41.0) }));
    expect(check?.met).toBe(true);
    expect(check?.measured).toContain('(-4.00)');
  });

  it('is missed when logins through PostgreSQL failed, whatever the p50s', () => {
    const check = checkOf(results({ mailgate: gateway(8.6, 40.0), mailgatePostgres: gateway(8.6, 40.0, 3) }));
    expect(check?.met).toBe(false);
    expect(check?.measured).toContain('3 failed logins');
  });

  it('says why when the column was skipped, and neither meets nor misses', () => {
    const check = checkOf(results({ mailgate: gateway(8.6, 40.0) }, { postgresSkipped: '--no-postgres' }));
    expect(check).toEqual({ target: CHECK, measured: 'not measured (--no-postgres)', met: null });
  });

  it('is left out when mailgate itself was not measured', () => {
    expect(postgresCheck(results({ mailgatePostgres: gateway(8.6, 40.0) }))).toBeNull();
  });

  it('prints the column and its ratio to SQLite in the report', () => {
    const r = results({ dovecot: gateway(5.0, 5.0), mailgate: gateway(8.0, 40.0), mailgatePostgres: gateway(10.0, 40.0) });
    r.checks = computeChecks(r);
    const report = renderReport(r);
    expect(report).toContain('mailgate (PostgreSQL)');
    expect(report).toContain('PostgreSQL/SQLite');
    expect(report).toMatch(/warm login p50 \(ms\)\s*\|\s*5\.0 \|\s*8\.0 \|\s*10\.0 \|\s*1\.60x \|\s*1\.25x \|/);
  });
});

describe('bench options', () => {
  it('turns the PostgreSQL column off, and takes server settings', () => {
    const o = parseOptions(['--no-postgres', '--postgres-set', 'synchronous_commit=on', '--postgres-set=work_mem=8MB'], {}, '/nowhere');
    expect(o.noPostgres).toBe(true);
    expect(o.postgresSettings).toEqual({ synchronous_commit: 'on', work_mem: '8MB' });
    expect(() => parseOptions(['--postgres-set', 'nonsense'], {}, '/nowhere')).toThrow(/name=value/);
  });
});
