/**
 * IMAP login through a real mailgate in front of a real Dovecot: every form
 * the LOGIN and AUTHENTICATE arguments can take, how mailgate logs in
 * upstream (STARTTLS with certificate verification, ID forwarding, master
 * login by authzid or by separator, passthrough), and real clients (Python
 * imaplib over implicit TLS and STARTTLS, curl).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { logLines, sessionClosed, startGateway, type GatewayHandle } from '../support/gateway.js';
import { credentialFailure, ImapClient, imaps } from '../support/imap-client.js';
import { makeTestPki } from '../support/pki.js';
import { mailClientScript, runPython } from '../support/python.js';
import { b64, saslPlain } from '../support/raw-client.js';
import { curlFetch, imapFlow } from '../support/real-clients.js';
import { enableTotp } from '../support/store.js';
import { makeTempDir, removeTempDir } from '../support/tmp.js';
import { waitUntil } from '../support/timing.js';

const HELP_URL = 'https://mail.example.test/app-passwords';
const DAVE_PW = 'Grüße aus Köln'; // UTF-8 and spaces
const ERIN_PW = 'q"uo\\te d'; // a double quote, a backslash and a space

const MSG = Buffer.from(
  [
    'From: Sender <sender@example.org>',
    'To: Alice <alice@example.org>',
    'Subject: login test message',
    'Message-ID: <login-1@example.org>',
    'MIME-Version: 1.0',
    'Content-Type: text/plain; charset=utf-8',
    '',
    'Grüße, Alice.',
    '.a line starting with a dot',
    '',
  ].join('\r\n'),
  'utf8',
);

let dc: DovecotHandle;
let gw: GatewayHandle;
let aliceApp: string;
/** What Dovecot itself answers a successful login with: its post-login capabilities. */
let dovecotPostLogin: string;

beforeAll(async () => {
  dc = await startDovecot({
    users: [
      { name: 'alice', password: 'alice-upstream-pw' },
      { name: 'bob', password: 'bob-upstream-pw' },
      { name: 'dave', password: DAVE_PW },
      { name: 'erin', password: ERIN_PW },
    ],
    // rport shows whether the client port forwarded by ID was applied.
    extraConfig: 'login_log_format_elements = user=<%u> orig=<%{orig_user}> method=%m rip=%r rport=%{rport} lip=%l mpid=%e %c session=<%{session}>',
  });
  gw = await startGateway(dc);
  for (const user of ['alice', 'bob', 'dave', 'erin']) gw.store.accounts.add(user);
  enableTotp(gw.store, 'alice');
  aliceApp = (await gw.store.appPasswords.create('alice', { name: 'Laptop', scopes: ['imap'] })).password;
  await dc.seedMessage('alice', MSG);

  const { client: direct } = await ImapClient.open({ port: dc.imapsPort, tls: true, ca: dc.caCert });
  const ok = await direct.command('d1', 'LOGIN bob bob-upstream-pw');
  dovecotPostLogin = /^d1 OK \[CAPABILITY ([^\]]*)\]/m.exec(ok)![1]!;
  await direct.command('d2', 'LOGOUT');
  await direct.end();
});

afterAll(async () => {
  await gw?.stop();
  await dc?.stop();
});

const connect = () => imaps(gw);

function loggedIn(tag: string): string {
  return `${tag} OK [CAPABILITY ${dovecotPostLogin}] Logged in\r\n`;
}

/** After a successful login the session relays: prove it with a real upstream command, then log out. */
async function selectAndLogout(c: ImapClient): Promise<void> {
  expect(await c.command('s', 'SELECT INBOX')).toMatch(/\r\ns OK \[READ-WRITE\] Select completed/);
  expect(await c.command('z', 'LOGOUT')).toMatch(/^\* BYE Logging out\r\nz OK Logout completed/);
  await c.waitClosed();
}

describe('LOGIN arguments', () => {
  it('atoms; the OK carries the upstream post-login capabilities verbatim', async () => {
    const c = await connect();
    expect(await c.command('a1', 'LOGIN bob bob-upstream-pw')).toBe(loggedIn('a1'));
    expect(dovecotPostLogin).toMatch(/^IMAP4rev1 .*IDLE.* (SORT|THREAD=)/);
    await selectAndLogout(c);
  });

  it('quoted strings with \\" and \\\\ (and a space)', async () => {
    const c = await connect();
    expect(await c.command('a2', 'LOGIN "erin" "q\\"uo\\\\te d"')).toBe(loggedIn('a2'));
    await selectAndLogout(c);
  });

  it('synchronising literals: "+" before each literal, the data only after it', async () => {
    const c = await connect();
    const pw = Buffer.from(DAVE_PW, 'utf8');
    c.send('a3 LOGIN {4}\r\n');
    expect(await c.readLine()).toBe('+ Ready for literal data\r\n');
    c.send(`dave {${pw.length}}\r\n`);
    expect(await c.readLine()).toBe('+ Ready for literal data\r\n');
    c.send(Buffer.concat([pw, Buffer.from('\r\n')]));
    expect(await c.readUntilTagged('a3')).toBe(loggedIn('a3'));
    await selectAndLogout(c);
  });

  it('non-synchronising literals {n+} in one packet: no "+", straight to the answer', async () => {
    const c = await connect();
    const pw = Buffer.from(DAVE_PW, 'utf8');
    c.send(Buffer.concat([Buffer.from(`a4 LOGIN {4+}\r\ndave {${pw.length}+}\r\n`), pw, Buffer.from('\r\n')]));
    expect(await c.readLine()).toBe(loggedIn('a4'));
    await selectAndLogout(c);
  });

  it('UTF-8 password with spaces in a quoted string', async () => {
    const c = await connect();
    expect(await c.command('a5', `LOGIN dave "${DAVE_PW}"`)).toBe(loggedIn('a5'));
    await selectAndLogout(c);
  });

  it('an app password quoted with its spaces, and as one upper-case atom; the user name in any case', async () => {
    const c = await connect();
    expect(await c.command('a6', `LOGIN alice "${aliceApp}"`)).toBe(loggedIn('a6'));
    await selectAndLogout(c);
    const d = await connect();
    expect(await d.command('a7', `LOGIN ALICE ${aliceApp.replace(/ /g, '').toUpperCase()}`)).toBe(loggedIn('a7'));
    await selectAndLogout(d);
  });

  it('a UTF-8 user name is a user name (refused like any unknown one); invalid UTF-8 is BAD', async () => {
    const c = await connect();
    expect(await c.command('a8', 'LOGIN "jürgen" "irrelevant-pw-1"')).toBe(credentialFailure('a8', HELP_URL));
    c.send(Buffer.concat([Buffer.from('a9 LOGIN "j'), Buffer.from([0xff, 0xfe]), Buffer.from('rgen" "irrelevant-pw-2"\r\n')]));
    expect(await c.readUntilTagged('a9')).toBe('a9 BAD The username is not valid UTF-8.\r\n');
    await c.end();
    expect(logLines(gw, 'login failed', { clientPort: c.localPort }).map((l) => [l.user, l.reason])).toEqual([['jürgen', 'unknown-account']]);
  });

  it('LOGIN with a missing password is BAD', async () => {
    const c = await connect();
    expect(await c.command('a10', 'LOGIN bob')).toBe('a10 BAD LOGIN needs a username and a password.\r\n');
    await c.end();
  });
});

describe('AUTHENTICATE', () => {
  it('PLAIN with an initial response (SASL-IR)', async () => {
    const c = await connect();
    expect(await c.command('b1', `AUTHENTICATE PLAIN ${saslPlain('bob', 'bob-upstream-pw')}`)).toBe(loggedIn('b1'));
    await selectAndLogout(c);
  });

  it('PLAIN without one: "+ " then one line; lower-case works', async () => {
    const c = await connect();
    c.send('b2 authenticate plain\r\n');
    expect(await c.readLine()).toBe('+ \r\n');
    c.send(`${saslPlain('dave', DAVE_PW)}\r\n`);
    expect(await c.readUntilTagged('b2')).toBe(loggedIn('b2'));
    await selectAndLogout(c);
  });

  it('"=" is an empty initial response: for PLAIN no credentials (BAD, no "+"), for LOGIN the user name is asked for', async () => {
    const c = await connect();
    expect(await c.command('b3', 'AUTHENTICATE PLAIN =')).toBe('b3 BAD Malformed authentication data.\r\n');
    expect(await c.command('b4', 'NOOP')).toBe('b4 OK NOOP completed\r\n');
    // For LOGIN, an empty initial response carries no user name: it is asked for.
    c.send('b4a AUTHENTICATE LOGIN =\r\n');
    expect(await c.readLine()).toBe('+ VXNlcm5hbWU6\r\n');
    c.send('*\r\n');
    expect(await c.readUntilTagged('b4a')).toBe('b4a BAD Authentication cancelled.\r\n');
    await c.end();
  });

  it('"*" cancels with BAD, and the session goes on', async () => {
    const c = await connect();
    c.send('b5 AUTHENTICATE PLAIN\r\n');
    expect(await c.readLine()).toBe('+ \r\n');
    c.send('*\r\n');
    expect(await c.readUntilTagged('b5')).toBe('b5 BAD Authentication cancelled.\r\n');
    c.send('b6 AUTHENTICATE LOGIN\r\n');
    expect(await c.readLine()).toBe('+ VXNlcm5hbWU6\r\n');
    c.send(`${b64('bob')}\r\n`);
    expect(await c.readLine()).toBe('+ UGFzc3dvcmQ6\r\n');
    c.send('*\r\n');
    expect(await c.readUntilTagged('b6')).toBe('b6 BAD Authentication cancelled.\r\n');
    expect(await c.command('b7', `AUTHENTICATE PLAIN ${saslPlain('bob', 'bob-upstream-pw')}`)).toBe(loggedIn('b7'));
    await selectAndLogout(c);
  });

  it('an authzid other than the authcid gets the one credential-failure answer and counts as a failed login; the same one is fine', async () => {
    const c = await connect();
    // Even with the right password: the answer must not single this case out.
    expect(await c.command('b8', `AUTHENTICATE PLAIN ${saslPlain('bob', 'bob-upstream-pw', 'alice')}`)).toBe(credentialFailure('b8', HELP_URL));
    expect(await c.command('b9', `AUTHENTICATE PLAIN ${saslPlain('bob', 'bob-upstream-pw', 'bob')}`)).toBe(loggedIn('b9'));
    await selectAndLogout(c);

    // Not free to repeat: the third closes the connection like any third failed login.
    const d = await connect();
    const sasl = saslPlain('bob', 'bob-upstream-pw', 'alice');
    d.send('b9a AUTHENTICATE PLAIN\r\n');
    expect(await d.readLine()).toBe('+ \r\n');
    d.send(`${sasl}\r\n`);
    expect(await d.readUntilTagged('b9a')).toBe(credentialFailure('b9a', HELP_URL));
    expect(await d.command('b9b', `AUTHENTICATE PLAIN ${sasl}`)).toBe(credentialFailure('b9b', HELP_URL));
    expect(await d.command('b9c', `AUTHENTICATE PLAIN ${sasl}`)).toBe(credentialFailure('b9c', HELP_URL));
    expect(await d.waitClosed()).toBe('* BYE Too many failed logins.\r\n');
    const closed = await sessionClosed(gw, d.localPort);
    expect(closed.outcome).toBe('too-many-login-failures');
    const failed = logLines(gw, 'login failed', { session: closed.session });
    expect(failed.map((l) => [l.reason, l.method, l.clientIp])).toEqual(Array(3).fill(['authzid-mismatch', 'authenticate-plain', '127.0.0.1']));
  });

  it('an account mailgate knows but the mail server does not: an ordinary failed login, logged as such', async () => {
    // Catches: Dovecot's "no such user" for a master login (NO [AUTHORIZATIONFAILED]) taken for a
    // refused master password: users got "temporarily unavailable" forever, and the log sent the
    // operator after the master password.
    gw.store.accounts.add('nomailbox');
    const { password } = await gw.store.appPasswords.create('nomailbox', { name: 'phone' });
    const c = await connect();
    expect(await c.command('n1', `LOGIN nomailbox "${password}"`)).toBe(credentialFailure('n1', HELP_URL));
    c.destroy();
    expect(logLines(gw, 'login failed', { user: 'nomailbox' }).map((l) => l.reason)).toEqual(['unknown-upstream-account']);
    expect(logLines(gw, 'the mail server does not know this account', { user: 'nomailbox' })).toHaveLength(1);
    expect(logLines(gw, 'upstream login failed', { user: 'nomailbox' })).toEqual([]);
  });

  it('"*" as the initial response cancels like a "*" line: BAD, not counted as a bad command', async () => {
    const c = await connect();
    // Three of them: were they counted, max_bad_commands (3) would close the session.
    expect(await c.command('b13', 'AUTHENTICATE PLAIN *')).toBe('b13 BAD Authentication cancelled.\r\n');
    expect(await c.command('b14', 'authenticate login *')).toBe('b14 BAD Authentication cancelled.\r\n');
    expect(await c.command('b15', 'AUTHENTICATE PLAIN *')).toBe('b15 BAD Authentication cancelled.\r\n');
    expect(await c.command('b16', 'NOOP')).toBe('b16 OK NOOP completed\r\n');
    expect(await c.command('b17', `AUTHENTICATE PLAIN ${saslPlain('bob', 'bob-upstream-pw')}`)).toBe(loggedIn('b17'));
    await selectAndLogout(c);
    expect(logLines(gw, 'login failed', { clientPort: c.localPort })).toEqual([]);
  });

  it('invalid base64 gets BAD, in the initial response and in a continuation line, and counts as a bad command', async () => {
    const c = await connect();
    expect(await c.command('b18', 'AUTHENTICATE PLAIN QQ=')).toBe('b18 BAD Invalid base64 in the authentication data.\r\n');
    c.send('b19 AUTHENTICATE PLAIN\r\n');
    expect(await c.readLine()).toBe('+ \r\n');
    c.send('not base64!\r\n');
    expect(await c.readUntilTagged('b19')).toBe('b19 BAD Invalid base64 in the authentication data.\r\n');
    c.send(`b20 AUTHENTICATE LOGIN ${b64('bob')}\r\n`);
    expect(await c.readLine()).toBe('+ UGFzc3dvcmQ6\r\n');
    // The right password, spoiled by a stray "=": judged as base64, never as a password.
    c.send(`${b64('bob-upstream-pw')}=\r\n`);
    expect(await c.readLine()).toBe('b20 BAD Invalid base64 in the authentication data.\r\n');
    expect(await c.readLine()).toBe('* BYE Too many invalid commands.\r\n');
    expect(await c.waitClosed()).toBe('');
  });

  it('LOGIN mechanism, without and with an initial response', async () => {
    const c = await connect();
    c.send('b10 AUTHENTICATE LOGIN\r\n');
    expect(await c.readLine()).toBe('+ VXNlcm5hbWU6\r\n');
    c.send(`${b64('alice')}\r\n`);
    expect(await c.readLine()).toBe('+ UGFzc3dvcmQ6\r\n');
    c.send(`${b64(aliceApp)}\r\n`);
    expect(await c.readUntilTagged('b10')).toBe(loggedIn('b10'));
    await selectAndLogout(c);

    const d = await connect();
    d.send(`b11 AUTHENTICATE LOGIN ${b64('erin')}\r\n`);
    expect(await d.readLine()).toBe('+ UGFzc3dvcmQ6\r\n');
    d.send(`${b64(ERIN_PW)}\r\n`);
    expect(await d.readUntilTagged('b11')).toBe(loggedIn('b11'));
    await selectAndLogout(d);
  });

  it('an unsupported mechanism is refused with NO and counts as a bad command', async () => {
    const c = await connect();
    expect(await c.command('b12', 'AUTHENTICATE CRAM-MD5')).toBe('b12 NO Unsupported mechanism; use PLAIN or LOGIN.\r\n');
    expect(await c.command('b12a', 'AUTHENTICATE XOAUTH2 dXNlcj1ib2IBAQ==')).toBe('b12a NO Unsupported mechanism; use PLAIN or LOGIN.\r\n');
    c.send('b12b AUTHENTICATE GSSAPI\r\n');
    expect(await c.readLine()).toBe('b12b NO Unsupported mechanism; use PLAIN or LOGIN.\r\n');
    expect(await c.readLine()).toBe('* BYE Too many invalid commands.\r\n');
    expect(await c.waitClosed()).toBe('');
  });
});

describe('upstream login', () => {
  /** The Dovecot log line for the login of this mailgate session. */
  async function dovecotLogin(session: string): Promise<string> {
    return dc.waitForLog((l) => l.includes('imap-login: Info: Login:') && l.includes(`session=<${session}>`));
  }

  it('app password: master login by SASL PLAIN authzid over verified STARTTLS, with the client address forwarded by ID', async () => {
    const c = await connect();
    expect(await c.command('c1', `LOGIN alice "${aliceApp}"`)).toBe(loggedIn('c1'));
    const port = c.localPort;
    await selectAndLogout(c);
    const session = (await sessionClosed(gw, port)).session as string;
    expect(session).toMatch(/^[A-Za-z0-9_-]{8}$/);
    const login = await dovecotLogin(session);
    // rport is the client's port, not that of mailgate's own connection: the ID was applied.
    expect(login).toContain(`user=<alice>, orig=<${dc.master.name}>, method=PLAIN, rip=127.0.0.1, rport=${port}, lip=127.0.0.1`);
    expect(login).toMatch(/, TLS, session=/); // STARTTLS upstream
    const log = await dc.logText();
    expect(log).toContain(
      `ID sent: x-originating-ip=127.0.0.1, x-originating-port=${port}, x-connected-ip=127.0.0.1, x-connected-port=${gw.ports.imaps}, x-session-ext-id=${session}`,
    );
    expect(log).toMatch(/auth: Info: Master user logging in as alice/);
  });

  it('the client\'s own ID is never forwarded: a spoofed x-originating-ip does not reach Dovecot', async () => {
    const c = await connect();
    expect(await c.command('c0', 'ID ("name" "spoofer" "x-originating-ip" "203.0.113.66" "x-session-ext-id" "forged")')).toBe(
      '* ID ("name" "mailgate")\r\nc0 OK ID completed\r\n',
    );
    expect(await c.command('c1', 'LOGIN bob bob-upstream-pw')).toBe(loggedIn('c1'));
    const port = c.localPort;
    await selectAndLogout(c);
    const session = (await sessionClosed(gw, port)).session as string;
    expect(await dovecotLogin(session)).toContain(`rip=127.0.0.1, rport=${port},`);
    const log = await dc.logText();
    expect(log).not.toContain('203.0.113.66');
    expect(log).not.toContain('forged');
  });

  it('passthrough logs in with the client\'s own credentials', async () => {
    const c = await connect();
    expect(await c.command('c2', 'LOGIN bob bob-upstream-pw')).toBe(loggedIn('c2'));
    const port = c.localPort;
    await selectAndLogout(c);
    const closed = await sessionClosed(gw, port);
    expect(closed).toMatchObject({ user: 'bob', mode: 'upstream-password', method: 'login' });
    expect(await dovecotLogin(closed.session as string)).toContain(`user=<bob>, orig=<bob>, method=PLAIN, rip=127.0.0.1, rport=${port},`);
  });

  it('master login by "user*master" LOGIN (master_style = "separator")', async () => {
    const sep = await startGateway(dc, { config: { upstream: { login: { master_style: 'separator' } } } });
    // Same Dovecot, but a separator it does not know: the login must fail, which
    // shows that mailgate really logs in as "alice<separator>gwmaster".
    const wrongSep = await startGateway(dc, { config: { upstream: { login: { master_style: 'separator', separator: '!' } } } });
    try {
      for (const g of [sep, wrongSep]) {
        g.store.accounts.add('alice');
        enableTotp(g.store, 'alice');
      }
      const app = (await sep.store.appPasswords.create('alice', { name: 'Phone' })).password;
      const wrongApp = (await wrongSep.store.appPasswords.create('alice', { name: 'Phone' })).password;

      const c = await imaps(sep);
      expect(await c.command('c3', `LOGIN alice "${app}"`)).toBe(loggedIn('c3'));
      const port = c.localPort;
      await selectAndLogout(c);
      const session = (await sessionClosed(sep, port)).session as string;
      expect(await dovecotLogin(session)).toContain(`user=<alice>, orig=<${dc.master.name}>, method=PLAIN, rip=127.0.0.1, rport=${port},`);

      const d = await imaps(wrongSep);
      expect(await d.command('c4', `LOGIN alice "${wrongApp}"`)).toBe(
        'c4 NO [UNAVAILABLE] The mail service is temporarily unavailable; try again in a few minutes.\r\n',
      );
      await d.end();
      const why = await waitUntil(() => logLines(wrongSep, 'upstream login failed')[0], 'the upstream failure in the log');
      expect(why.reason).toMatch(/^the upstream refused the master login: mg\d+ NO \[AUTHENTICATIONFAILED\]/);
    } finally {
      await Promise.all([sep.stop(), wrongSep.stop()]);
    }
  });

  it('the upstream certificate is verified: a gateway that trusts another CA does not log in', async () => {
    const dir = await makeTempDir('other-ca');
    try {
      const other = await makeTestPki(dir);
      const g = await startGateway(dc, { config: { upstream: { imap: { ca: other.caCert } } } });
      try {
        const c = await imaps(g);
        expect(await c.command('c5', 'LOGIN carol irrelevant')).toBe(credentialFailure('c5', HELP_URL)); // unknown to this store
        g.store.accounts.add('bob');
        expect(await c.command('c6', 'LOGIN bob bob-upstream-pw')).toBe(
          'c6 NO [UNAVAILABLE] The mail service is temporarily unavailable; try again in a few minutes.\r\n',
        );
        await c.end();
        const why = await waitUntil(() => logLines(g, 'upstream login failed')[0], 'the TLS failure in the log');
        expect(why.reason).toMatch(/^TLS with the upstream failed: .*(self[- ]signed|unable to (get|verify)|certificate)/i);
      } finally {
        await g.stop();
      }
    } finally {
      await removeTempDir(dir);
    }
  });
});

describe('real clients', () => {
  const PY = mailClientScript(`
    def session(M):
        typ, data = M._simple_command('ID', '("name" "imaplib" "version" "3")')
        assert typ == 'OK', (typ, data)
        typ, data = M.login(INPUT['user'], INPUT['password'])
        assert typ == 'OK', (typ, data)
        typ, data = M.select('INBOX')
        assert typ == 'OK', (typ, data)
        typ, data = M.uid('FETCH', '1', '(BODY.PEEK[])')
        assert typ == 'OK', (typ, data)
        body = [item[1] for item in data if isinstance(item, tuple)][0]
        M.logout()
        return base64.b64encode(body).decode()
  `);

  it('Python imaplib over implicit TLS, verifying the certificate as localhost', async () => {
    const res = await runPython(
      `${PY}
M = IMAPS('localhost', INPUT['port'], ssl_context=ctx())
caps = list(M.capabilities)
tls = M.sock.version()
emit({'caps': caps, 'tls': tls, 'body': session(M)})
`,
      { ca: gw.caCert, port: gw.ports.imaps, user: 'alice', password: aliceApp },
    );
    expect(res.code, res.stderr).toBe(0);
    const out = res.json as { caps: string[]; tls: string; body: string };
    expect(out.tls).toMatch(/^TLSv1\.[23]$/);
    expect(out.caps).toEqual(expect.arrayContaining(['IMAP4REV1', 'AUTH=PLAIN', 'IDLE']));
    expect(Buffer.from(out.body, 'base64').equals(MSG)).toBe(true);
  });

  it('Python imaplib over STARTTLS, verifying the certificate as localhost', async () => {
    const res = await runPython(
      `${PY}
M = IMAP('localhost', INPUT['port'])
before = list(M.capabilities)
M.starttls(ssl_context=ctx())
after = list(M.capabilities)
tls = M.sock.version()
emit({'before': before, 'after': after, 'tls': tls, 'body': session(M)})
`,
      { ca: gw.caCert, port: gw.ports.imap, user: 'alice', password: aliceApp },
    );
    expect(res.code, res.stderr).toBe(0);
    const out = res.json as { before: string[]; after: string[]; tls: string; body: string };
    expect(out.before).toEqual(expect.arrayContaining(['STARTTLS', 'LOGINDISABLED']));
    expect(out.before.filter((c) => c.startsWith('AUTH='))).toEqual([]);
    expect(out.after).toEqual(expect.arrayContaining(['AUTH=PLAIN', 'AUTH=LOGIN']));
    expect(out.after).not.toContain('STARTTLS');
    expect(out.tls).toMatch(/^TLSv1\.[23]$/);
    expect(Buffer.from(out.body, 'base64').equals(MSG)).toBe(true);
  });

  it('curl imaps://localhost/INBOX;UID=1 with an app password fetches the message byte-identically', async () => {
    const body = await curlFetch(`imaps://localhost:${gw.ports.imaps}/INBOX;UID=1`, { ca: gw.caCert, user: 'alice', password: aliceApp, home: gw.dir });
    expect(body.equals(MSG)).toBe(true);
  });

  it('curl over STARTTLS (imap:// --ssl-reqd) fetches the message byte-identically', async () => {
    const body = await curlFetch(`imap://localhost:${gw.ports.imap}/INBOX;UID=1`, { ca: gw.caCert, user: 'alice', password: aliceApp, home: gw.dir, sslReqd: true });
    expect(body.equals(MSG)).toBe(true);
  });

  it('ImapFlow over STARTTLS', async () => {
    const client = imapFlow(gw.ports.imap, gw.caCert, { user: 'alice', pass: aliceApp }, { secure: false, doSTARTTLS: true });
    await client.connect();
    try {
      // The login itself shows STARTTLS happened: before it, mailgate refuses credentials.
      const lock = await client.getMailboxLock('INBOX');
      try {
        const msg = await client.fetchOne('1', { source: true }, { uid: true });
        expect(msg === false ? null : msg.source).toEqual(MSG);
      } finally {
        lock.release();
      }
    } finally {
      await client.logout().catch(() => client.close());
    }
  });
});
