/**
 * Password guessing against a real mailgate (real Dovecot behind it) with the
 * brute-force penalties on, scaled down: answers delayed 50 ms doubling to
 * 400 ms, an IP blocked after 10 failures, an account after 5.
 *
 * Accounts have two-step verification on, so wrong passwords are refused by
 * the gateway itself (one argon2 run each) and never reach Dovecot.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../support/cli.js';
import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { logLines, startGateway, type GatewayHandle } from '../support/gateway.js';
import { cliConfigFor, imapsLogin, PENALTIES_ON } from '../support/attack.js';
import { imaps, taggedLine, type ImapClient } from '../support/imap-client.js';
import { pop3s } from '../support/pop3-client.js';
import { enableTotp } from '../support/store.js';
import { waitUntil } from '../support/timing.js';

const ATTACKER = '127.0.0.5';
const UNAVAILABLE = 'NO [UNAVAILABLE] The mail service is temporarily unavailable; try again in a few minutes.';

let dc: DovecotHandle;
let gw: GatewayHandle;
let cli: string;
const appPasswords: Record<string, string> = {};

beforeAll(async () => {
  dc = await startDovecot();
  gw = await startGateway(dc, { config: { limits: { ...PENALTIES_ON, account_block_after: 5 } } });
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
const verifications = () => gw.store.hasher.stats.verifications;

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
      const c = await imaps(gw, { from: ATTACKER });
      for (const n of batch) {
        const { line, ms } = await attempt(c, `t${n}`, `ghost-seq-${n}`, `wrong-${n}`);
        expect(line).toMatch(/^t\d NO \[AUTHENTICATIONFAILED\]/);
        times.push(ms);
      }
      c.destroy();
    }
    // Expected: 50, 100, 200, 400, 400 ms plus the hash and the round trip.
    expect(times[0]!).toBeLessThan(300);
    expect(times[1]!).toBeGreaterThanOrEqual(95);
    expect(times[2]!).toBeGreaterThanOrEqual(190);
    expect(times[3]!).toBeGreaterThanOrEqual(380);
    expect(times[4]!).toBeGreaterThanOrEqual(380);
    expect(times[3]! - times[0]!).toBeGreaterThan(150);
    expect(gw.store.penalties.get('ip', ATTACKER, windowMs()).failures).toBe(5);
  });

  it('200 parallel guesses: the block engages and stops password checks; another IP still logs in quickly', async () => {
    // Catches: no block (every guess costs an argon2 run and gets an answer), a block that still
    // checks passwords, and a block that spills over to other clients.
    const TOTAL = 195;
    const WORKERS = 20;
    let next = 0;
    let failed = 0;
    let blocked = 0;
    let verificationsAtBlock: number | null = null;
    let otherIp: { line: string; ms: number } | null = null;
    const started = Date.now();
    // Failures this IP already has in the window (the previous test's five, when run in order).
    const prior = gw.store.penalties.get('ip', ATTACKER, windowMs()).failures;
    const toBlock = PENALTIES_ON.ip_block_after - prior;

    // Every answer, failed or blocked, counts against the connection: the
    // gateway closes it after max_login_failures_per_connection of them.
    const perConnection = gw.config.limits.max_login_failures_per_connection;
    const worker = async (w: number) => {
      let c: ImapClient | null = null;
      let onConnection = 0;
      while (next < TOTAL) {
        const n = next++;
        if (!c || c.isClosed || onConnection === perConnection) {
          c?.destroy();
          c = await imaps(gw, { from: ATTACKER, timeoutMs: 10_000 });
          onConnection = 0;
        }
        onConnection += 1;
        const { line } = await attempt(c, `g${n}`, `ghost-${w}-${n}`, `guess-${n}`);
        if (line === `g${n} ${UNAVAILABLE}`) {
          blocked += 1;
          verificationsAtBlock ??= verifications();
        } else {
          expect(line).toMatch(/^g\d+ NO \[AUTHENTICATIONFAILED\]/);
          failed += 1;
        }
      }
      c?.destroy();
    };
    const legit = (async () => {
      await waitUntil(() => verificationsAtBlock !== null, 'the block', 15_000);
      const { c, answer, ms } = await imapsLogin(gw, 'alice', appPasswords.alice!, { from: '127.0.0.6' });
      otherIp = { line: taggedLine(answer, 'L1'), ms };
      c.destroy();
    })();
    await Promise.all([...Array.from({ length: WORKERS }, (_, w) => worker(w)), legit]);

    expect(Date.now() - started).toBeLessThan(20_000);
    // `toBlock` more failures start the block; only the checks already in flight then still finish.
    expect(failed).toBeGreaterThanOrEqual(toBlock);
    expect(failed).toBeLessThanOrEqual(toBlock + PENALTIES_ON.max_concurrent_logins_per_ip - 1);
    expect(blocked).toBe(TOTAL - failed);
    // While blocked, no password is checked: only the few in flight (and alice's own login) ran argon2.
    expect(verifications() - verificationsAtBlock!).toBeLessThanOrEqual(PENALTIES_ON.max_concurrent_logins_per_ip + 1);
    expect(otherIp!.line).toMatch(/^L1 OK /);
    expect(otherIp!.ms).toBeLessThan(1_500);

    const ip = gw.store.penalties.get('ip', ATTACKER, windowMs());
    expect(ip.blockedUntil).toBeGreaterThan(Date.now());
    expect(logLines(gw, 'temporary block started', { kind: 'ip', key: ATTACKER })).toHaveLength(1);
    expect(logLines(gw, 'login blocked', { clientIp: ATTACKER, blockedBy: 'ip' }).length).toBeGreaterThanOrEqual(blocked);
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
