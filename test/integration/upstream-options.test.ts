/**
 * The `[upstream.*]` and `[upstream.login]` options that the other suites
 * leave at their defaults:
 *
 * - `tls = "implicit"`: a real login and a command through mailgate to
 *   Dovecot's IMAPS and POP3S ports; `verify`, `ca` and `servername` decide
 *   whether its certificate is accepted;
 * - `tls = "none"` to an IMAP server that says LOGINDISABLED: no credential
 *   ever goes out, the client gets a temporary error;
 * - `forward_client_ip = false`: no IMAP ID and no POP3 XCLIENT is sent
 *   (with `true` they are, as the Dovecot log tests in imap-login.test.ts and
 *   pop3-policy.test.ts also show);
 * - `master_password_file`: a file with a trailing newline works, it takes
 *   precedence over the environment, and a missing file stops the start.
 *
 * Real Dovecot wherever it can show the behaviour; a recording fake upstream
 * where what matters is which bytes were (not) sent.
 */
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { CREDENTIAL_COMMANDS, startFakeUpstream, type FakeConnection, type FakeUpstream } from '../support/fake-upstream.js';
import { logLines, sessionClosed, startGateway, type GatewayHandle } from '../support/gateway.js';
import { imapQuote, imaps, taggedLine } from '../support/imap-client.js';
import { pop3s } from '../support/pop3-client.js';
import { saslPlain } from '../support/raw-client.js';
import { enableTotp } from '../support/store.js';
import { waitUntil } from '../support/timing.js';
import { makeTempDir, removeTempDir } from '../support/tmp.js';
import { ConfigError } from '../../src/config/load.js';

const IMAP_UNAVAILABLE = 'NO [UNAVAILABLE] The mail service is temporarily unavailable; try again in a few minutes.\r\n';
const POP3_SYS_TEMP = /^-ERR \[SYS\/TEMP\] /;

let dc: DovecotHandle;
let dir: string;
const gateways: GatewayHandle[] = [];

/** A gateway that is stopped after the file; alice has 2FA and an app password for both protocols. */
async function gateway(config: Record<string, unknown>, extra: { env?: NodeJS.ProcessEnv } = {}): Promise<{ gw: GatewayHandle; app: string }> {
  const gw = await startGateway(dc, { config, ...extra });
  gateways.push(gw);
  gw.store.accounts.add('alice');
  gw.store.accounts.add('bob');
  enableTotp(gw.store, 'alice');
  const app = (await gw.store.appPasswords.create('alice', { name: 'phone', scopes: ['imap', 'pop3'] })).password;
  return { gw, app };
}

/** IMAPS login as alice with her app password (a master login upstream); the tagged answer. */
async function imapLogin(gw: GatewayHandle, app: string): Promise<{ answer: string; port: number; close: () => Promise<void> }> {
  const c = await imaps(gw, { timeoutMs: 10_000 });
  const answer = taggedLine(await c.command('u1', `LOGIN alice ${imapQuote(app)}`), 'u1');
  return { answer: `${answer}\r\n`, port: c.localPort, close: () => c.end() };
}

async function pop3Login(gw: GatewayHandle, app: string): Promise<{ answer: string; port: number; close: () => Promise<void> }> {
  const c = await pop3s(gw, { timeoutMs: 10_000 });
  expect(await c.command('USER alice')).toMatch(/^\+OK/);
  const answer = await c.command(`PASS ${app}`);
  return { answer, port: c.localPort, close: () => c.end() };
}

beforeAll(async () => {
  dir = await makeTempDir('upopts');
  dc = await startDovecot({
    // lport shows which of Dovecot's ports mailgate logged in on; session, that it was this session.
    extraConfig: 'login_log_format_elements = user=<%u> orig=<%{orig_user}> method=%m rip=%r lip=%l lport=%{lport} %c session=<%{session}>',
  });
});

afterAll(async () => {
  await Promise.all(gateways.map((g) => g.stop()));
  await dc?.stop();
  if (dir) await removeTempDir(dir);
});

describe('tls = "implicit" upstream (Dovecot IMAPS and POP3S)', () => {
  const implicit = (extra: Record<string, unknown> = {}) => ({
    upstream: {
      imap: { port: dc.imapsPort, tls: 'implicit', ...extra },
      pop3: { port: dc.pop3sPort, tls: 'implicit', ...extra },
    },
  });

  it('IMAP: an app-password login and SELECT go through, over TLS to the IMAPS port', async () => {
    // Catches: implicit TLS treated as plain TCP (Dovecot's IMAPS port would never answer).
    const { gw, app } = await gateway(implicit());
    const c = await imaps(gw, { timeoutMs: 10_000 });
    expect(taggedLine(await c.command('i1', `LOGIN alice ${imapQuote(app)}`), 'i1')).toMatch(/^i1 OK \[CAPABILITY IMAP4rev1 /);
    expect(await c.command('i2', 'SELECT INBOX')).toMatch(/^i2 OK \[READ-WRITE\] /m);
    expect(taggedLine(await c.command('i3', 'LOGOUT'), 'i3')).toMatch(/^i3 OK/);
    await c.waitClosed();
    const session = String((await sessionClosed(gw, c.localPort)).session);
    const login = await dc.waitForLog((l) => l.includes('imap-login: Info: Login:') && l.includes(`session=<${session}>`));
    expect(login).toContain(`user=<alice>, orig=<${dc.master.name}>, method=PLAIN`);
    // lport is mailgate's own listener here (ID x-connected-port); that Dovecot's IMAPS port answered at all shows TLS from the first byte.
    expect(login).toMatch(/, TLS, session=/);
  });

  it('POP3: an app-password login and STAT go through, over TLS to the POP3S port', async () => {
    const { gw, app } = await gateway(implicit());
    const c = await pop3s(gw, { timeoutMs: 10_000 });
    expect(await c.command('USER alice')).toMatch(/^\+OK/);
    expect(await c.command(`PASS ${app}`)).toMatch(/^\+OK/);
    expect(await c.command('STAT')).toMatch(/^\+OK \d+ \d+\r\n$/);
    expect(await c.quit()).toMatch(/^\+OK/);
    const session = String((await sessionClosed(gw, c.localPort)).session);
    const login = await dc.waitForLog((l) => l.includes('pop3-login: Info: Login:') && l.includes(`session=<${session}>`));
    expect(login).toContain(`user=<alice>, orig=<${dc.master.name}>, method=PLAIN`);
    expect(login).toContain(`lport=${dc.pop3sPort}, TLS,`);
  });

  it('verify = true refuses a certificate from a CA it does not trust, or for another name; verify = false accepts it', async () => {
    // Catches: rejectUnauthorized ignored (either way), or the name check dropped.
    const untrusted = await gateway(implicit({ ca: '' })); // the system store does not know the test CA
    const otherName = await gateway(implicit({ servername: 'mail.example.org' })); // certificate is for localhost/127.0.0.1
    const unverified = await gateway(implicit({ ca: '', verify: false }));

    for (const [{ gw, app }, why] of [
      [untrusted, /certificate/i],
      [otherName, /Hostname\/IP does not match|mail\.example\.org/i],
    ] as const) {
      const imap = await imapLogin(gw, app);
      const pop3 = await pop3Login(gw, app);
      expect(imap.answer).toBe(`u1 ${IMAP_UNAVAILABLE}`);
      expect(pop3.answer).toMatch(POP3_SYS_TEMP);
      await Promise.all([imap.close(), pop3.close()]);
      const failures = await waitUntil(() => {
        const lines = logLines(gw, 'upstream login failed');
        return lines.length >= 2 ? lines : null;
      }, 'both failures in the log');
      for (const line of failures) expect(line.reason).toMatch(why);
    }

    const imap = await imapLogin(unverified.gw, unverified.app);
    const pop3 = await pop3Login(unverified.gw, unverified.app);
    expect(imap.answer).toMatch(/^u1 OK \[CAPABILITY /);
    expect(pop3.answer).toMatch(/^\+OK/);
    await Promise.all([imap.close(), pop3.close()]);
  });
});

/** A minimal IMAP server: enough for mailgate's login dialogue, a NOOP and a LOGOUT. */
function fakeImap(greeting: () => string, capabilities: () => string) {
  return {
    onConnect(conn: FakeConnection) {
      conn.write(`${greeting()}\r\n`);
    },
    onLine(conn: FakeConnection, line: string) {
      const [tag, command = ''] = line.split(' ');
      switch (command.toUpperCase()) {
        case 'CAPABILITY':
          conn.write(`* CAPABILITY ${capabilities()}\r\n${tag} OK done\r\n`);
          return;
        case 'ID':
          conn.write(`* ID NIL\r\n${tag} OK done\r\n`);
          return;
        case 'AUTHENTICATE':
        case 'LOGIN':
          conn.write(`${tag} OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n`);
          return;
        case 'LOGOUT':
          conn.end(`* BYE\r\n${tag} OK done\r\n`);
          return;
        default:
          conn.write(`${tag} OK done\r\n`);
      }
    },
  };
}

describe('tls = "none" to an IMAP upstream that says LOGINDISABLED', () => {
  let fake: FakeUpstream;
  let loginDisabled = true;
  let inGreeting = true;
  const caps = () => `IMAP4rev1 SASL-IR ID AUTH=PLAIN${loginDisabled ? ' LOGINDISABLED' : ''}`;

  beforeAll(async () => {
    fake = await startFakeUpstream(
      fakeImap(
        () => (inGreeting ? `* OK [CAPABILITY ${caps()}] fake ready` : '* OK fake ready'),
        caps,
      ),
      dc.pki,
    );
  });

  afterAll(async () => {
    await fake?.close();
  });

  it.each([
    ['in the greeting', true],
    ['in the CAPABILITY answer', false],
  ])('LOGINDISABLED %s: no credential is sent, the client gets NO [UNAVAILABLE]', async (_where, greetingCaps) => {
    // Catches: a password sent in clear to a server that refuses clear-text logins.
    loginDisabled = true;
    inGreeting = greetingCaps;
    const { gw, app } = await gateway({ upstream: { imap: { port: fake.port, tls: 'none' } } });
    fake.clear();
    const master = await imapLogin(gw, app); // app password: master login (AUTHENTICATE PLAIN)
    const c = await imaps(gw, { timeoutMs: 10_000 });
    // bob has no 2FA: his own password is passed through (AUTHENTICATE PLAIN, or LOGIN)
    expect(await c.command('u2', 'LOGIN bob bob-upstream-pw')).toBe(`u2 ${IMAP_UNAVAILABLE}`);
    expect(master.answer).toBe(`u1 ${IMAP_UNAVAILABLE}`);
    await Promise.all([master.close(), c.end()]);

    const received = fake.receivedText();
    expect(fake.connections.length).toBe(2);
    expect(received).not.toMatch(CREDENTIAL_COMMANDS);
    for (const secret of [app, app.replace(/ /g, ''), 'bob-upstream-pw', dc.master.password, saslPlain('bob', 'bob-upstream-pw'), saslPlain(dc.master.name, dc.master.password, 'alice')]) {
      expect(received).not.toContain(secret);
    }
    const failures = logLines(gw, 'upstream login failed');
    expect(failures).toHaveLength(2);
    for (const line of failures) expect(line.reason).toMatch(/LOGINDISABLED/);
  });

  it('the same server without LOGINDISABLED does get the login (the test above is not vacuous)', async () => {
    loginDisabled = false;
    inGreeting = true;
    const { gw, app } = await gateway({ upstream: { imap: { port: fake.port, tls: 'none' } } });
    fake.clear();
    const master = await imapLogin(gw, app);
    expect(master.answer).toMatch(/^u1 OK \[CAPABILITY /);
    await master.close();
    expect(fake.receivedText()).toMatch(/^mg\d+ AUTHENTICATE PLAIN /m);
  });
});

describe('forward_client_ip', () => {
  let imapFake: FakeUpstream;
  let pop3Fake: FakeUpstream;

  beforeAll(async () => {
    imapFake = await startFakeUpstream(
      fakeImap(
        () => '* OK [CAPABILITY IMAP4rev1 SASL-IR ID AUTH=PLAIN] fake ready',
        () => 'IMAP4rev1 SASL-IR ID AUTH=PLAIN',
      ),
      dc.pki,
    );
    // Dovecot announces XCLIENT in its POP3 greeting; mailgate looks for it there.
    pop3Fake = await startFakeUpstream(
      {
        onConnect: (conn) => conn.write('+OK [XCLIENT] fake ready\r\n'),
        onLine(conn, line) {
          const command = line.split(' ')[0]!.toUpperCase();
          if (command === 'CAPA') conn.write('+OK\r\nUSER\r\nSASL PLAIN\r\nXCLIENT\r\n.\r\n');
          else if (command === 'AUTH' || command === 'PASS') conn.write('+OK Logged in.\r\n');
          else if (command === 'STAT') conn.write('+OK 0 0\r\n');
          else if (command === 'QUIT') conn.end('+OK Bye\r\n');
          else conn.write('+OK\r\n');
        },
      },
      dc.pki,
    );
  });

  afterAll(async () => {
    await Promise.all([imapFake?.close(), pop3Fake?.close()]);
  });

  async function loginBoth(forward: boolean): Promise<{ imap: string; pop3: string; imapPort: number; pop3Port: number }> {
    const { gw, app } = await gateway({
      upstream: {
        imap: { port: imapFake.port, tls: 'none', forward_client_ip: forward },
        pop3: { port: pop3Fake.port, tls: 'none', forward_client_ip: forward },
      },
    });
    imapFake.clear();
    pop3Fake.clear();
    const imap = await imapLogin(gw, app);
    const pop3 = await pop3Login(gw, app);
    expect(imap.answer).toMatch(/^u1 OK \[CAPABILITY /);
    expect(pop3.answer).toBe('+OK Logged in.\r\n');
    await Promise.all([imap.close(), pop3.close()]);
    // Both logins really happened upstream.
    expect(imapFake.receivedText()).toMatch(/^mg\d+ AUTHENTICATE PLAIN /m);
    expect(pop3Fake.receivedText()).toMatch(/^AUTH PLAIN /m);
    return { imap: imapFake.receivedText(), pop3: pop3Fake.receivedText(), imapPort: imap.port, pop3Port: pop3.port };
  }

  it('false: IMAP sends no ID and POP3 no XCLIENT', async () => {
    // Catches: the option ignored, so the upstream is told the address regardless.
    const sent = await loginBoth(false);
    expect(sent.imap).not.toMatch(/ ID \(/);
    expect(sent.imap).not.toContain('x-originating-ip');
    expect(sent.pop3).not.toMatch(/XCLIENT/);
  });

  it('true: IMAP sends ID with the client address and POP3 XCLIENT ADDR/PORT', async () => {
    const sent = await loginBoth(true);
    expect(sent.imap).toMatch(new RegExp(`^mg\\d+ ID \\("x-originating-ip" "127\\.0\\.0\\.1" "x-originating-port" "${sent.imapPort}" `, 'm'));
    expect(sent.pop3).toMatch(new RegExp(`^XCLIENT ADDR=127\\.0\\.0\\.1 PORT=${sent.pop3Port} `, 'm'));
  });
});

describe('upstream.login.master_password_file', () => {
  it('a file ending in a newline (LF or CRLF) logs in as master; the environment is not needed', async () => {
    // Catches: the newline an editor adds sent as part of the password.
    for (const [name, ending] of [['lf', '\n'], ['crlf', '\r\n']] as const) {
      const file = path.join(dir, `master-${name}`);
      await writeFile(file, `${dc.master.password}${ending}`, { mode: 0o600 });
      const { gw, app } = await gateway({ upstream: { login: { master_password_file: file } } }, { env: {} });
      const c = await imaps(gw, { timeoutMs: 10_000 });
      expect(taggedLine(await c.command('m1', `LOGIN alice ${imapQuote(app)}`), 'm1')).toMatch(/^m1 OK \[CAPABILITY /);
      expect(await c.command('m2', 'SELECT INBOX')).toMatch(/^m2 OK /m);
      await c.end();
      const p = await pop3Login(gw, app);
      expect(p.answer).toMatch(/^\+OK/);
      await p.close();
    }
  });

  it('the file takes precedence over MAILGATE_MASTER_PASSWORD', async () => {
    // Catches: the file ignored whenever the environment variable is set.
    const file = path.join(dir, 'master-wrong');
    await writeFile(file, 'not-the-master-password\n', { mode: 0o600 });
    const { gw, app } = await gateway({ upstream: { login: { master_password_file: file } } }, { env: { MAILGATE_MASTER_PASSWORD: dc.master.password } });
    const imap = await imapLogin(gw, app);
    expect(imap.answer).toBe(`u1 ${IMAP_UNAVAILABLE}`);
    await imap.close();
    const why = await waitUntil(() => logLines(gw, 'upstream login failed')[0], 'the failure in the log');
    expect(why.reason).toMatch(/^the upstream refused the master login: /);
    expect(gw.logText()).not.toContain('not-the-master-password');
  });

  it('a missing file stops the start with an error naming the file', async () => {
    const file = path.join(dir, 'no-such-master-password');
    const start = startGateway(dc, { config: { upstream: { login: { master_password_file: file } } }, env: {} });
    await expect(start).rejects.toThrow(file);
    // Said in the operator's terms: the key, and why (the CLI prints ConfigErrors as one line, exit 2).
    await expect(start).rejects.toThrow(/^upstream\.login\.master_password_file: cannot read .* ENOENT$/);
    await expect(start).rejects.toBeInstanceOf(ConfigError);
  });
});
