/**
 * POP3 credential policy, upstream login and logging, through a real mailgate
 * in front of a real Dovecot.
 *
 * Covers: the one identical -ERR [AUTH] answer for every credential failure
 * (wrong, unknown, main password with 2-step verification on, revoked,
 * expired, IMAP-only, refused upstream, an authzid naming someone else), the app password's last use,
 * XCLIENT forwarding (Dovecot logs the client's port and mailgate's session),
 * master login by SASL authzid and by "user*master", passthrough, a mailbox
 * locked upstream (-ERR [IN-USE], for passthrough and master logins), the
 * session and failure log lines, and a log free of every secret used.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { DEFAULT_DOVECOT_USERS, startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { attemptsLogged, logLines, sessionClosed, startGateway, type GatewayHandle } from '../support/gateway.js';
import { makeTestPki } from '../support/pki.js';
import { Pop3Client } from '../support/pop3-client.js';
import { b64, saslPlain } from '../support/raw-client.js';
import { enableTotp } from '../support/store.js';
import { sleep, waitUntil } from '../support/timing.js';
import { makeTempDir, removeTempDir } from '../support/tmp.js';

const HELP_URL = 'https://mail.example.test/app-passwords';
const AUTH_FAILED = `-ERR [AUTH] Sign-in failed. If your account has 2-step verification, sign in with an app password, not your account password: ${HELP_URL}\r\n`;

const USERS = [...DEFAULT_DOVECOT_USERS, { name: 'dave', password: 'dave-upstream-pw' }, { name: 'erin', password: 'erin-upstream-pw' }];
const upstreamPassword = (name: string) => USERS.find((u) => u.name === name)!.password;

// Dovecot locks a POP3 mailbox per session (RFC 1939 section 8 style); a
// second session waits 10 s for the lock, then gets -ERR [IN-USE]. The log
// format adds the remote port and the original (authenticating) user.
const DOVECOT_EXTRA = [
  'pop3_lock_session = yes',
  'login_log_format_elements = user=<%u> orig=<%{orig_user}> method=%m rip=%r rport=%b lip=%l mpid=%e %c session=<%{session}>',
].join('\n');

describe('POP3 credential policy, upstream login and logging (real Dovecot, real mailgate)', () => {
  let dc: DovecotHandle;
  let gw: GatewayHandle;
  const extraGateways: GatewayHandle[] = [];
  const clients: Pop3Client[] = [];
  /** Every secret this file hands to mailgate: none may show up in any log. */
  const secrets = new Set<string>();
  const pw: Record<string, { id: number; password: string }> = {};
  let inUse: Promise<Record<string, unknown>>;

  function remember(secret: string): void {
    secrets.add(secret);
    if (/ /.test(secret)) {
      secrets.add(secret.replace(/ /g, ''));
      secrets.add(secret.replace(/ /g, '').toUpperCase());
    }
  }

  async function connect(g: GatewayHandle = gw, timeoutMs?: number): Promise<Pop3Client> {
    const { client, greeting } = await Pop3Client.open({ port: g.ports.pop3s, tls: true, ca: g.caCert, timeoutMs });
    expect(greeting).toMatch(/^\+OK /);
    clients.push(client);
    return client;
  }

  /** USER/PASS, AUTH PLAIN or AUTH LOGIN: the answer to the login. Records every payload as a secret. */
  async function login(client: Pop3Client, user: string, password: string, method: 'user-pass' | 'plain' | 'login' = 'user-pass'): Promise<string> {
    remember(password);
    if (method === 'user-pass') {
      expect(await client.command(`USER ${user}`)).toBe('+OK Send PASS\r\n');
      return client.command(`PASS ${password}`);
    }
    if (method === 'plain') {
      const payload = saslPlain(user, password);
      secrets.add(payload);
      return client.command(`AUTH PLAIN ${payload}`);
    }
    expect(await client.command('AUTH LOGIN')).toBe('+ VXNlcm5hbWU6\r\n');
    expect(await client.command(b64(user))).toBe('+ UGFzc3dvcmQ6\r\n');
    secrets.add(b64(password));
    return client.command(b64(password));
  }

  /**
   * Two sessions for one mailbox at once: the first holds Dovecot's POP3
   * lock, the second must get -ERR [IN-USE] (after Dovecot's 10 s lock wait),
   * and may log in once the first has quit.
   */
  async function lockedMailbox(user: string, password: string): Promise<Record<string, unknown>> {
    const holder = await connect(gw, 20_000);
    const held = await login(holder, user, password);
    const waiter = await connect(gw, 20_000);
    const started = Date.now();
    const refused = await login(waiter, user, password);
    const waitedMs = Date.now() - started;
    const afterRefusal = await waiter.command('NOOP');
    await holder.quit();
    const retry = await login(waiter, user, password);
    const stat = await waiter.command('STAT');
    await waiter.quit();
    return { held, refused, waitedMs, afterRefusal, retry, stat, waiterPort: waiter.localPort };
  }

  beforeAll(async () => {
    dc = await startDovecot({ users: USERS, extraConfig: DOVECOT_EXTRA });
    // Dovecot's lock wait (10 s) must fit in mailgate's upstream deadline.
    gw = await startGateway(dc, { config: { timeouts: { upstream_response_seconds: 15 } } });
    for (const u of USERS) secrets.add(u.password);
    secrets.add(dc.master.password);

    gw.store.accounts.add('alice');
    secrets.add(enableTotp(gw.store, 'alice'));
    const make = async (user: string, key: string, opts: { scopes?: Array<'imap' | 'pop3'> } = {}) => {
      const created = await gw.store.appPasswords.create(user, { name: key, ...opts });
      pw[key] = { id: created.info.id, password: created.password };
      remember(created.password);
    };
    await make('alice', 'pop3', { scopes: ['pop3'] });
    await make('alice', 'all');
    await make('alice', 'imap-only', { scopes: ['imap'] });
    await make('alice', 'revoked', { scopes: ['pop3'] });
    gw.store.appPasswords.revoke('alice', pw.revoked!.id);
    gw.store.accounts.add('bob'); // no 2-step verification: main password passed through
    gw.store.accounts.add('dave');
    gw.store.accounts.add('erin');
    secrets.add(enableTotp(gw.store, 'erin'));
    await make('erin', 'erin');
    await dc.seedMessage('dave', Buffer.from('Subject: d\r\n\r\nd\r\n'));
    await dc.seedMessage('erin', Buffer.from('Subject: e\r\n\r\ne\r\n'));

    // The lock tests wait ~10 s on Dovecot: run them alongside the rest of the file.
    inUse = Promise.all([lockedMailbox('dave', upstreamPassword('dave')), lockedMailbox('erin', pw.erin!.password)]).then(
      ([dave, erin]) => ({ dave, erin }),
      (err: Error) => ({ error: err.stack ?? err.message }),
    );
  });

  afterAll(async () => {
    for (const c of clients) c.destroy();
    for (const g of extraGateways) await g.stop();
    await gw?.stop();
    await dc?.stop();
  });

  it('every credential failure gets the same -ERR [AUTH] line, naming app passwords and the help URL', async () => {
    // An app password that expires in a moment: it works now, and must not later.
    const expiresAt = Date.now() + 3_000;
    const expiring = await gw.store.appPasswords.create('alice', { name: 'expiring', scopes: ['pop3'], expiresAt });
    remember(expiring.password);
    const early = await connect();
    expect(await login(early, 'alice', expiring.password)).toBe('+OK Logged in.\r\n');
    await early.quit();

    const attempts: Array<{ why: string; user: string; password: string; method: 'user-pass' | 'plain' | 'login' }> = [
      { why: 'wrong-password', user: 'alice', password: 'abcd efgh ijkl mnop', method: 'user-pass' },
      { why: 'unknown-account', user: 'mallory', password: 'mallory-pw', method: 'plain' },
      { why: 'two-factor-required', user: 'alice', password: upstreamPassword('alice'), method: 'user-pass' },
      { why: 'two-factor-required', user: 'alice', password: upstreamPassword('alice'), method: 'login' },
      { why: 'revoked', user: 'alice', password: pw.revoked!.password, method: 'plain' },
      { why: 'out-of-scope', user: 'alice', password: pw['imap-only']!.password, method: 'user-pass' },
      { why: 'upstream-rejected', user: 'bob', password: 'not-bobs-password', method: 'user-pass' },
    ];
    const results = await Promise.all(
      attempts.map(async (a) => {
        const client = await connect();
        const answer = await login(client, a.user, a.password, a.method);
        await client.quit();
        return { ...a, answer, port: client.localPort };
      }),
    );
    await sleep(Math.max(0, expiresAt + 50 - Date.now()));
    const late = await connect();
    results.push({ why: 'expired', user: 'alice', password: expiring.password, method: 'user-pass', answer: await login(late, 'alice', expiring.password), port: late.localPort });
    await late.quit();

    for (const r of results) expect({ why: r.why, answer: r.answer }).toEqual({ why: r.why, answer: AUTH_FAILED });
    expect(new Set(results.map((r) => r.answer)).size).toBe(1);
    expect(AUTH_FAILED).toContain(gw.config.policy.help_url);

    // The reason goes to the log only, one "login failed" line per failure.
    for (const r of results) {
      const failed = logLines(gw, 'login failed', { clientPort: r.port });
      expect(failed).toHaveLength(1);
      expect(failed[0]).toMatchObject({ reason: r.why, protocol: 'pop3', clientIp: '127.0.0.1' });
    }
  });

  it('a failed login can be retried on the same connection; the third failure closes it', async () => {
    const client = await connect();
    expect(await login(client, 'alice', 'wrong one', 'plain')).toBe(AUTH_FAILED);
    expect(await login(client, 'alice', pw.pop3!.password, 'plain')).toBe('+OK Logged in.\r\n');
    await client.quit();

    const stubborn = await connect();
    expect(await login(stubborn, 'alice', 'wrong one')).toBe(AUTH_FAILED);
    expect(await login(stubborn, 'alice', 'wrong two')).toBe(AUTH_FAILED);
    expect(await login(stubborn, 'alice', 'wrong three')).toBe(AUTH_FAILED);
    expect(await stubborn.waitClosed()).toBe('');
  });

  it('AUTH PLAIN with an authzid other than the authcid gets the same -ERR [AUTH] line and counts as a failed login', async () => {
    // Even with the right password: the answer must not single this case out.
    const payload = saslPlain('alice', pw.pop3!.password, 'bob');
    secrets.add(payload);
    const client = await connect();
    expect(await client.command(`AUTH PLAIN ${payload}`)).toBe(AUTH_FAILED);
    expect(await client.command('AUTH PLAIN')).toBe('+ \r\n');
    expect(await client.command(payload)).toBe(AUTH_FAILED);
    // The same authzid as the authcid is fine, on the same connection.
    expect(await login(client, 'alice', pw.pop3!.password, 'plain')).toBe('+OK Logged in.\r\n');
    await client.quit();

    // Not free to repeat: the third closes the connection like any third failed login.
    const stubborn = await connect();
    for (let i = 0; i < 3; i++) expect(await stubborn.command(`AUTH PLAIN ${payload}`)).toBe(AUTH_FAILED);
    expect(await stubborn.waitClosed()).toBe('');
    const closed = await sessionClosed(gw, stubborn.localPort);
    expect(closed.outcome).toBe('too-many-login-failures');
    // Five refusals in all (two above, three here), each logged: repeats of one attempt beyond the
    // first few in a period go into a summary line (src/log/repeated-lines.ts).
    expect(attemptsLogged(gw, 'login failed', { reason: 'authzid-mismatch', method: 'auth-plain', protocol: 'pop3', clientIp: '127.0.0.1' })).toBe(5);
  });

  it('an account mailgate knows but the mail server does not: an ordinary failure, logged as such', async () => {
    // Catches: Dovecot's "Authorization failed" (no such user for the master login) answered as
    // temporarily unavailable forever, and logged like a wrong master password.
    gw.store.accounts.add('nomailbox');
    const { password } = await gw.store.appPasswords.create('nomailbox', { name: 'phone' });
    secrets.add(password);
    const client = await connect();
    expect(await client.command('USER nomailbox')).toBe('+OK Send PASS\r\n');
    expect(await client.command(`PASS ${password}`)).toBe(AUTH_FAILED);
    client.destroy();
    expect(logLines(gw, 'login failed', { user: 'nomailbox', reason: 'unknown-upstream-account', protocol: 'pop3' })).toHaveLength(1);
    expect(logLines(gw, 'the mail server does not know this account', { user: 'nomailbox', protocol: 'pop3' })).toHaveLength(1);
  });

  it("the app password's last use is recorded with protocol pop3", async () => {
    for (const key of ['pop3', 'all'] as const) {
      const client = await connect();
      const before = Date.now();
      expect(await login(client, 'alice', pw[key]!.password, key === 'all' ? 'login' : 'user-pass')).toBe('+OK Logged in.\r\n');
      await client.quit();
      const info = gw.store.appPasswords.list('alice').find((p) => p.id === pw[key]!.id);
      expect(info?.lastUsed).toMatchObject({ protocol: 'pop3', ip: '127.0.0.1' });
      expect(info!.lastUsed!.at).toBeGreaterThanOrEqual(before - 1000);
    }
  });

  it("XCLIENT: Dovecot logs the client's own address and port (rip=, rport=) and mailgate's session id; app passwords log in as master (authzid)", async () => {
    const client = await connect();
    expect(await login(client, 'alice', pw.pop3!.password, 'plain')).toBe('+OK Logged in.\r\n');
    await client.quit();
    const closed = await sessionClosed(gw, client.localPort);
    expect(closed).toMatchObject({ mode: 'app-password', method: 'auth-plain', user: 'alice' });
    const id = String(closed.session);
    // Without XCLIENT, rport would be mailgate's own outgoing port and session Dovecot's own id.
    const line = await dc.waitForLog(new RegExp(`pop3-login: Info: Login: .*session=<${id}>`));
    expect(line).toContain('user=<alice>, orig=<gwmaster>, method=PLAIN');
    expect(line).toContain(`rip=127.0.0.1, rport=${client.localPort},`);
    expect(line).toContain('TLS');
    await dc.waitForLog(/auth: Info: Master user logging in as alice/);
  });

  it("passthrough: an account without 2-step verification logs in upstream with the client's own credentials", async () => {
    const client = await connect();
    expect(await login(client, 'bob', upstreamPassword('bob'), 'login')).toBe('+OK Logged in.\r\n');
    expect(await client.command('STAT')).toBe('+OK 0 0\r\n');
    await client.quit();
    const closed = await sessionClosed(gw, client.localPort);
    expect(closed).toMatchObject({ mode: 'upstream-password', method: 'auth-login', user: 'bob' });
    const line = await dc.waitForLog(new RegExp(`pop3-login: Info: Login: .*session=<${String(closed.session)}>`));
    expect(line).toContain('user=<bob>, orig=<bob>, method=PLAIN');
    expect(line).toContain(`rport=${client.localPort},`);
  });

  it('master login by "user*master" with USER/PASS (master_style = "separator"); a wrong separator shows it is really used', async () => {
    const start = (separator: string) =>
      startGateway(dc, { config: { upstream: { login: { master_style: 'separator', separator } } } }).then((g) => {
        extraGateways.push(g);
        return g;
      });
    const [good, bad] = await Promise.all([start(dc.masterSeparator), start('+')]);
    const carolPw: string[] = [];
    for (const g of [good, bad]) {
      g.store.accounts.add('carol');
      secrets.add(enableTotp(g.store, 'carol'));
      const created = await g.store.appPasswords.create('carol', { name: 'sep', scopes: ['pop3'] });
      remember(created.password);
      carolPw.push(created.password);
    }
    const [viaGood, viaBad] = await Promise.all([connect(good), connect(bad)]);
    const [okAnswer, badAnswer] = await Promise.all([login(viaGood, 'carol', carolPw[0]!), login(viaBad, 'carol', carolPw[1]!)]);
    expect(okAnswer).toBe('+OK Logged in.\r\n');
    expect(await viaGood.command('STAT')).toBe('+OK 0 0\r\n');
    await viaGood.quit();
    // Dovecot refuses "carol+gwmaster": a refused master login is mailgate's problem, not the user's.
    expect(badAnswer).toMatch(/^-ERR \[SYS\/TEMP\] /);
    await viaBad.quit();
    const closed = await sessionClosed(good, viaGood.localPort);
    const line = await dc.waitForLog(new RegExp(`pop3-login: Info: Login: .*session=<${String(closed.session)}>`));
    expect(line).toContain('user=<carol>, orig=<gwmaster>, method=PLAIN');
    expect(logLines(bad, 'upstream login failed')[0]?.reason).toMatch(/refused the master login/);
  });

  it("mailgate's STLS to Dovecot verifies Dovecot's certificate: with another CA configured, no login reaches Dovecot", async () => {
    const otherDir = await makeTempDir('pop3-other-ca');
    try {
      const other = await makeTestPki(otherDir);
      const strict = await startGateway(dc, { config: { upstream: { pop3: { ca: other.caCert } } } });
      extraGateways.push(strict);
      strict.store.accounts.add('bob');
      const client = await connect(strict);
      expect(await login(client, 'bob', upstreamPassword('bob'))).toMatch(/^-ERR \[SYS\/TEMP\] /);
      await client.quit();
      const failure = logLines(strict, 'upstream login failed')[0];
      expect(String(failure?.reason)).toMatch(/TLS with the upstream failed/);
      expect(logLines(strict, 'login ok')).toEqual([]);
    } finally {
      await removeTempDir(otherDir);
    }
  });

  it('a mailbox locked upstream: -ERR [IN-USE] is passed on, for passthrough and for app-password (master) logins; a retry works once it is free', async () => {
    const result = await inUse;
    expect(result.error).toBeUndefined();
    for (const user of ['dave', 'erin'] as const) {
      const r = result[user] as Record<string, unknown>;
      expect(r.held).toBe('+OK Logged in.\r\n');
      expect(r.refused).toMatch(/^-ERR \[IN-USE\] [^\r\n]+\r\n$/);
      expect(r.waitedMs).toBeGreaterThanOrEqual(9_000); // Dovecot's own lock wait: the answer came from Dovecot
      expect(r.afterRefusal).toBe('-ERR Log in first.\r\n'); // still talking to mailgate, still connected
      expect(r.retry).toBe('+OK Logged in.\r\n');
      expect(r.stat).toMatch(/^\+OK 1 \d+\r\n$/);
      // In use is not a credential failure.
      expect(logLines(gw, 'login failed', { clientPort: r.waiterPort })).toEqual([]);
      expect(gw.logs().some((l) => l.user === user && /IN-USE/.test(String(l.upstream ?? '')))).toBe(true);
    }
  });

  it('logs one "session closed" line per session, with its outcome', async () => {
    expect(clients.length).toBeGreaterThan(15);
    for (const port of clients.map((c) => c.localPort)) {
      const owner = await waitUntil(
        () => [gw, ...extraGateways].find((g) => logLines(g, 'session closed', { clientPort: port }).length > 0),
        `"session closed" for client port ${port}`,
      );
      const lines = logLines(owner, 'session closed', { clientPort: port });
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatchObject({ protocol: 'pop3', clientIp: '127.0.0.1', listener: expect.stringMatching(/^pop3\/implicit@/) });
      expect(typeof lines[0]!.outcome).toBe('string');
    }
  });

  it('the logs hold no secret: no app password (with or without spaces), upstream or master password, AUTH payload or TOTP secret', async () => {
    await sleep(100);
    const logs = [gw, ...extraGateways].map((g) => g.logText()).join('\n');
    expect(logs.length).toBeGreaterThan(1000);
    expect(secrets.size).toBeGreaterThan(20);
    const found = [...secrets].filter((s) => logs.includes(s));
    expect(found).toEqual([]);
    // And nothing went wrong inside mailgate along the way.
    expect(logs).not.toMatch(/internal error in session/);
  });
});
