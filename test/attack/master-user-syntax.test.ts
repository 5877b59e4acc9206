/**
 * Dovecot's master-user syntax in a client's username (issue 10, §1), against
 * a real Dovecot with a master passdb and `auth_master_user_separator = *`,
 * behind a real mailgate with `unknown_users = "passthrough"`.
 *
 * Dovecot reads a plain login as "alice*alice" as a login to alice and
 * "alice*gwmaster" as the master user acting as alice. Passed through as an
 * unknown name, the first walked past alice's two-step verification and her
 * block, and the second let clients guess the master password with a fresh
 * failure budget per name. Every such name must be refused like any failed
 * login, over every mechanism, and count against the account it names.
 *
 * Also here: a SASL authzid naming another user (§5) is an ordinary failure:
 * counted, delayed and audited.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PENALTIES_ON } from '../support/attack.js';
import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { logLines, startGateway, type GatewayHandle } from '../support/gateway.js';
import { credentialFailure, imaps, taggedLine } from '../support/imap-client.js';
import { pop3s } from '../support/pop3-client.js';
import { saslPlain } from '../support/raw-client.js';
import { enableTotp } from '../support/store.js';

const HELP_URL = 'https://mail.example.test/app-passwords';
const POP3_FAILED = `-ERR [AUTH] Sign-in failed. If your account has 2-step verification, sign in with an app password, not your account password: ${HELP_URL}\r\n`;
const WINDOW_MS = 600_000;

let dc: DovecotHandle;
let gw: GatewayHandle;

beforeAll(async () => {
  dc = await startDovecot();
  expect(dc.masterSeparator).toBe('*');
  gw = await startGateway(dc, {
    config: {
      policy: { unknown_users: 'passthrough', help_url: HELP_URL },
      // Penalties on, with thresholds out of reach so every attempt is answered and counted.
      limits: { ...PENALTIES_ON, failure_delay_base_ms: 20, failure_delay_max_ms: 20, ip_block_after: 1000, ip_repeat_block_after: 1000, account_block_after: 1000 },
    },
  });
  // alice has two-step verification; bob is unknown to mailgate (passthrough).
  gw.store.accounts.add('alice');
  enableTotp(gw.store, 'alice');
});

afterAll(async () => {
  await gw?.stop();
  await dc?.stop();
});

/** [username, password, the account it must count against] */
function cases(): Array<[string, string, string]> {
  return [
    ['alice*alice', 'alice-upstream-pw', 'alice'],
    ['ALICE*alice', 'alice-upstream-pw', 'alice'],
    ['alice*gwmaster', dc.master.password, 'alice'],
    ['bob*bob', 'bob-upstream-pw', 'bob'],
  ];
}

const failures = (account: string) => gw.store.penalties.get('account', account, WINDOW_MS).failures;

describe('master-user syntax never reaches the upstream', () => {
  it.each([
    ['IMAP LOGIN', async (user: string, password: string) => {
      const c = await imaps(gw);
      const answer = await c.command('m1', `LOGIN "${user}" "${password}"`);
      c.destroy();
      return answer === credentialFailure('m1', HELP_URL);
    }],
    ['IMAP AUTHENTICATE PLAIN', async (user: string, password: string) => {
      const c = await imaps(gw);
      const answer = await c.command('m2', `AUTHENTICATE PLAIN ${saslPlain(user, password)}`);
      c.destroy();
      return answer === credentialFailure('m2', HELP_URL);
    }],
    ['POP3 USER/PASS', async (user: string, password: string) => {
      const p = await pop3s(gw);
      expect(await p.command(`USER ${user}`)).toBe('+OK Send PASS\r\n');
      const answer = await p.command(`PASS ${password}`);
      p.destroy();
      return answer === POP3_FAILED;
    }],
    ['POP3 AUTH PLAIN', async (user: string, password: string) => {
      const p = await pop3s(gw);
      const answer = await p.command(`AUTH PLAIN ${saslPlain(user, password)}`);
      p.destroy();
      return answer === POP3_FAILED;
    }],
  ])('%s: alice*alice, ALICE*alice, alice*gwmaster (master password) and bob*bob are refused, counted against alice and bob', async (_label, attempt) => {
    // Catches: a name with the separator passed through unchanged (Dovecot then logs alice in with
    // her main password although she has 2FA, or checks the master password for the client), and
    // failures counted under the name as typed (a fresh budget for every spelling).
    const ip = () => {
      const state = gw.store.penalties.get('ip', '127.0.0.1', WINDOW_MS);
      return state.failures + state.repeats;
    };
    const before = ip();
    for (const [user, password] of cases()) expect(await attempt(user, password), `${user} refused`).toBe(true);
    // Counted against the accounts they name (the same wrong password for one account counts once
    // there, so alice has two: her main password and the master password), never under the names as typed.
    expect(failures('alice')).toBe(2);
    expect(failures('bob')).toBe(1);
    for (const [user] of cases()) expect(gw.store.penalties.all().some((p) => p.key === user.toLowerCase() || p.key === user)).toBe(false);
    // And each attempt counts for the client address.
    expect(ip() - before).toBe(4);
  });

  it('every such attempt is logged as master-user-syntax, and Dovecot never saw one', async () => {
    const refused = logLines(gw, 'login failed').filter((l) => String(l.user).length > 0 && l.reason === 'master-user-syntax');
    expect(refused.length).toBeGreaterThanOrEqual(4);
    expect(new Set(refused.map((l) => l.user))).toEqual(new Set(['alice', 'bob']));
    const dovecotLog = await dc.logText();
    // Neither a login nor a failed attempt with such a name: mailgate never connected for them.
    expect(dovecotLog).not.toMatch(/user=<alice\*|user=<bob\*|alice\*alice|alice\*gwmaster|bob\*bob/i);
  });

  it("an authzid or authcid with the separator is refused too, and alice's block applies to alice*alice", async () => {
    const c = await imaps(gw);
    expect(await c.command('a1', `AUTHENTICATE PLAIN ${saslPlain('bob', 'bob-upstream-pw', 'bob*bob')}`)).toBe(credentialFailure('a1', HELP_URL));
    c.destroy();
    expect(logLines(gw, 'login failed', { reason: 'master-user-syntax', method: 'authenticate-plain' }).length).toBeGreaterThan(0);
    // Block alice (as 20 failures would): her block now applies to every spelling of her name.
    gw.store.penalties.recordFailure('account', 'alice', { windowMs: WINDOW_MS, blockAfter: 1, blockMs: 60_000 });
    try {
      const d = await imaps(gw, { from: '127.0.0.77' });
      const answer = await d.command('a2', 'LOGIN "alice*alice" "alice-upstream-pw"');
      d.destroy();
      expect(taggedLine(answer, 'a2')).toBe('a2 NO [UNAVAILABLE] The mail service is temporarily unavailable; try again in a few minutes.');
      expect(logLines(gw, 'login blocked', { blockedBy: 'account', clientIp: '127.0.0.77' })).toHaveLength(1);
    } finally {
      gw.store.penalties.clear('alice');
    }
  });
});

describe('an authzid naming another user is an ordinary failure', () => {
  it('counted against the authcid, delayed, audited, and answered with the same words', async () => {
    // Catches: the refusal answered at once (10 ms), uncounted and unaudited, while docs/security.md
    // promises every failure the same delay and count.
    const before = failures('carol');
    const c = await imaps(gw, { from: '127.0.0.78' });
    const started = performance.now();
    const answer = await c.command('z1', `AUTHENTICATE PLAIN ${saslPlain('carol', 'carol-upstream-pw', 'alice')}`);
    const ms = performance.now() - started;
    c.destroy();
    expect(answer).toBe(credentialFailure('z1', HELP_URL));
    expect(ms).toBeGreaterThanOrEqual(gw.gateway.services.guard.delayFor(1) - 1);
    expect(failures('carol')).toBe(before + 1);
    expect(gw.store.penalties.get('ip', '127.0.0.78', WINDOW_MS).failures).toBe(1);
    expect(gw.store.audit.list({ username: 'carol' })).toEqual(
      expect.arrayContaining([expect.objectContaining({ event: 'login-failed', detail: 'authzid-mismatch', ip: '127.0.0.78', protocol: 'imap' })]),
    );
    // The right password with carol's own authzid logs in (passthrough: carol is unknown to mailgate).
    const d = await imaps(gw, { from: '127.0.0.78' });
    expect(taggedLine(await d.command('z2', `AUTHENTICATE PLAIN ${saslPlain('carol', 'carol-upstream-pw', 'Carol')}`), 'z2')).toMatch(/^z2 OK /);
    d.destroy();
  });
});
