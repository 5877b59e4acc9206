/**
 * POP3 through mailgate, before and at login, byte for byte: a real Dovecot
 * behind a real in-process Gateway, driven by a raw TCP/TLS line client so
 * every response can be asserted exactly.
 *
 * Covers: the greeting (no APOP timestamp), CAPA on both listeners and after
 * STLS, the STLS-first refusals, STLS injection, USER/PASS (app password with
 * spaces), AUTH PLAIN (with and without initial response), AUTH LOGIN, `*`
 * (as a continuation line and as the initial response), invalid base64 and
 * unsupported mechanisms (each a bad command), bare AUTH, Thunderbird's order with fallbacks, QUIT and other commands
 * before login, pipelining after PASS, closing both sides together, and an
 * unreachable upstream.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { attemptsLogged, logLines, sessionClosed, startGateway, type GatewayHandle } from '../support/gateway.js';
import { multilineBody, Pop3Client } from '../support/pop3-client.js';
import { freePort } from '../support/ports.js';
import { b64, saslPlain } from '../support/raw-client.js';
import { enableTotp } from '../support/store.js';

const MSG1 = Buffer.from(
  ['From: Sender <sender@example.org>', 'To: alice@example.org', 'Subject: one', '', '.starts with a dot', 'body one', ''].join('\r\n'),
);
const MSG2 = Buffer.from(['From: other@example.org', 'To: alice@example.org', 'Subject: two', '', 'body two', ''].join('\r\n'));

const HELP_URL = 'https://mail.example.test/app-passwords';
const AUTH_FAILED = `-ERR [AUTH] Sign-in failed. If your account has 2-step verification, sign in with an app password, not your account password: ${HELP_URL}\r\n`;
const USE_STLS_FIRST = '-ERR Use STLS first: credentials are not accepted over an unencrypted connection.\r\n';
/** The service capabilities Dovecot offers and mailgate passes on, plus mailgate's own. */
const SERVICE_CAPS = ['TOP', 'UIDL', 'PIPELINING', 'RESP-CODES', 'AUTH-RESP-CODE'];
const LOGIN_CAPS = ['USER', 'SASL PLAIN LOGIN'];

function sorted(lines: string[]): string[] {
  return [...lines].sort();
}

describe('POP3 before login through mailgate (real Dovecot, raw client)', () => {
  let dc: DovecotHandle;
  let gw: GatewayHandle;
  /** alice: 2-step verification on, app password for POP3 only, shown with spaces. */
  let alicePw: string;
  const open: Pop3Client[] = [];

  async function connect(kind: 'implicit' | 'starttls'): Promise<{ client: Pop3Client; greeting: string }> {
    const res = await Pop3Client.open({ port: kind === 'implicit' ? gw.ports.pop3s : gw.ports.pop3, tls: kind === 'implicit', ca: gw.caCert });
    open.push(res.client);
    return res;
  }

  async function capa(client: Pop3Client): Promise<string[]> {
    const block = await (client.send('CAPA\r\n'), client.readMultiline());
    expect(block.startsWith('+OK')).toBe(true);
    return multilineBody(block);
  }

  beforeAll(async () => {
    dc = await startDovecot();
    gw = await startGateway(dc);
    await dc.seedMessage('alice', MSG1);
    await dc.seedMessage('alice', MSG2);
    gw.store.accounts.add('alice');
    enableTotp(gw.store, 'alice');
    alicePw = (await gw.store.appPasswords.create('alice', { name: 'pop3 client', scopes: ['pop3'] })).password;
    expect(alicePw).toMatch(/^[a-z]{4} [a-z]{4} [a-z]{4} [a-z]{4}$/);
  });

  afterAll(async () => {
    for (const c of open) c.destroy();
    await gw?.stop();
    await dc?.stop();
  });

  it('greets with +OK and no APOP timestamp, on the implicit-TLS and the STARTTLS listener', async () => {
    for (const kind of ['implicit', 'starttls'] as const) {
      const { client, greeting } = await connect(kind);
      expect(greeting).toMatch(/^\+OK [^\r\n]*\r\n$/);
      expect(greeting).not.toMatch(/<[^<>]*@[^<>]*>/);
      await client.expectSilence(100);
      expect(await client.quit()).toMatch(/^\+OK/);
    }
  });

  it('CAPA on the implicit-TLS port: Dovecot service caps, RESP-CODES, AUTH-RESP-CODE, USER, SASL PLAIN LOGIN; never STLS', async () => {
    const { client } = await connect('implicit');
    const caps = await capa(client);
    expect(sorted(caps)).toEqual(sorted([...SERVICE_CAPS, ...LOGIN_CAPS]));
    expect(caps).not.toContain('STLS');
    // Only what describes the mailbox service is taken from Dovecot's list.
    expect(caps.filter((c) => c === 'CAPA' || c.startsWith('IMPLEMENTATION'))).toEqual([]);
    await client.quit();
  });

  it('STARTTLS listener: CAPA offers STLS and no login; USER and PASS are refused until STLS, then CAPA answers afresh', async () => {
    const { client } = await connect('starttls');
    const before = await capa(client);
    expect(sorted(before)).toEqual(sorted([...SERVICE_CAPS, 'STLS']));
    expect(await client.command('USER alice')).toBe(USE_STLS_FIRST);
    expect(await client.command(`PASS ${alicePw}`)).toBe(USE_STLS_FIRST);
    expect(await client.command('STLS')).toBe('+OK Begin TLS negotiation\r\n');
    expect(await client.startTls()).toBe(0);
    const after = await capa(client);
    expect(sorted(after)).toEqual(sorted([...SERVICE_CAPS, ...LOGIN_CAPS]));
    expect(await client.command('USER alice')).toBe('+OK Send PASS\r\n');
    expect(await client.command(`PASS ${alicePw}`)).toBe('+OK Logged in.\r\n');
    expect(await client.quit()).toBe('+OK Logging out.\r\n');
  });

  it('STARTTLS listener: AUTH (with a mechanism, and bare) is refused before STLS; the session stays usable', async () => {
    const { client } = await connect('starttls');
    expect(await client.command(`AUTH PLAIN ${saslPlain('alice', alicePw)}`)).toBe(USE_STLS_FIRST);
    expect(await client.command('AUTH')).toBe(USE_STLS_FIRST);
    expect(sorted(await capa(client))).toEqual(sorted([...SERVICE_CAPS, 'STLS']));
    await client.quit();
  });

  it('STLS injection: "STLS\\r\\nUSER evil\\r\\n" in one packet; the USER is thrown away', async () => {
    const { client } = await connect('starttls');
    client.send('STLS\r\nUSER evil\r\n');
    expect(await client.readLine()).toBe('+OK Begin TLS negotiation\r\n');
    expect(await client.startTls()).toBe(0); // nothing else arrived in clear text
    // Had "USER evil" survived, PASS would now start a login; it must say USER comes first.
    expect(await client.command('PASS whatever')).toBe('-ERR Send USER first.\r\n');
    const caps = await capa(client);
    expect(sorted(caps)).toEqual(sorted([...SERVICE_CAPS, ...LOGIN_CAPS]));
    await client.quit();
    const dropped = logLines(gw, 'dropped plaintext sent after STARTTLS');
    expect(dropped.some((l) => l.bytes === 'USER evil\r\n'.length)).toBe(true);
  });

  it('STLS injection: "STLS\\r\\nCAPA\\r\\n" in one packet; nothing answers the injected CAPA after the handshake', async () => {
    const { client } = await connect('starttls');
    client.send('STLS\r\nCAPA\r\n');
    expect(await client.readLine()).toBe('+OK Begin TLS negotiation\r\n');
    expect(await client.startTls()).toBe(0);
    await client.expectSilence(300);
    // The first line read after the handshake answers our own command, and it is the fresh list.
    expect(await client.command('NOOP')).toBe('-ERR Log in first.\r\n');
    const caps = await capa(client);
    expect(caps).not.toContain('STLS');
    expect(caps).toEqual(expect.arrayContaining(LOGIN_CAPS));
    await client.quit();
  });

  it('STLS is refused on the implicit-TLS port and after a completed STLS', async () => {
    const implicit = await connect('implicit');
    // Implicit TLS is encrypted from the first byte: there is nothing to upgrade.
    expect(await implicit.client.command('STLS')).toBe('-ERR The connection is already encrypted.\r\n');
    expect(sorted(await capa(implicit.client))).not.toContain('STLS');
    await implicit.client.quit();
    const starttls = await connect('starttls');
    expect(await starttls.client.command('STLS')).toBe('+OK Begin TLS negotiation\r\n');
    expect(await starttls.client.startTls()).toBe(0);
    expect(await starttls.client.command('STLS')).toBe('-ERR The connection is already encrypted.\r\n');
    expect(await starttls.client.quit()).toMatch(/^\+OK/);
  });

  it('USER then PASS: PASS takes the rest of the line, so the app password works as shown (with spaces), compact or capitalised', async () => {
    for (const typed of [alicePw, alicePw.replace(/ /g, ''), alicePw.toUpperCase()]) {
      const { client } = await connect('implicit');
      expect(await client.command('USER alice')).toBe('+OK Send PASS\r\n');
      expect(await client.command(`PASS ${typed}`)).toBe('+OK Logged in.\r\n');
      expect(await client.command('STAT')).toBe(`+OK 2 ${MSG1.length + MSG2.length}\r\n`);
      expect(await client.quit()).toBe('+OK Logging out.\r\n');
    }
    // USER says the same for every name: it reveals nothing.
    const { client } = await connect('implicit');
    expect(await client.command('USER nobody-here')).toBe('+OK Send PASS\r\n');
    await client.quit();
  });

  it('AUTH PLAIN with an initial response, and without one ("+ " then one line)', async () => {
    const first = await connect('implicit');
    expect(await first.client.command(`AUTH PLAIN ${saslPlain('alice', alicePw)}`)).toBe('+OK Logged in.\r\n');
    expect(await first.client.command('STAT')).toMatch(/^\+OK 2 /);
    await first.client.quit();

    const second = await connect('implicit');
    expect(await second.client.command('AUTH PLAIN')).toBe('+ \r\n');
    expect(await second.client.command(saslPlain('alice', alicePw))).toBe('+OK Logged in.\r\n');
    expect(await second.client.command('STAT')).toMatch(/^\+OK 2 /);
    await second.client.quit();
  });

  it('AUTH LOGIN: Username: and Password: challenges, then the login', async () => {
    const { client } = await connect('implicit');
    expect(await client.command('AUTH LOGIN')).toBe('+ VXNlcm5hbWU6\r\n');
    expect(await client.command(b64('alice'))).toBe('+ UGFzc3dvcmQ6\r\n');
    expect(await client.command(b64(alicePw))).toBe('+OK Logged in.\r\n');
    expect(await client.command('STAT')).toMatch(/^\+OK 2 /);
    await client.quit();
  });

  it('"*" cancels an AUTH exchange at any step; the session goes on and can still log in', async () => {
    const { client } = await connect('implicit');
    expect(await client.command('AUTH PLAIN')).toBe('+ \r\n');
    expect(await client.command('*')).toBe('-ERR Authentication cancelled.\r\n');
    expect(await client.command('AUTH LOGIN')).toBe('+ VXNlcm5hbWU6\r\n');
    expect(await client.command('*')).toBe('-ERR Authentication cancelled.\r\n');
    expect(await client.command('AUTH LOGIN')).toBe('+ VXNlcm5hbWU6\r\n');
    expect(await client.command(b64('alice'))).toBe('+ UGFzc3dvcmQ6\r\n');
    expect(await client.command('*')).toBe('-ERR Authentication cancelled.\r\n');
    // Three cancels neither count as bad commands nor as failed logins.
    expect(await capa(client)).toEqual(expect.arrayContaining(LOGIN_CAPS));
    expect(await client.command(`AUTH PLAIN ${saslPlain('alice', alicePw)}`)).toBe('+OK Logged in.\r\n');
    await client.quit();
    expect(logLines(gw, 'login failed', { clientPort: client.localPort })).toEqual([]);
  });

  it('"*" as the initial response cancels like a "*" line (RFC 5034): -ERR, not counted as a bad command', async () => {
    const { client } = await connect('implicit');
    // Three of them: were they counted, max_bad_commands (3) would close the session.
    expect(await client.command('AUTH PLAIN *')).toBe('-ERR Authentication cancelled.\r\n');
    expect(await client.command('auth login *')).toBe('-ERR Authentication cancelled.\r\n');
    expect(await client.command('AUTH PLAIN *')).toBe('-ERR Authentication cancelled.\r\n');
    expect(await capa(client)).toEqual(expect.arrayContaining(LOGIN_CAPS));
    expect(await client.command(`AUTH PLAIN ${saslPlain('alice', alicePw)}`)).toBe('+OK Logged in.\r\n');
    await client.quit();
    expect(logLines(gw, 'login failed', { clientPort: client.localPort })).toEqual([]);
  });

  it('invalid base64 gets -ERR, in the initial response and in a continuation line, and counts as a bad command', async () => {
    const { client } = await connect('implicit');
    expect(await client.command('AUTH PLAIN QQ=')).toBe('-ERR Invalid base64 in the authentication data.\r\n');
    expect(await client.command('AUTH PLAIN')).toBe('+ \r\n');
    expect(await client.command('not base64!')).toBe('-ERR Invalid base64 in the authentication data.\r\n');
    expect(await client.command(`AUTH LOGIN ${b64('alice')}`)).toBe('+ UGFzc3dvcmQ6\r\n');
    // The right password, spoiled by a stray "=": judged as base64, never as a password.
    client.send(`${b64(alicePw)}=\r\n`);
    expect(await client.waitClosed()).toBe('-ERR Invalid base64 in the authentication data.\r\n-ERR Too many invalid commands.\r\n');
    expect(logLines(gw, 'login failed', { clientPort: client.localPort })).toEqual([]);
  });

  it('an unsupported mechanism gets -ERR and counts as a bad command', async () => {
    const { client } = await connect('implicit');
    expect(await client.command('AUTH CRAM-MD5')).toBe('-ERR Unsupported mechanism; use PLAIN or LOGIN.\r\n');
    expect(await client.command('AUTH XOAUTH2 dXNlcj1hbGljZQEB')).toBe('-ERR Unsupported mechanism; use PLAIN or LOGIN.\r\n');
    client.send('AUTH GSSAPI\r\n');
    expect(await client.waitClosed()).toBe('-ERR Unsupported mechanism; use PLAIN or LOGIN.\r\n-ERR Too many invalid commands.\r\n');
  });

  it('a bare AUTH lists the mechanisms: +OK, PLAIN, LOGIN, "."', async () => {
    const { client } = await connect('implicit');
    client.send('AUTH\r\n');
    const block = await client.readMultiline();
    expect(block).toMatch(/^\+OK[^\r\n]*\r\nPLAIN\r\nLOGIN\r\n\.\r\n$/);
    await client.quit();
  });

  it("Thunderbird's order, one command at a time: CAPA, STLS, CAPA, AUTH PLAIN, then AUTH LOGIN, then USER/PASS", async () => {
    const { client } = await connect('starttls');
    expect(await capa(client)).toContain('STLS');
    expect(await client.command('STLS')).toBe('+OK Begin TLS negotiation\r\n');
    expect(await client.startTls()).toBe(0);
    const caps = await capa(client);
    expect(caps).toContain('SASL PLAIN LOGIN');
    expect(caps).not.toContain('STLS');
    // A mistyped password: Thunderbird tries each method in turn, and each gets its answer.
    expect(await client.command('AUTH PLAIN')).toBe('+ \r\n');
    expect(await client.command(saslPlain('alice', 'not the password'))).toBe(AUTH_FAILED);
    expect(await client.command('AUTH LOGIN')).toBe('+ VXNlcm5hbWU6\r\n');
    expect(await client.command(b64('alice'))).toBe('+ UGFzc3dvcmQ6\r\n');
    expect(await client.command(b64('still not it'))).toBe(AUTH_FAILED);
    // The user then types the app password; USER/PASS on the same connection works.
    expect(await client.command('USER alice')).toBe('+OK Send PASS\r\n');
    expect(await client.command(`PASS ${alicePw}`)).toBe('+OK Logged in.\r\n');
    client.send('UIDL\r\n');
    expect(multilineBody(await client.readMultiline())).toHaveLength(2);
    expect(await client.quit()).toBe('+OK Logging out.\r\n');
  });

  it('QUIT before login says +OK and closes', async () => {
    const { client } = await connect('implicit');
    expect(await client.command('QUIT')).toMatch(/^\+OK[^\r\n]*\r\n$/);
    expect(await client.waitClosed()).toBe('');
    expect(await sessionClosed(gw, client.localPort)).toMatchObject({ outcome: 'quit' });
  });

  it('any other command before login gets -ERR; too many of them close the session', async () => {
    const { client } = await connect('implicit');
    expect(await client.command('STAT')).toBe('-ERR Log in first.\r\n');
    expect(await client.command('XYZZY')).toBe('-ERR Unknown command.\r\n');
    expect(await client.quit()).toMatch(/^\+OK/);

    const other = await connect('implicit');
    expect(await other.client.command('APOP alice c4c9334bac560ecc979e58001b3e22fb')).toBe('-ERR APOP is not supported; use USER/PASS or AUTH.\r\n');
    expect(await other.client.command('RETR 1')).toBe('-ERR Log in first.\r\n');
    other.client.send('LIST\r\n');
    expect(await other.client.waitClosed()).toBe('-ERR Log in first.\r\n-ERR Too many invalid commands.\r\n');
  });

  it('bytes pipelined after PASS reach Dovecot in order; Dovecot closing after QUIT closes the client too', async () => {
    const { client } = await connect('implicit');
    client.send(`USER alice\r\nPASS ${alicePw}\r\nSTAT\r\nUIDL\r\nRETR 1\r\nQUIT\r\n`);
    expect(await client.readLine()).toBe('+OK Send PASS\r\n');
    expect(await client.readLine()).toBe('+OK Logged in.\r\n');
    expect(await client.readLine()).toBe(`+OK 2 ${MSG1.length + MSG2.length}\r\n`);
    const uidl = multilineBody(await client.readMultiline());
    expect(uidl).toEqual([expect.stringMatching(/^1 \S+$/), expect.stringMatching(/^2 \S+$/)]);
    expect(await client.readLine()).toBe(`+OK ${MSG1.length} octets\r\n`);
    // Dovecot dot-stuffs; the relay passes its bytes through untouched.
    const stuffed = MSG1.toString('latin1').replace(/^\./gm, '..');
    expect((await client.readBytes(stuffed.length + 3)).toString('latin1')).toBe(`${stuffed}.\r\n`);
    expect(await client.readLine()).toBe('+OK Logging out.\r\n');
    expect(await client.waitClosed()).toBe('');
    const closed = await sessionClosed(gw, client.localPort);
    expect(closed).toMatchObject({ outcome: 'upstream-closed', user: 'alice', mode: 'app-password', method: 'user-pass', protocol: 'pop3' });
  });

  it('a client hanging up after login closes the Dovecot side too', async () => {
    const { client } = await connect('implicit');
    expect(await client.command(`AUTH PLAIN ${saslPlain('alice', alicePw)}`)).toBe('+OK Logged in.\r\n');
    expect(await client.command('NOOP')).toBe('+OK\r\n');
    client.destroy();
    const closed = await sessionClosed(gw, client.localPort);
    expect(closed).toMatchObject({ outcome: 'client-closed', user: 'alice' });
    // mailgate forwards its session id with XCLIENT, so Dovecot's own log names the same session.
    const id = String(closed.session);
    const line = await dc.waitForLog((l) => l.includes(`pop3(alice)`) && l.includes(`<${id}>`) && l.includes('Disconnected'));
    expect(line).toMatch(/Disconnected: (Connection closed|Disconnected)/);
  });

  it('an upstream that cannot be reached: -ERR [SYS/TEMP], not counted as a failed login; the gateway keeps serving', async () => {
    const dead = await freePort();
    const down = await startGateway(dc, { upstreamPop3Port: dead });
    try {
      down.store.accounts.add('bob'); // no 2-step verification: the upstream password is passed through
      const { client, greeting } = await Pop3Client.open({ port: down.ports.pop3s, tls: true, ca: down.caCert });
      open.push(client);
      expect(greeting).toMatch(/^\+OK /);
      const answers: string[] = [];
      for (let i = 0; i < 4; i++) {
        expect(await client.command('USER bob')).toBe('+OK Send PASS\r\n');
        answers.push(await client.command('PASS bob-upstream-pw'));
      }
      for (const a of answers) expect(a).toMatch(/^-ERR \[SYS\/TEMP\] [^\r\n]+\r\n$/);
      expect(new Set(answers).size).toBe(1);
      // Four temporary failures and the connection is still served (three refusals would close it).
      expect(await capa(client)).toEqual(expect.arrayContaining(LOGIN_CAPS));
      await client.quit();
      const again = await Pop3Client.open({ port: down.ports.pop3s, tls: true, ca: down.caCert });
      open.push(again.client);
      expect(again.greeting).toMatch(/^\+OK /);
      expect(await again.client.command(`AUTH PLAIN ${saslPlain('bob', 'bob-upstream-pw')}`)).toBe(answers[0]);
      await again.client.quit();
      // Five attempts from one address: the first few logged one by one, the rest in a summary line.
      expect(attemptsLogged(down, 'login temporarily failed', { reason: 'upstream-unavailable', protocol: 'pop3', user: 'bob' })).toBe(5);
      expect(logLines(down, 'login temporarily failed').length).toBeLessThan(5);
      expect(logLines(down, 'login failed')).toEqual([]);
    } finally {
      await down.stop();
    }
    // And the main gateway is unaffected.
    const { client } = await connect('implicit');
    expect(await client.command(`AUTH PLAIN ${saslPlain('alice', alicePw)}`)).toBe('+OK Logged in.\r\n');
    await client.quit();
  });

  it('the log names no password or AUTH payload used here, and records no internal error', () => {
    const text = gw.logText();
    const secrets = [alicePw, alicePw.replace(/ /g, ''), alicePw.replace(/ /g, '').toUpperCase(), alicePw.toUpperCase(), saslPlain('alice', alicePw), b64(alicePw)];
    expect(secrets.filter((s) => text.includes(s))).toEqual([]);
    expect(logLines(gw, 'internal error in session')).toEqual([]);
  });
});
