/**
 * Password guessing against a real mailgate (real Dovecot behind it) with the
 * brute-force penalties on, scaled down: answers delayed 50 ms doubling to
 * 800 ms, an IP blocked after 10 failures, an account after 5.
 *
 * Accounts have two-step verification on, so wrong passwords are refused by
 * the gateway itself (one argon2 run each) and never reach Dovecot.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../support/cli.js';
import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { logLines, startGateway, type GatewayHandle } from '../support/gateway.js';
import { cliConfigFor, imapsLogin, PENALTIES_ON } from '../support/attack.js';
import { ImapClient, imaps, taggedLine } from '../support/imap-client.js';
import { pop3s } from '../support/pop3-client.js';
import { enableTotp } from '../support/store.js';
import { waitUntil } from '../support/timing.js';

/** The cap is 16 times the first step, so an early answer and a capped one cannot be mistaken for each other. */
const LIMITS = { ...PENALTIES_ON, failure_delay_max_ms: 800, account_block_after: 5 };
/** Guesses in sequence, to time each step of the schedule. */
const SEQUENTIAL = '127.0.0.4';
/** The 200-guess storm; then blocked for the rest of the file. */
const ATTACKER = '127.0.0.5';
const UNAVAILABLE = 'NO [UNAVAILABLE] The mail service is temporarily unavailable; try again in a few minutes.';

let dc: DovecotHandle;
let gw: GatewayHandle;
let cli: string;
const appPasswords: Record<string, string> = {};

beforeAll(async () => {
  dc = await startDovecot();
  gw = await startGateway(dc, { config: { limits: LIMITS } });
  for (const user of ['alice', 'bob', 'carol']) {
    gw.store.accounts.add(user);
    enableTotp(gw.store, user);
    appPasswords[user] = (await gw.store.appPasswords.create(user, { name: 'phone' })).password;
  }
  cli = cliConfigFor(gw);
});

afterAll(async () => {
  await gw?.stop();
  await dc?.stop();
});

const windowMs = () => gw.config.limits.account_failure_window_seconds * 1000;
const verifications = () => gw.hasher.stats.verifications;

/** One LOGIN on an open connection: its tagged answer and how long it took. */
async function attempt(c: ImapClient, tag: string, user: string, password: string): Promise<{ line: string; ms: number }> {
  const started = performance.now();
  const answer = await c.command(tag, `LOGIN ${user} ${password}`, 10_000);
  return { line: taggedLine(answer, tag), ms: performance.now() - started };
}

describe('one IP guessing many passwords', () => {
  it('answer delays grow with the failures', async () => {
    // Catches: failures answered at once (no delay), or a delay that does not escalate.
    const times: number[] = [];
    for (const batch of [[1, 2, 3], [4, 5]]) {
      const c = await imaps(gw, { from: SEQUENTIAL });
      for (const n of batch) {
        const { line, ms } = await attempt(c, `t${n}`, `ghost-seq-${n}`, `wrong-${n}`);
        expect(line).toMatch(/^t\d NO \[AUTHENTICATIONFAILED\]/);
        times.push(ms);
      }
      c.destroy();
    }
    // Expected: 50, 100, 200, 400, 800 ms plus the hash and the round trip.
    expect(times[0]!).toBeLessThan(300);
    expect(times[1]!).toBeGreaterThanOrEqual(95);
    expect(times[2]!).toBeGreaterThanOrEqual(190);
    expect(times[3]!).toBeGreaterThanOrEqual(380);
    expect(times[4]!).toBeGreaterThanOrEqual(780);
    expect(times[3]! - times[0]!).toBeGreaterThan(150);
    expect(gw.store.penalties.get('ip', SEQUENTIAL, windowMs()).failures).toBe(5);
  });

  it('200 parallel wrong passwords: the delays grow, the block engages and stops password checks, another IP logs in meanwhile', async () => {
    // Catches: delays that do not escalate under parallel load, no block (every guess costs an
    // argon2 run and an answer), a block that still checks passwords, and a storm that starves or
    // blocks correct logins from other clients.
    const TOTAL = 200;
    // Under max_connections_per_ip (50), with room for a closing connection and its replacement.
    const CONNECTIONS = 32;
    const perConnection = gw.config.limits.max_login_failures_per_connection;
    const { ip_block_after: blockAfter, max_concurrent_logins_per_ip: inFlight } = LIMITS;
    expect(gw.store.penalties.get('ip', ATTACKER, windowMs()).failures).toBe(0);

    const open = async () => {
      const { client, greeting } = await ImapClient.open({ port: gw.ports.imaps, tls: true, ca: gw.caCert, localAddress: ATTACKER, timeoutMs: 10_000 });
      expect(greeting).toMatch(/^\* OK /); // never refused by the connection cap
      return client;
    };
    // Every connection is up before the first guess, so the first answers are not slowed by handshakes.
    const first = await Promise.all(Array.from({ length: CONNECTIONS }, open));
    const results: Array<{ user: string; line: string; ms: number; at: number }> = [];
    let next = 0;
    let verificationsAtBlock: number | null = null;
    const before = verifications();
    const started = performance.now();

    // Each connection takes the next guess; after three answers (failed or blocked) the gateway
    // closes it with BYE and the worker opens another.
    const worker = async (c: ImapClient) => {
      let onConnection = 0;
      for (let n = next++; n < TOTAL; n = next++) {
        if (onConnection === perConnection) {
          expect(await c.waitClosed(5_000)).toBe('* BYE Too many failed logins.\r\n');
          c = await open();
          onConnection = 0;
        }
        onConnection += 1;
        const user = `ghost-${n}`;
        const { line, ms } = await attempt(c, `g${n}`, user, `guess-${n}`);
        if (line === `g${n} ${UNAVAILABLE}`) verificationsAtBlock ??= verifications();
        results.push({ user, line: line.slice(`g${n} `.length), ms, at: performance.now() });
      }
      c.destroy();
    };
    /** A correct login from another IP: its answer, how long it took, and when it ended. */
    const legit = async (user: string) => {
      const { c, answer, ms } = await imapsLogin(gw, user, appPasswords[user]!, { from: '127.0.0.6' });
      c.destroy();
      return { line: taggedLine(answer, 'L1'), ms, at: performance.now() };
    };
    // One correct login while the first guesses are being hashed and delayed, one once the block is on.
    const duringEscalation = waitUntil(() => results.length > 0, 'the first answer', 10_000).then(() => legit('alice'));
    const duringBlock = waitUntil(() => verificationsAtBlock !== null, 'the block', 15_000).then(() => legit('bob'));
    await Promise.all([duringEscalation, duringBlock, ...first.map(worker)]);
    const stormEnded = Math.max(...results.map((r) => r.at));
    expect(stormEnded - started).toBeLessThan(15_000);
    expect(results).toHaveLength(TOTAL);

    // The delays grow: the order of the 'login failed' lines is the order the failures were
    // counted in, so each failure's place in the schedule is known, and its answer waited at least
    // that long (timers never fire early; 1 ms covers rounding between clocks).
    const failedUsers = logLines(gw, 'login failed', { clientIp: ATTACKER }).map((l) => l.user);
    const failed = results.filter((r) => r.line !== UNAVAILABLE);
    expect(failed.map((r) => r.line)).toEqual(failed.map(() => 'NO [AUTHENTICATIONFAILED] Authentication failed.'));
    expect(new Set(failedUsers)).toEqual(new Set(failed.map((r) => r.user)));
    const place = (user: string) => failedUsers.indexOf(user) + 1;
    for (const r of failed) expect(r.ms, `failure #${place(r.user)}`).toBeGreaterThanOrEqual(gw.gateway.services.guard.delayFor(place(r.user)) - 1);
    // ...and it is the schedule, not a flat penalty: the first failure came back before the cap.
    const firstFailure = failed.find((r) => place(r.user) === 1)!;
    expect(firstFailure.ms).toBeLessThan(LIMITS.failure_delay_max_ms);
    expect(gw.gateway.services.guard.delayFor(blockAfter)).toBe(LIMITS.failure_delay_max_ms);

    // The block engages at the threshold; only guesses already admitted then are still checked.
    expect(logLines(gw, 'temporary block started', { kind: 'ip', key: ATTACKER })).toMatchObject([{ failures: blockAfter }]);
    expect(failed.length).toBeGreaterThanOrEqual(blockAfter);
    expect(failed.length).toBeLessThanOrEqual(blockAfter + inFlight - 1);
    const blocked = results.filter((r) => r.line === UNAVAILABLE);
    expect(blocked).toHaveLength(TOTAL - failed.length);
    // A blocked answer still waits the first step: a blocked client cannot hammer a connection.
    for (const r of blocked) expect(r.ms).toBeGreaterThanOrEqual(LIMITS.failure_delay_base_ms - 1);
    expect(logLines(gw, 'login blocked', { clientIp: ATTACKER, blockedBy: 'ip' })).toHaveLength(blocked.length);

    // argon2: exactly one run per counted failure and per correct login, none for a blocked guess;
    // after the first blocked answer only the checks already in flight (and bob's login) ran.
    expect(verifications() - before).toBe(failed.length + 2);
    expect(verifications() - verificationsAtBlock!).toBeLessThanOrEqual(inFlight - 1 + 1);

    // The other IP got in during the storm, both times, without waiting for it to pass.
    for (const login of [await duringEscalation, await duringBlock]) {
      expect(login.line).toMatch(/^L1 OK /);
      expect(login.ms).toBeLessThan(2_000);
      expect(login.at).toBeLessThan(stormEnded);
    }
    expect(gw.store.penalties.get('ip', ATTACKER, windowMs()).blockedUntil).toBeGreaterThan(Date.now());
  });

  it('the blocked IP gets the same temporary refusal over POP3, even with a correct app password', async () => {
    // Catches: a block enforced on one protocol only, or one that still checks (and so confirms) a correct password.
    const before = verifications();
    const p = await pop3s(gw, { from: ATTACKER });
    expect(await p.command('USER alice')).toBe('+OK Send PASS\r\n');
    expect(await p.command(`PASS ${appPasswords.alice}`)).toBe('-ERR [SYS/TEMP] The mail service is temporarily unavailable; try again in a few minutes.\r\n');
    p.destroy();
    const { c, answer } = await imapsLogin(gw, 'alice', appPasswords.alice!, { from: ATTACKER });
    expect(taggedLine(answer, 'L1')).toBe(`L1 ${UNAVAILABLE}`);
    c.destroy();
    expect(verifications()).toBe(before);
  });

  it('`mailgate blocks list` shows the block and `blocks clear IP` lifts it', async () => {
    // Catches: blocks the administrator cannot see or lift from another process.
    const list = await runCli(['--config', cli, 'blocks', 'list', '--json']);
    expect(list.code).toBe(0);
    const rows = JSON.parse(list.stdout) as Array<{ kind: string; key: string; failures: number; blockedUntil: string }>;
    expect(rows).toContainEqual(expect.objectContaining({ kind: 'ip', key: ATTACKER }));

    const clear = await runCli(['--config', cli, 'blocks', 'clear', ATTACKER]);
    expect(clear.code).toBe(0);
    expect(clear.stdout).toMatch(new RegExp(`cleared 1 record for ${ATTACKER.replace(/\./g, '\\.')}`));
    const { c, answer } = await imapsLogin(gw, 'alice', appPasswords.alice!, { from: ATTACKER });
    expect(taggedLine(answer, 'L1')).toMatch(/^L1 OK /);
    c.destroy();
  });
});

describe('the legitimate user is spared', () => {
  it('a stale saved password retried over and over counts once, and is not escalated', async () => {
    // Catches: a mail program retrying one old password every few minutes getting its user blocked.
    const from = '127.0.0.7';
    const times: number[] = [];
    for (let round = 0; round < 2; round++) {
      const c = await imaps(gw, { from });
      for (let i = 0; i < 3; i++) {
        const { line, ms } = await attempt(c, `s${i}`, 'bob', 'my-old-password');
        expect(line).toMatch(/NO \[AUTHENTICATIONFAILED\]/);
        times.push(ms);
      }
      c.destroy();
    }
    expect(gw.store.penalties.get('account', 'bob', windowMs()).failures).toBe(1);
    expect(gw.store.penalties.get('ip', from, windowMs()).failures).toBe(1);
    // Still delayed (it is a failure), but never beyond the first step.
    expect(Math.max(...times)).toBeLessThan(300);
  });

  it('an account blocked by guesses from one IP still lets its owner in from a clean IP', async () => {
    // Catches: an account block that locks the owner out (a trivial denial of service), or one
    // that does not stop the attacker.
    const attacker = '127.0.0.8';
    // Three failures per connection (max_login_failures_per_connection), so two connections.
    for (const batch of [[0, 1, 2], [3, 4]]) {
      const c = await imaps(gw, { from: attacker });
      for (const i of batch) expect((await attempt(c, `c${i}`, 'carol', `carol-guess-${i}`)).line).toMatch(/NO \[AUTHENTICATIONFAILED\]/);
      c.destroy();
    }
    expect(gw.store.penalties.get('account', 'carol', windowMs()).blockedUntil).toBeGreaterThan(Date.now());
    expect(logLines(gw, 'temporary block started', { kind: 'account', key: 'carol' })).toHaveLength(1);

    // The attacker, even with the right app password now, is refused without a check...
    const before = verifications();
    const fromAttacker = await imapsLogin(gw, 'carol', appPasswords.carol!, { from: attacker });
    expect(taggedLine(fromAttacker.answer, 'L1')).toBe(`L1 ${UNAVAILABLE}`);
    fromAttacker.c.destroy();
    expect(verifications()).toBe(before);
    // ...while the owner, from a clean IP, logs in.
    const owner = await imapsLogin(gw, 'carol', appPasswords.carol!, { from: '127.0.0.9' });
    expect(taggedLine(owner.answer, 'L1')).toMatch(/^L1 OK /);
    owner.c.destroy();

    // And `blocks clear USER` lifts the account block for everyone.
    const clear = await runCli(['--config', cli, 'blocks', 'clear', 'Carol']);
    expect(clear.stdout).toMatch(/cleared 1 record for carol/);
    const after = await imapsLogin(gw, 'carol', appPasswords.carol!, { from: attacker });
    expect(taggedLine(after.answer, 'L1')).toMatch(/^L1 OK /);
    after.c.destroy();
  });
});
