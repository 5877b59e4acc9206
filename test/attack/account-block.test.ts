/**
 * An account blocked by guesses, against a real mailgate (real Dovecot behind
 * it) that passes main passwords through to the upstream: accounts without
 * two-step verification, and users mailgate does not know.
 *
 * The block must hold from every address, fresh ones included, for anything
 * but an app password: otherwise each new address an attacker brings is one
 * more main-password guess checked by the upstream. And it must never lock
 * the owner out of a working app password from an address with no failures.
 * Scaled-down penalties: an account is blocked after 3 failures.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { logLines, startGateway, type GatewayHandle } from '../support/gateway.js';
import { assertNoInternalErrors, imapsLogin, PENALTIES_ON } from '../support/attack.js';
import { taggedLine } from '../support/imap-client.js';
import { pop3s } from '../support/pop3-client.js';

const UNAVAILABLE = 'L1 NO [UNAVAILABLE] The mail service is temporarily unavailable; try again in a few minutes.';
const ATTACKER = '127.0.0.20';

let dc: DovecotHandle;
let gw: GatewayHandle;
let appPassword: string;

beforeAll(async () => {
  dc = await startDovecot();
  gw = await startGateway(dc, {
    config: {
      limits: { ...PENALTIES_ON, account_block_after: 3 },
      policy: { unknown_users: 'passthrough', main_password_without_2fa: 'passthrough' },
    },
  });
  // alice: known to mailgate, no two-step verification (her main password goes to Dovecot).
  // bob: unknown to mailgate (passthrough).
  gw.store.accounts.add('alice');
  appPassword = (await gw.store.appPasswords.create('alice', { name: 'phone' })).password;
});

afterAll(async () => {
  await gw?.stop();
  await dc?.stop();
});

const windowMs = () => gw.config.limits.account_failure_window_seconds * 1000;
const verifications = () => gw.hasher.stats.verifications;

/** Wrong main passwords from the attacker (checked by Dovecot) until the account is blocked. */
async function blockAccount(user: string): Promise<void> {
  for (let i = 0; i < 3; i++) {
    const { c, answer } = await imapsLogin(gw, user, `${user}-guess-${i}`, { from: ATTACKER });
    expect(taggedLine(answer, 'L1')).toMatch(/^L1 NO \[AUTHENTICATIONFAILED\]/);
    c.destroy();
  }
  expect(gw.store.penalties.get('account', user, windowMs()).blockedUntil).toBeGreaterThan(Date.now());
  expect(logLines(gw, 'temporary block started', { kind: 'account', key: user })).toHaveLength(1);
}

describe('a blocked account, from addresses with no failures', () => {
  it('refuses the main password without a check (IMAP and POP3), yet lets the owner in with an app password', async () => {
    // Catches: an account block that only applies to addresses with failures of their own, so
    // that every fresh address gets one main-password guess checked by the upstream; and a block
    // that locks the owner out of her app password.
    await blockAccount('alice');

    // alice's correct main password: Dovecot would accept it, but it is never sent there.
    const fresh = '127.0.0.21';
    const main = await imapsLogin(gw, 'alice', 'alice-upstream-pw', { from: fresh });
    expect(taggedLine(main.answer, 'L1')).toBe(UNAVAILABLE);
    main.c.destroy();
    const p = await pop3s(gw, { from: '127.0.0.22' });
    expect(await p.command('USER alice')).toBe('+OK Send PASS\r\n');
    expect(await p.command('PASS alice-upstream-pw')).toBe('-ERR [SYS/TEMP] The mail service is temporarily unavailable; try again in a few minutes.\r\n');
    p.destroy();
    expect(logLines(gw, 'login blocked', { clientIp: fresh, blockedBy: 'account' })).toHaveLength(1);
    expect(logLines(gw, 'login blocked', { clientIp: '127.0.0.22', blockedBy: 'account' })).toHaveLength(1);
    // Refused, not failed: those addresses stay clean.
    expect(gw.store.penalties.get('ip', fresh, windowMs()).failures).toBe(0);

    // The owner, from the same clean address, with her app password.
    const owner = await imapsLogin(gw, 'alice', appPassword, { from: fresh });
    expect(taggedLine(owner.answer, 'L1')).toMatch(/^L1 OK /);
    owner.c.destroy();
  });

  it('checks an app-password-shaped guess against app passwords only, never upstream; the guesser is then refused', async () => {
    // Catches: a guess shaped like an app password falling through to the main-password path
    // (passthrough to Dovecot) while the account is blocked, and a fresh address getting more
    // than that one guess.
    expect(gw.store.penalties.get('account', 'alice', windowMs()).blockedUntil).toBeGreaterThan(Date.now());
    const guesser = '127.0.0.23';
    const before = verifications();
    const guess = await imapsLogin(gw, 'alice', 'qwer tyui opas dfgh', { from: guesser });
    expect(taggedLine(guess.answer, 'L1')).toMatch(/^L1 NO \[AUTHENTICATIONFAILED\]/);
    guess.c.destroy();
    // One argon2 run against her app passwords; refused by mailgate, not by the upstream.
    expect(verifications() - before).toBe(1);
    expect(logLines(gw, 'login failed', { clientIp: guesser }).map((l) => l.reason)).toEqual(['wrong-password']);
    // That address has a failure now: even the right app password is refused, without a check.
    const again = await imapsLogin(gw, 'alice', appPassword, { from: guesser });
    expect(taggedLine(again.answer, 'L1')).toBe(UNAVAILABLE);
    again.c.destroy();
    expect(verifications() - before).toBe(1);
  });

  it('a user mailgate does not know (passthrough): the correct upstream password is refused without a check', async () => {
    // Catches: the block of an unknown (passthrough) account skipped from a fresh address, so
    // the upstream keeps checking guesses for it.
    await blockAccount('bob');
    const fresh = '127.0.0.24';
    const { c, answer } = await imapsLogin(gw, 'bob', 'bob-upstream-pw', { from: fresh });
    expect(taggedLine(answer, 'L1')).toBe(UNAVAILABLE);
    c.destroy();
    expect(logLines(gw, 'login blocked', { clientIp: fresh, blockedBy: 'account' })).toHaveLength(1);
    // Another account from the same address is not affected.
    const carol = await imapsLogin(gw, 'carol', 'carol-upstream-pw', { from: fresh });
    expect(taggedLine(carol.answer, 'L1')).toMatch(/^L1 OK /);
    carol.c.destroy();
    assertNoInternalErrors(gw);
  });
});
