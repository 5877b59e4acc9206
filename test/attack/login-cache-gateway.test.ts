/**
 * The verified-login cache, wired into a running gateway (real Dovecot behind
 * it), counted in argon2 verifications:
 *  - a repeat login with the same app password skips argon2;
 *  - a revoke from the CLI (another process) refuses the very next login, warm cache or not;
 *  - `login_cache_ttl_seconds = 0` turns it off;
 *  - its negative side (repeated wrong guesses skip argon2) does not weaken
 *    the brute-force penalties: the same guess sequence against a gateway
 *    with both caches off gets the same answers, delays, counts and block.
 *
 * Gateway `cached` has the default caches; gateway `uncached` has both TTLs at 0.
 * Both have the penalties on, scaled down (20 ms doubling to 160 ms, an IP
 * blocked after 10 failures).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../support/cli.js';
import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { attemptsLogged, logLines, startGateway, type GatewayHandle } from '../support/gateway.js';
import { cliConfigFor, imapsLogin, PENALTIES_ON } from '../support/attack.js';
import { credentialFailure, imaps, taggedLine, type ImapClient } from '../support/imap-client.js';
import { pop3s } from '../support/pop3-client.js';
import { enableTotp } from '../support/store.js';

const LIMITS = { ...PENALTIES_ON, failure_delay_base_ms: 20, failure_delay_max_ms: 160, ip_block_after: 10, account_block_after: 20 };
const UNAVAILABLE = 'NO [UNAVAILABLE] The mail service is temporarily unavailable; try again in a few minutes.';

let dc: DovecotHandle;
let cached: GatewayHandle;
let uncached: GatewayHandle;

beforeAll(async () => {
  dc = await startDovecot();
  [cached, uncached] = await Promise.all([
    startGateway(dc, { config: { limits: LIMITS } }),
    startGateway(dc, { config: { limits: LIMITS, auth: { login_cache_ttl_seconds: 0, failed_login_cache_ttl_seconds: 0 } } }),
  ]);
});

afterAll(async () => {
  await cached?.stop();
  await uncached?.stop();
  await dc?.stop();
});

const verifications = (gw: GatewayHandle) => gw.hasher.stats.verifications;

/** argon2 verifications `action` cost on `gw` (nothing else runs on it meanwhile). */
async function hashesOf<T>(gw: GatewayHandle, action: () => Promise<T>): Promise<{ result: T; hashes: number }> {
  const before = verifications(gw);
  const result = await action();
  return { result, hashes: verifications(gw) - before };
}

/** One IMAPS login on a fresh connection (closed after): its tagged line. */
async function imapLogin(gw: GatewayHandle, user: string, password: string, from: string): Promise<string> {
  const { c, answer } = await imapsLogin(gw, user, password, { from });
  c.destroy();
  return taggedLine(answer, 'L1');
}

async function cacheLookups(gw: GatewayHandle, result: string): Promise<number> {
  const metric = await gw.gateway.services.metrics.loginCache.get();
  return metric.values.find((v) => v.labels.result === result)?.value ?? 0;
}

describe('verified-login cache, through the gateway', () => {
  it('a second login with the same app password skips argon2, over either protocol', async () => {
    // Catches: the cache not wired into the gateway's policy (every login would hash).
    cached.store.accounts.add('alice');
    const { password } = await cached.store.appPasswords.create('alice', { name: 'phone' });
    const from = '127.0.0.31';
    expect(await hashesOf(cached, () => imapLogin(cached, 'alice', password, from))).toMatchObject({ hashes: 1, result: expect.stringMatching(/^L1 OK /) });
    const hitsBefore = await cacheLookups(cached, 'hit');
    expect(await hashesOf(cached, () => imapLogin(cached, 'alice', password, from))).toMatchObject({ hashes: 0, result: expect.stringMatching(/^L1 OK /) });
    // The key is the account and the canonical password, not the protocol: POP3 hits too (scope is re-read).
    const pop3 = await hashesOf(cached, async () => {
      const p = await pop3s(cached, { from });
      await p.command('USER alice');
      const answer = await p.command(`PASS ${password.replace(/ /g, '').toUpperCase()}`);
      p.destroy();
      return answer;
    });
    expect(pop3).toMatchObject({ hashes: 0, result: expect.stringMatching(/^\+OK/) });
    expect((await cacheLookups(cached, 'hit')) - hitsBefore).toBe(2);
  });

  it('a revoke from the CLI refuses the very next login, even with a warm cache', async () => {
    // Catches: a cache hit trusted without re-reading the app password's row (a revoked password
    // would keep working until the entry expired), or a row cached in this process.
    cached.store.accounts.add('bob');
    const { password, info } = await cached.store.appPasswords.create('bob', { name: 'laptop' });
    const from = '127.0.0.32';
    expect(await imapLogin(cached, 'bob', password, from)).toMatch(/^L1 OK /);
    // Warm: the next login is a cache hit.
    expect(await hashesOf(cached, () => imapLogin(cached, 'bob', password, from))).toMatchObject({ hashes: 0, result: expect.stringMatching(/^L1 OK /) });

    const revoke = await runCli(['--config', cliConfigFor(cached), 'app-password', 'revoke', 'bob', String(info.id)]);
    expect(revoke.code, revoke.stderr).toBe(0);
    const stale = await cacheLookups(cached, 'stale');
    // No wait, no housekeeping tick: the very next attempt.
    const { c, answer } = await imapsLogin(cached, 'bob', password, { from });
    c.destroy();
    expect(answer).toBe(credentialFailure('L1', cached.config.policy.help_url));
    expect(await cacheLookups(cached, 'stale')).toBe(stale + 1);
    expect(logLines(cached, 'login failed', { user: 'bob', reason: 'revoked', clientIp: from })).toHaveLength(1);
  });

  it('`login_cache_ttl_seconds = 0` turns it off: every login runs argon2', async () => {
    // Catches: the TTL setting ignored (a cache the operator cannot turn off).
    expect(uncached.config.auth.login_cache_ttl_seconds).toBe(0);
    uncached.store.accounts.add('carol');
    const { password } = await uncached.store.appPasswords.create('carol', { name: 'phone' });
    for (let i = 0; i < 3; i++) {
      expect(await hashesOf(uncached, () => imapLogin(uncached, 'carol', password, '127.0.0.33'))).toMatchObject({ hashes: 1, result: expect.stringMatching(/^L1 OK /) });
    }
  });
});

/** The same app-password-shaped wrong guess, 16 letters like a real one, so the negative cache takes it. */
const REPEATED = 'abcdabcdabcdabcd';
/** Distinct wrong guesses, each counted (and hashed) once. */
const other = (i: number) => `pqrs${String.fromCharCode(97 + i).repeat(12)}`;

/**
 * Five connections of three attempts each (max_login_failures_per_connection),
 * the repeated guess among distinct ones, and the IP's failure count expected
 * when each answer is decided. A repeat of a counted wrong password is not
 * counted again (the stale-saved-password rule), but waits as long as the
 * count says; the block starts at the 10th failure.
 */
const SCRIPT: Array<Array<{ password: string; failures: number | 'blocked' }>> = [
  [{ password: REPEATED, failures: 1 }, { password: REPEATED, failures: 1 }, { password: REPEATED, failures: 1 }],
  [{ password: other(1), failures: 2 }, { password: other(2), failures: 3 }, { password: other(3), failures: 4 }],
  [{ password: REPEATED, failures: 4 }, { password: other(4), failures: 5 }, { password: other(5), failures: 6 }],
  [{ password: other(6), failures: 7 }, { password: other(7), failures: 8 }, { password: REPEATED, failures: 8 }],
  [{ password: other(8), failures: 9 }, { password: other(9), failures: 10 }, { password: REPEATED, failures: 'blocked' }],
];

interface Answer {
  password: string;
  failures: number | 'blocked';
  line: string;
  ms: number;
  hashes: number;
}

/** Plays SCRIPT against `gw` as user `dave` (2FA on: wrong guesses are refused by the gateway itself). */
async function playScript(gw: GatewayHandle, from: string): Promise<{ answers: Answer[]; closedAfterEach: boolean[] }> {
  gw.store.accounts.add('dave');
  enableTotp(gw.store, 'dave');
  await gw.store.appPasswords.create('dave', { name: 'phone' });
  const answers: Answer[] = [];
  const closedAfterEach: boolean[] = [];
  let n = 0;
  for (const connection of SCRIPT) {
    const c: ImapClient = await imaps(gw, { from });
    for (const step of connection) {
      const tag = `d${n++}`;
      const before = verifications(gw);
      const started = performance.now();
      const answer = await c.command(tag, `LOGIN dave ${step.password}`, 5_000);
      answers.push({ ...step, line: taggedLine(answer, tag).slice(tag.length + 1), ms: performance.now() - started, hashes: verifications(gw) - before });
    }
    closedAfterEach.push((await c.waitClosed(2_000)).startsWith('* BYE'));
    c.destroy();
  }
  return { answers, closedAfterEach };
}

describe('negative cache and the brute-force penalties', () => {
  it('a repeated wrong guess skips argon2 yet is answered, delayed, counted and blocked exactly as without the cache', async () => {
    // Catches: a cached refusal that skips the penalty delay, is not logged or counted against the
    // connection, slips past a block, or answers differently; and a negative cache not wired in.
    const [withCache, withoutCache] = await Promise.all([playScript(cached, '127.0.0.41'), playScript(uncached, '127.0.0.41')]);
    const delayFor = (failures: number) => cached.gateway.services.guard.delayFor(failures);

    for (const { answers } of [withCache, withoutCache]) {
      for (const a of answers) {
        if (a.failures === 'blocked') {
          expect(a.line).toBe(UNAVAILABLE);
          expect(a.hashes).toBe(0);
          expect(a.ms).toBeGreaterThanOrEqual(delayFor(1) - 1);
        } else {
          expect(a.line).toBe('NO [AUTHENTICATIONFAILED] Authentication failed.');
          // The penalty for the count at that point, cached answer or not (timers never fire early;
          // 1 ms covers rounding between the two clocks).
          expect(a.ms, `${a.password} at ${a.failures} failures`).toBeGreaterThanOrEqual(delayFor(a.failures) - 1);
        }
      }
    }
    // The repeats after escalation waited the escalated delay, not the first step's.
    expect(delayFor(4)).toBeGreaterThan(delayFor(1));
    // Same answers, and every connection closed after its three failures, with the cache or without.
    expect(withCache.answers.map((a) => a.line)).toEqual(withoutCache.answers.map((a) => a.line));
    expect(withCache.closedAfterEach).toEqual([true, true, true, true, true]);
    expect(withoutCache.closedAfterEach).toEqual(withCache.closedAfterEach);

    // argon2: the repeated guess ran once with the cache, every time without it.
    const repeatedHashes = (r: { answers: Answer[] }) => r.answers.filter((a) => a.password === REPEATED && a.failures !== 'blocked').map((a) => a.hashes);
    expect(repeatedHashes(withCache)).toEqual([1, 0, 0, 0, 0]);
    expect(repeatedHashes(withoutCache)).toEqual([1, 1, 1, 1, 1]);
    for (const r of [withCache, withoutCache]) {
      expect(r.answers.filter((a) => a.password !== REPEATED).map((a) => a.hashes)).toEqual(Array(9).fill(1));
    }

    // Counted the same: every refusal is logged for fail2ban (repeats in summary lines), the counts and the block are identical.
    for (const gw of [cached, uncached]) {
      expect(attemptsLogged(gw, 'login failed', { user: 'dave', clientIp: '127.0.0.41' })).toBe(14);
      expect(logLines(gw, 'temporary block started', { kind: 'ip', key: '127.0.0.41' })).toMatchObject([{ failures: 10 }]);
      const ip = gw.store.penalties.get('ip', '127.0.0.41', gw.config.limits.ip_failure_window_seconds * 1000);
      expect(ip.failures).toBe(10);
      expect(ip.blockedUntil).toBeGreaterThan(Date.now());
      expect(gw.store.penalties.get('account', 'dave', gw.config.limits.account_failure_window_seconds * 1000).failures).toBe(10);
    }
  });
});
