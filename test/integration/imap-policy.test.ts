/**
 * The credential policy over IMAP, through a real mailgate in front of a real
 * Dovecot: who may log in with what (2FA accounts only with an active,
 * unexpired, imap-scoped app password; accounts without 2FA also with their
 * upstream password; unknown accounts refused or passed through), the one
 * answer every credential failure gets, byte for byte, and what happens when
 * the upstream is down or answers in its own words.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { attemptsLogged, logLines, sessionClosed, startGateway, type GatewayHandle } from '../support/gateway.js';
import { credentialFailure, ImapClient, imaps } from '../support/imap-client.js';
import { freePort } from '../support/ports.js';
import { saslPlain } from '../support/raw-client.js';
import { enableTotp } from '../support/store.js';

const HELP_URL = 'https://mail.example.test/app-passwords';
const UNAVAILABLE = (tag: string) => `${tag} NO [UNAVAILABLE] The mail service is temporarily unavailable; try again in a few minutes.\r\n`;
/** What Dovecot says, in its own words, to frank (see the extra passdb below). */
const UPSTREAM_WORDING = 'Frank-is-on-holiday-upstream-wording';

let dc: DovecotHandle;
/** Default policy: unknown users refused, main password allowed without 2FA. */
let gw: GatewayHandle;
/** unknown_users = "passthrough", main_password_without_2fa = "reject". */
let open: GatewayHandle;
/** Pointed at a port where nothing listens. */
let down: GatewayHandle;
let deadPort: number;
let offset = 0;

const app: Record<string, { password: string; id: number }> = {};

beforeAll(async () => {
  dc = await startDovecot({
    extraConfig: [
      // Any user with this password is refused by Dovecot with its own reason text.
      'passdb {',
      '  driver = static',
      `  args = password=frank-upstream-pw nologin=y reason=${UPSTREAM_WORDING}`,
      '}',
    ].join('\n'),
  });
  deadPort = await freePort();
  [gw, open, down] = await Promise.all([
    startGateway(dc, { now: () => Date.now() + offset }),
    startGateway(dc, { config: { policy: { unknown_users: 'passthrough', main_password_without_2fa: 'reject' } } }),
    startGateway(dc, { upstreamImapPort: deadPort }),
  ]);
  for (const g of [gw, open, down]) {
    g.store.accounts.add('alice');
    g.store.accounts.add('bob');
    enableTotp(g.store, 'alice');
  }
  const make = async (key: string, user: string, options: Parameters<GatewayHandle['store']['appPasswords']['create']>[1], g = gw) => {
    const created = await g.store.appPasswords.create(user, options);
    app[key] = { password: created.password, id: created.info.id };
  };
  await Promise.all([
    make('aliceImap', 'alice', { name: 'Thunderbird', scopes: ['imap'] }),
    make('aliceBoth', 'alice', { name: 'Phone' }),
    make('alicePop3', 'alice', { name: 'Old POP3 client', scopes: ['pop3'] }),
    make('aliceRevoked', 'alice', { name: 'Stolen laptop', scopes: ['imap'] }),
    make('aliceExpiring', 'alice', { name: 'Guest', scopes: ['imap'], expiresAt: Date.now() + 60_000 }),
    make('bobImap', 'bob', { name: 'Tablet', scopes: ['imap'] }),
    make('downAlice', 'alice', { name: 'Thunderbird', scopes: ['imap'] }, down),
  ]);
});

afterAll(async () => {
  await Promise.all([gw?.stop(), open?.stop(), down?.stop()]);
  await dc?.stop();
});

async function connect(g: GatewayHandle, via: 'imaps' | 'starttls' = 'imaps'): Promise<ImapClient> {
  if (via === 'imaps') return imaps(g);
  const { client: c } = await ImapClient.open({ port: g.ports.imap, ca: g.caCert });
  expect(await c.command('s0', 'STARTTLS')).toBe('s0 OK Begin TLS negotiation now\r\n');
  await c.startTls();
  return c;
}

/** One login on a fresh connection; returns the answer and the client port. */
async function attempt(g: GatewayHandle, command: string, via: 'imaps' | 'starttls' = 'imaps'): Promise<{ answer: string; port: number }> {
  const tag = 'a1';
  const c = await connect(g, via);
  const answer = await c.command(tag, command);
  const port = c.localPort;
  if (answer.includes(`${tag} OK `)) {
    expect(await c.command('z', 'LOGOUT')).toMatch(/z OK /);
    await c.waitClosed();
  } else {
    await c.end();
  }
  return { answer, port };
}

const login = (user: string, password: string) => `LOGIN "${user}" "${password}"`;

function reasonFor(g: GatewayHandle, port: number): string | undefined {
  const lines = logLines(g, 'login failed', { clientPort: port });
  return lines.length === 1 ? (lines[0]!.reason as string) : undefined;
}

describe('who may log in', () => {
  it('2FA account: an active imap-scoped (or unscoped) app password works, by LOGIN and AUTHENTICATE', async () => {
    const results = await Promise.all([
      attempt(gw, login('alice', app.aliceImap!.password)),
      attempt(gw, `AUTHENTICATE PLAIN ${saslPlain('alice', app.aliceBoth!.password)}`),
    ]);
    for (const r of results) expect(r.answer).toMatch(/^a1 OK \[CAPABILITY IMAP4rev1 [^\]]*\] Logged in\r\n$/);
    const closed = await Promise.all(results.map((r) => sessionClosed(gw, r.port)));
    expect(closed.map((l) => [l.user, l.mode, l.appPasswordId])).toEqual([
      ['alice', 'app-password', app.aliceImap!.id],
      ['alice', 'app-password', app.aliceBoth!.id],
    ]);
  });

  it('account without 2FA: an app password (master login) and its upstream password (passthrough) both work', async () => {
    const [viaApp, viaUpstream] = await Promise.all([
      attempt(gw, login('bob', app.bobImap!.password)),
      attempt(gw, login('bob', 'bob-upstream-pw')),
    ]);
    expect(viaApp.answer).toMatch(/^a1 OK \[CAPABILITY /);
    expect(viaUpstream.answer).toMatch(/^a1 OK \[CAPABILITY /);
    expect((await sessionClosed(gw, viaApp.port)).mode).toBe('app-password');
    expect((await sessionClosed(gw, viaUpstream.port)).mode).toBe('upstream-password');
  });

  it('unknown accounts are refused by default, even with correct upstream credentials', async () => {
    const r = await attempt(gw, login('carol', 'carol-upstream-pw'));
    expect(r.answer).toBe(credentialFailure('a1', HELP_URL));
    expect(reasonFor(gw, r.port)).toBe('unknown-account');
  });

  it('unknown_users = "passthrough": an unknown account logs in to Dovecot with its own credentials', async () => {
    const r = await attempt(open, login('carol', 'carol-upstream-pw'));
    expect(r.answer).toMatch(/^a1 OK \[CAPABILITY IMAP4rev1 /);
    expect(await sessionClosed(open, r.port)).toMatchObject({ user: 'carol', mode: 'upstream-password' });
    await dc.waitForLog(/imap-login: Info: Login: user=<carol>, method=PLAIN, rip=127\.0\.0\.1/);
  });

  it('main_password_without_2fa = "reject": the upstream password of an account without 2FA is refused', async () => {
    const r = await attempt(open, login('bob', 'bob-upstream-pw'));
    expect(r.answer).toBe(credentialFailure('a1', HELP_URL));
    expect(reasonFor(open, r.port)).toBe('main-password-disabled');
  });

  it('revocation takes effect at the next login', async () => {
    const before = await attempt(gw, login('alice', app.aliceRevoked!.password));
    expect(before.answer).toMatch(/^a1 OK /);
    gw.store.appPasswords.revoke('alice', app.aliceRevoked!.id);
    const after = await attempt(gw, login('alice', app.aliceRevoked!.password));
    expect(after.answer).toBe(credentialFailure('a1', HELP_URL));
    expect(reasonFor(gw, after.port)).toBe('revoked');
  });

  it('expiry takes effect once the (controllable) clock passes it', async () => {
    const before = await attempt(gw, login('alice', app.aliceExpiring!.password));
    expect(before.answer).toMatch(/^a1 OK /);
    offset += 120_000;
    try {
      const after = await attempt(gw, login('alice', app.aliceExpiring!.password));
      expect(after.answer).toBe(credentialFailure('a1', HELP_URL));
      expect(reasonFor(gw, after.port)).toBe('expired');
    } finally {
      offset -= 120_000;
    }
  });
});

describe('one answer for every credential failure', () => {
  it('wrong, unknown, 2FA main password, revoked, expired, out of scope, upstream-rejected: byte-identical answers', async () => {
    offset += 120_000; // aliceExpiring is expired from here on
    try {
      const cases: Array<[string, GatewayHandle, string, string, ('imaps' | 'starttls')?]> = [
        ['wrong app password (2FA account)', gw, login('alice', 'zzzz yyyy xxxx wwww'), 'wrong-password'],
        ['wrong password (no 2FA, Dovecot says no)', gw, login('bob', 'not-bobs-password'), 'upstream-rejected'],
        ['unknown account', gw, login('zed', 'zeds-password-1'), 'unknown-account'],
        ['unknown account, app-password shape', gw, login('zed', 'abcd efgh ijkl mnop'), 'unknown-account'],
        ['2FA account, main password', gw, login('alice', 'alice-upstream-pw'), 'two-factor-required'],
        ['revoked', gw, login('alice', app.aliceRevoked!.password), 'revoked'],
        ['expired', gw, login('alice', app.aliceExpiring!.password), 'expired'],
        ['out of scope (pop3 only)', gw, login('alice', app.alicePop3!.password), 'out-of-scope'],
        // A distinct password: the same attempt again would be a repeat, answered alike but logged in a summary.
        ['AUTHENTICATE PLAIN, 2FA main password', gw, `AUTHENTICATE PLAIN ${saslPlain('alice', 'alice-main-pw-2')}`, 'two-factor-required'],
        ['AUTHENTICATE PLAIN, unknown account', gw, `AUTHENTICATE PLAIN ${saslPlain('zed', 'zeds-password-2')}`, 'unknown-account'],
        ['passthrough unknown account, Dovecot says no', open, login('carol', 'not-carols-password'), 'upstream-rejected'],
        ['Dovecot refuses in its own words', open, login('frank', 'frank-upstream-pw'), 'upstream-rejected'],
        ['STARTTLS listener, 2FA main password', gw, login('alice', 'alice-main-pw-3'), 'two-factor-required', 'starttls'],
        ['STARTTLS listener, unknown account', gw, login('zed', 'zeds-password-3'), 'unknown-account', 'starttls'],
      ];
      const results = await Promise.all(cases.map(([, g, cmd, , via]) => attempt(g, cmd, via)));
      const expected = credentialFailure('a1', HELP_URL);
      results.forEach((r, i) => {
        const [label, g, , reason] = cases[i]!;
        expect(r.answer, label).toBe(expected);
        expect(reasonFor(g, r.port), label).toBe(reason);
      });
      // The text tells a 2FA user what to do, and where; it gives nothing away.
      const alert = expected.split('\r\n')[0]!;
      expect(alert).toMatch(/^\* NO \[ALERT\] /);
      expect(alert).toMatch(/2-step verification/);
      expect(alert).toMatch(/app password/);
      expect(alert).toContain(HELP_URL);
      expect(alert).not.toMatch(/alice|bob|zed|unknown|exist|revoked|expired|scope/i);
    } finally {
      offset -= 120_000;
    }
  });

  it("the upstream's own wording is logged, never passed to the client", async () => {
    // "Frank", not "frank": the test above refused frank's attempt already, and a repeat is answered
    // from memory without asking Dovecot again. Dovecot lower-cases names (auth_username_format).
    const c = await connect(open);
    expect(await c.command('u1', login('Frank', 'frank-upstream-pw'))).toBe(credentialFailure('u1', HELP_URL));
    await c.end();
    expect(c.transcript()).not.toContain(UPSTREAM_WORDING);
    const line = logLines(open, 'login failed', { clientPort: c.localPort })[0]!;
    expect(line).toMatchObject({ user: 'Frank', reason: 'upstream-rejected' });
    expect(String(line.upstream)).toContain(UPSTREAM_WORDING);
  });
});

describe('upstream down', () => {
  it('a correct login gets NO [UNAVAILABLE]; the gateway keeps serving; the log says why', async () => {
    const c = await connect(down);
    expect(await c.command('d1', login('alice', app.downAlice!.password))).toBe(UNAVAILABLE('d1'));
    // Same connection: still answered, and a second try gets the same answer.
    expect(await c.command('d2', 'NOOP')).toBe('d2 OK NOOP completed\r\n');
    expect(await c.command('d3', `AUTHENTICATE PLAIN ${saslPlain('alice', app.downAlice!.password)}`)).toBe(UNAVAILABLE('d3'));
    expect(await c.command('d4', login('alice', app.downAlice!.password))).toBe(UNAVAILABLE('d4'));
    // Temporary failures are not credential failures: no ALERT, no limit reached.
    expect(c.transcript()).not.toContain('[ALERT]');
    expect(await c.command('d5', 'NOOP')).toBe('d5 OK NOOP completed\r\n');
    await c.end();
    // A new connection is greeted as ever.
    const d = await connect(down);
    expect(await d.command('d6', 'CAPABILITY')).toMatch(/^\* CAPABILITY IMAP4rev1 .*AUTH=PLAIN.*\r\nd6 OK CAPABILITY completed\r\n$/);
    await d.end();

    const why = logLines(down, 'upstream login failed');
    expect(why.length).toBe(3);
    expect(why[0]).toMatchObject({ user: 'alice', clientIp: '127.0.0.1' });
    expect(String(why[0]!.reason)).toBe(`cannot connect to 127.0.0.1:${deadPort}: connect ECONNREFUSED 127.0.0.1:${deadPort}`);
    expect(attemptsLogged(down, 'login temporarily failed', { clientPort: c.localPort, reason: 'upstream-unavailable' })).toBe(3);
    expect(logLines(down, 'login failed')).toEqual([]);
    expect((await sessionClosed(down, c.localPort)).outcome).toBe('closed-before-login');
  });
});
