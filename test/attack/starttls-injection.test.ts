/**
 * STARTTLS command injection (CVE-2011-0411 class), both ways:
 *  - a client pipelining commands in clear text behind its STARTTLS: they
 *    must be dropped, never run after the handshake (real Dovecot upstream);
 *  - an upstream (a scripted fake: a real Dovecot cannot be made to misbehave)
 *    that injects data with its STARTTLS OK, refuses STARTTLS, greets with
 *    PREAUTH or does not offer STARTTLS: the login must be aborted before any
 *    credential reaches it, and the client told it is temporarily unavailable.
 */
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { CREDENTIAL_COMMANDS, startFakeUpstream, type FakeConnection, type FakeUpstream } from '../support/fake-upstream.js';
import { logLines, sessionClosed, startGateway, type GatewayHandle } from '../support/gateway.js';
import { imapsLogin } from '../support/attack.js';
import { ImapClient, imaps, taggedLine } from '../support/imap-client.js';
import { Pop3Client, pop3s } from '../support/pop3-client.js';
import { saslPlain } from '../support/raw-client.js';
import { waitUntil } from '../support/timing.js';

let dc: DovecotHandle;
let gw: GatewayHandle;

beforeAll(async () => {
  dc = await startDovecot({
    users: [
      { name: 'alice', password: 'alice-upstream-pw' },
      { name: 'bob', password: 'bob-upstream-pw' },
      { name: 'erin', password: 'erin-upstream-pw' },
    ],
  });
  gw = await startGateway(dc, { config: { policy: { unknown_users: 'passthrough' } } });
});

afterAll(async () => {
  await gw?.stop();
  await dc?.stop();
});

async function plainImap(): Promise<ImapClient> {
  return (await ImapClient.open({ port: gw.ports.imap, ca: gw.caCert })).client;
}

describe('client STARTTLS injection', () => {
  it('IMAP "a STARTTLS\\r\\nb CAPABILITY\\r\\n" in one packet: b is never answered', async () => {
    // Catches: a session that keeps the parser's (or the socket's) buffered cleartext across the handshake.
    const c = await plainImap();
    const injected = 'b CAPABILITY\r\n';
    c.send(`a STARTTLS\r\n${injected}`);
    expect(await c.readLine()).toBe('a OK Begin TLS negotiation now\r\n');
    expect(await c.startTls()).toBe(0);
    await c.expectSilence(300);
    // The first answer after the handshake is to our own command.
    expect(await c.command('c', 'NOOP')).toBe('c OK NOOP completed\r\n');
    expect(c.transcript()).not.toMatch(/^b /m);
    await waitUntil(() => logLines(gw, 'dropped plaintext sent after STARTTLS', { bytes: injected.length })[0], 'the drop to be logged');
    c.destroy();
  });

  it('lowercase "a starttls\\r\\nb login alice <right password>\\r\\n": no login happens', async () => {
    // Catches: a case-sensitive STARTTLS path that skips the drop, letting injected credentials log in.
    const c = await plainImap();
    const injected = 'b login alice alice-upstream-pw\r\n';
    c.send(`a starttls\r\n${injected}`);
    expect(await c.readLine()).toBe('a OK Begin TLS negotiation now\r\n');
    await c.startTls();
    await c.expectSilence(300);
    // Still not logged in: a post-login command is refused, and no login was attempted at all.
    expect(taggedLine(await c.command('c', 'SELECT INBOX'), 'c')).toBe('c NO Log in first.');
    await waitUntil(() => logLines(gw, 'dropped plaintext sent after STARTTLS', { bytes: injected.length })[0], 'the drop to be logged');
    c.destroy();
    const closed = await sessionClosed(gw, c.localPort);
    expect(closed.outcome).toBe('closed-before-login');
    expect(closed.user).toBeUndefined();
    expect((await dc.logText())).not.toMatch(/Login: user=<alice>/);
  });

  it('STARTTLS + LOGIN + APPEND with a literal in one packet: nothing is appended', async () => {
    // Catches: injected commands (and a literal's payload) replayed after the handshake: a message planted in the mailbox.
    const c = await plainImap();
    const message = 'Subject: injected\r\n\r\nowned\r\n';
    const injected = `b LOGIN erin erin-upstream-pw\r\nc APPEND INBOX {${message.length}}\r\n${message}\r\n`;
    c.send(`a STARTTLS\r\n${injected}`);
    expect(await c.readLine()).toBe('a OK Begin TLS negotiation now\r\n');
    await c.startTls();
    await c.expectSilence(300);
    expect(await c.command('d', 'NOOP')).toBe('d OK NOOP completed\r\n');
    await waitUntil(() => logLines(gw, 'dropped plaintext sent after STARTTLS', { bytes: injected.length })[0], 'the drop to be logged');
    c.destroy();
    const maildir = dc.maildir('erin');
    expect([...readdirSync(path.join(maildir, 'new')), ...readdirSync(path.join(maildir, 'cur'))]).toEqual([]);
    expect(await dc.logText()).not.toMatch(/user=<erin>/);
  });

  it('POP3 "STLS\\r\\nUSER bob\\r\\nPASS <right password>\\r\\n": no login happens', async () => {
    // Catches: the same injection over POP3 STLS.
    const { client: c } = await Pop3Client.open({ port: gw.ports.pop3, ca: gw.caCert });
    const injected = 'USER bob\r\nPASS bob-upstream-pw\r\n';
    c.send(`STLS\r\n${injected}`);
    expect(await c.readLine()).toBe('+OK Begin TLS negotiation\r\n');
    await c.startTls();
    await c.expectSilence(300);
    // Not "+OK Send PASS" (USER ran) nor a login: the first answer is to our STAT, refused.
    expect(await c.command('STAT')).toBe('-ERR Log in first.\r\n');
    await waitUntil(() => logLines(gw, 'dropped plaintext sent after STARTTLS', { bytes: injected.length })[0], 'the drop to be logged');
    c.destroy();
    expect(await dc.logText()).not.toMatch(/pop3-login: Info: Login: user=<bob>/);
  });
});

// ---------------------------------------------------------------------------
// Malicious upstreams

type ImapMode = 'inject' | 'starttls-no' | 'preauth' | 'no-starttls';
type Pop3Mode = 'inject' | 'stls-err' | 'no-stls';

let imapMode: ImapMode = 'inject';
let pop3Mode: Pop3Mode = 'inject';
let fakeImap: FakeUpstream;
let fakePop3: FakeUpstream;
let fgw: GatewayHandle;
let appPassword: string;

/**
 * Each fake plays along as far as it can: after its STARTTLS answer (OK with
 * injected bytes, or even NO) it starts TLS with a certificate the gateway
 * trusts, and it accepts any login. So if the gateway ignored the warning sign,
 * it would go on and send the credentials, and the test would see them.
 */
function imapScript() {
  const upgrade = (conn: FakeConnection) => void conn.upgrade().catch(() => undefined);
  return {
    onConnect(conn: FakeConnection) {
      if (imapMode === 'preauth') conn.write('* PREAUTH [CAPABILITY IMAP4rev1 AUTH=PLAIN] welcome, no password needed\r\n');
      else conn.write(`* OK [CAPABILITY IMAP4rev1 ${imapMode === 'no-starttls' ? 'AUTH=PLAIN SASL-IR' : 'STARTTLS LOGINDISABLED'}] fake ready\r\n`);
    },
    onLine(conn: FakeConnection, line: string) {
      const [tag, command = ''] = line.split(' ');
      switch (command.toUpperCase()) {
        case 'CAPABILITY':
          conn.write(`* CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR ID${!conn.secure && imapMode !== 'no-starttls' ? ' STARTTLS' : ''}\r\n${tag} OK done\r\n`);
          return;
        case 'STARTTLS':
          if (imapMode === 'starttls-no') conn.write(`${tag} NO not today\r\n`);
          // The injection: the OK and a forged untagged line in one write.
          else conn.write(`${tag} OK Begin TLS\r\n* injected\r\n`);
          upgrade(conn);
          return;
        case 'LOGOUT':
          conn.end(`* BYE\r\n${tag} OK\r\n`);
          return;
        default:
          conn.write(`${tag} OK [CAPABILITY IMAP4rev1 IDLE] welcome\r\n`);
      }
    },
  };
}

function pop3Script() {
  return {
    onConnect(conn: FakeConnection) {
      conn.write('+OK fake ready\r\n');
    },
    onLine(conn: FakeConnection, line: string) {
      const command = line.split(' ')[0]!.toUpperCase();
      switch (command) {
        case 'CAPA':
          conn.write(`+OK\r\n${!conn.secure && pop3Mode !== 'no-stls' ? 'STLS\r\n' : ''}SASL PLAIN\r\nUSER\r\n.\r\n`);
          return;
        case 'STLS':
          conn.write(pop3Mode === 'stls-err' ? '-ERR not today\r\n' : '+OK Begin TLS\r\n+OK injected\r\n');
          void conn.upgrade().catch(() => undefined);
          return;
        case 'QUIT':
          conn.end('+OK bye\r\n');
          return;
        default:
          conn.write('+OK welcome\r\n');
      }
    },
  };
}

describe('malicious upstream', () => {
  beforeAll(async () => {
    fakeImap = await startFakeUpstream(imapScript(), dc.pki);
    fakePop3 = await startFakeUpstream(pop3Script(), dc.pki);
    fgw = await startGateway(dc, {
      upstreamImapPort: fakeImap.port,
      upstreamPop3Port: fakePop3.port,
      config: { policy: { unknown_users: 'passthrough' } },
    });
    fgw.store.accounts.add('alice');
    appPassword = (await fgw.store.appPasswords.create('alice', { name: 'fake upstream' })).password;
  });

  afterAll(async () => {
    await fgw?.stop();
    await fakeImap?.close();
    await fakePop3?.close();
  });

  beforeEach(() => {
    fakeImap.clear();
    fakePop3.clear();
  });

  /** Nothing that could carry a credential reached the fake upstream. */
  function assertNoCredentials(fake: FakeUpstream, secrets: string[]): void {
    const text = fake.receivedText();
    expect(text).not.toMatch(CREDENTIAL_COMMANDS);
    for (const secret of [...secrets, dc.master.password]) {
      expect(text).not.toContain(secret);
      expect(text).not.toContain(Buffer.from(secret).toString('base64').slice(0, 12));
    }
  }

  const imapCases: Array<[ImapMode, RegExp]> = [
    ['inject', /data after its STARTTLS OK/],
    ['starttls-no', /refused STARTTLS/],
    ['preauth', /PREAUTH/],
    ['no-starttls', /does not offer STARTTLS/],
  ];

  for (const [mode, reason] of imapCases) {
    it(`IMAP upstream "${mode}": NO [UNAVAILABLE], and no credentials ever reach it`, async () => {
      // Catches: proceeding after a STARTTLS answer with bytes behind it, a refused STARTTLS, a PREAUTH greeting or no STARTTLS at all; the fake then takes TLS and any login, so credentials would show up here.
      imapMode = mode;
      // An account's app password (the gateway would log in as master) and a passthrough user.
      for (const [user, password] of [['alice', appPassword], ['mallory', 'mallory-secret-pw']] as const) {
        const { c, answer } = await imapsLogin(fgw, user, password);
        expect(taggedLine(answer, 'L1')).toBe('L1 NO [UNAVAILABLE] The mail service is temporarily unavailable; try again in a few minutes.');
        c.destroy();
      }
      // Also AUTHENTICATE PLAIN with an initial response.
      const c = await imaps(fgw);
      const answer = await c.command('A1', `AUTHENTICATE PLAIN ${saslPlain('mallory', 'mallory-secret-pw')}`);
      expect(taggedLine(answer, 'A1')).toMatch(/^A1 NO \[UNAVAILABLE\]/);
      c.destroy();
      expect(fakeImap.connections.length).toBeGreaterThanOrEqual(3);
      assertNoCredentials(fakeImap, [appPassword, 'mallory-secret-pw']);
      expect(logLines(fgw, 'upstream login failed').some((l) => reason.test(String(l.reason)))).toBe(true);
    });
  }

  const pop3Cases: Array<[Pop3Mode, RegExp]> = [
    ['inject', /data after its STLS answer/],
    ['stls-err', /refused STLS/],
    ['no-stls', /does not offer STLS/],
  ];

  for (const [mode, reason] of pop3Cases) {
    it(`POP3 upstream "${mode}": -ERR [SYS/TEMP], and no credentials ever reach it`, async () => {
      // Catches: the same for POP3 STLS.
      pop3Mode = mode;
      for (const [user, password] of [['alice', appPassword], ['mallory', 'mallory-secret-pw']] as const) {
        const c = await pop3s(fgw);
        expect(await c.command(`USER ${user}`)).toBe('+OK Send PASS\r\n');
        expect(await c.command(`PASS ${password}`)).toBe('-ERR [SYS/TEMP] The mail service is temporarily unavailable; try again in a few minutes.\r\n');
        c.destroy();
      }
      const c = await pop3s(fgw);
      expect(await c.command(`AUTH PLAIN ${saslPlain('mallory', 'mallory-secret-pw')}`)).toMatch(/^-ERR \[SYS\/TEMP\]/);
      c.destroy();
      assertNoCredentials(fakePop3, [appPassword, 'mallory-secret-pw']);
      expect(logLines(fgw, 'upstream login failed').some((l) => reason.test(String(l.reason)))).toBe(true);
    });
  }
});
