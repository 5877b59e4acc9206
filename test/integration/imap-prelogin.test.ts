/**
 * IMAP before login, through a real mailgate in front of a real Dovecot:
 * the greeting and capabilities on both kinds of listener, the pre-login
 * commands, STARTTLS (and the plaintext-injection defence), and what
 * Thunderbird does on a connection, replayed byte for byte with a raw client.
 */
import { spawn } from 'node:child_process';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { logLines, sessionClosed, startGateway, type GatewayHandle } from '../support/gateway.js';
import { credentialFailure, ImapClient } from '../support/imap-client.js';
import { b64, saslPlain } from '../support/raw-client.js';
import { enableTotp } from '../support/store.js';
import { waitUntil } from '../support/timing.js';

/** Runs a program with `input` on stdin; kills it after 10 s. */
function run(cmd: string, args: string[], input: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], env: { PATH: process.env.PATH ?? '/usr/bin:/bin' } });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => err.push(d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    child.once('error', reject);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout: Buffer.concat(out).toString('latin1'), stderr: Buffer.concat(err).toString('latin1') });
    });
    child.stdin.end(input);
  });
}

const HELP_URL = 'https://mail.example.test/app-passwords';
const OWN = 'IMAP4rev1 SASL-IR LITERAL+ ID ENABLE';

let dc: DovecotHandle;
let gw: GatewayHandle;
let appPassword: string;

/** Dovecot's own pre-login capabilities, read straight from it (not through mailgate). */
let dovecotPrelogin: string[];

beforeAll(async () => {
  dc = await startDovecot();
  gw = await startGateway(dc);
  gw.store.accounts.add('alice');
  enableTotp(gw.store, 'alice');
  appPassword = (await gw.store.appPasswords.create('alice', { name: 'Thunderbird', scopes: ['imap'] })).password;
  const { client: direct, greeting } = await ImapClient.open({ port: dc.imapsPort, tls: true, ca: dc.caCert });
  dovecotPrelogin = /\[CAPABILITY ([^\]]*)\]/.exec(greeting)![1]!.split(' ');
  await direct.command('z', 'LOGOUT');
  await direct.end();
});

afterAll(async () => {
  await gw?.stop();
  await dc?.stop();
});

async function imaps(): Promise<{ c: ImapClient; greeting: string }> {
  const { client: c, greeting } = await ImapClient.open({ port: gw.ports.imaps, tls: true, ca: gw.caCert });
  return { c, greeting };
}

async function plain(): Promise<{ c: ImapClient; greeting: string }> {
  const { client: c, greeting } = await ImapClient.open({ port: gw.ports.imap, ca: gw.caCert });
  return { c, greeting };
}

function capsOf(line: string): string[] {
  const m = /^\* OK \[CAPABILITY ([^\]]*)\] /.exec(line) ?? /^\* CAPABILITY (.*)\r\n/.exec(line);
  if (!m) throw new Error(`no capability list in ${JSON.stringify(line)}`);
  return m[1]!.split(' ');
}

describe('greeting and capabilities', () => {
  it('implicit TLS: OK [CAPABILITY ...] with our own, the upstream mailbox ones (IDLE), AUTH=PLAIN AUTH=LOGIN, never STARTTLS', async () => {
    const { c, greeting } = await imaps();
    expect(dovecotPrelogin).toContain('IDLE');
    expect(greeting).toBe(`* OK [CAPABILITY ${OWN} IDLE AUTH=PLAIN AUTH=LOGIN] mailgate ready\r\n`);
    const caps = capsOf(greeting);
    expect(caps).not.toContain('STARTTLS');
    expect(caps).not.toContain('LOGINDISABLED');
    // The same list when asked again.
    expect(await c.command('a1', 'CAPABILITY')).toBe(`* CAPABILITY ${caps.join(' ')}\r\na1 OK CAPABILITY completed\r\n`);
    // STARTTLS is refused on the implicit-TLS port.
    expect(await c.command('a2', 'STARTTLS')).toBe('a2 BAD The connection is already encrypted.\r\n');
    await c.end();
  });

  it('STARTTLS listener before the handshake: STARTTLS and LOGINDISABLED, no AUTH=', async () => {
    const { c, greeting } = await plain();
    expect(greeting).toBe(`* OK [CAPABILITY ${OWN} IDLE STARTTLS LOGINDISABLED] mailgate ready\r\n`);
    expect(capsOf(greeting).filter((x) => x.startsWith('AUTH='))).toEqual([]);
    expect(await c.command('a1', 'CAPABILITY')).toBe(`* CAPABILITY ${OWN} IDLE STARTTLS LOGINDISABLED\r\na1 OK CAPABILITY completed\r\n`);
    await c.end();
  });

  it('LOGIN and AUTHENTICATE before STARTTLS get NO [PRIVACYREQUIRED], and nothing reaches the policy', async () => {
    const { c } = await plain();
    const privacy = (tag: string) =>
      `${tag} NO [PRIVACYREQUIRED] Use STARTTLS first: credentials are not accepted over an unencrypted connection.\r\n`;
    expect(await c.command('a1', `LOGIN alice "${appPassword}"`)).toBe(privacy('a1'));
    expect(await c.command('a2', `AUTHENTICATE PLAIN ${saslPlain('alice', appPassword)}`)).toBe(privacy('a2'));
    // Without an initial response: refused at once, no "+" invitation to send credentials in clear.
    expect(await c.command('a3', 'AUTHENTICATE PLAIN')).toBe(privacy('a3'));
    expect(await c.command('a4', 'authenticate login')).toBe(privacy('a4'));
    // A synchronising literal gets the refusal instead of the "+" that would invite the data in clear.
    expect(await c.command('a6', 'LOGIN {5}')).toBe(privacy('a6'));
    // None of these counted as a failed login or a bad command: the session still works.
    expect(await c.command('a5', 'NOOP')).toBe('a5 OK NOOP completed\r\n');
    const port = c.localPort;
    await c.end();
    await sessionClosed(gw, port);
    expect(logLines(gw, 'login failed', { clientPort: port })).toEqual([]);
  });

  it('STARTTLS: OK, handshake (certificate verified as localhost), then CAPABILITY afresh with AUTH= and without STARTTLS/LOGINDISABLED', async () => {
    const { c } = await plain();
    expect(await c.command('s1', 'STARTTLS')).toBe('s1 OK Begin TLS negotiation now\r\n');
    expect(await c.startTls()).toBe(0);
    expect(c.tlsVersion).toMatch(/^TLSv1\.[23]$/);
    const caps = await c.command('s2', 'CAPABILITY');
    expect(caps).toBe(`* CAPABILITY ${OWN} IDLE AUTH=PLAIN AUTH=LOGIN\r\ns2 OK CAPABILITY completed\r\n`);
    // A second STARTTLS is refused.
    expect(await c.command('s3', 'STARTTLS')).toBe('s3 BAD The connection is already encrypted.\r\n');
    // And now a login works.
    const ok = await c.command('s4', `LOGIN alice "${appPassword}"`);
    expect(ok).toMatch(/^s4 OK \[CAPABILITY IMAP4rev1 [^\]]*\] Logged in\r\n$/);
    expect(await c.command('s5', 'LOGOUT')).toMatch(/^\* BYE .*\r\ns5 OK /);
    await c.waitClosed();
  });

  it('STARTTLS injection: "a STARTTLS\\r\\nb CAPABILITY\\r\\n" in one packet never runs b', async () => {
    const { c } = await plain();
    c.send('a STARTTLS\r\nb CAPABILITY\r\n');
    expect(await c.readLine()).toBe('a OK Begin TLS negotiation now\r\n');
    // Nothing else came in clear text: b was not answered before the handshake...
    expect(await c.startTls()).toBe(0);
    // ...nor after it: the first response over TLS is for our next command.
    c.send('c NOOP\r\n');
    expect(await c.readLine()).toBe('c OK NOOP completed\r\n');
    expect(c.transcript()).not.toContain('b OK');
    const port = c.localPort;
    await c.end();
    const warn = await waitUntil(() => logLines(gw, 'dropped plaintext sent after STARTTLS').find((l) => l.bytes === 14), 'the injection warning');
    expect(warn.clientIp).toBe('127.0.0.1');
    await sessionClosed(gw, port);
  });

  it('openssl s_client -starttls imap verifies the certificate and gets AUTH= after the handshake', async () => {
    const { stdout, stderr, code } = await run(
      'openssl',
      ['s_client', '-connect', `127.0.0.1:${gw.ports.imap}`, '-starttls', 'imap', '-CAfile', gw.caCert, '-verify_hostname', 'localhost',
        '-verify_return_error', '-servername', 'localhost', '-ign_eof', '-crlf', '-quiet'],
      'x1 CAPABILITY\nx2 LOGOUT\n',
    );
    expect(code).toBe(0);
    expect(stderr).toMatch(/verify return:1/);
    expect(stdout).toContain(`* CAPABILITY ${OWN} IDLE AUTH=PLAIN AUTH=LOGIN\r\nx1 OK CAPABILITY completed\r\n`);
    expect(stdout).toContain('* BYE Logging out\r\nx2 OK LOGOUT completed\r\n');
  });
});

describe('pre-login commands', () => {
  it('NOOP, ID (list and NIL), CAPABILITY and LOGOUT, in upper and lower case, with the client tag', async () => {
    const { c } = await imaps();
    expect(await c.command('t1', 'NOOP')).toBe('t1 OK NOOP completed\r\n');
    expect(await c.command('t2', 'noop')).toBe('t2 OK NOOP completed\r\n');
    expect(await c.command('t3', 'id NIL')).toBe('* ID ("name" "mailgate")\r\nt3 OK ID completed\r\n');
    expect(await c.command('t4', 'ID ("name" "Thunderbird" "version" "153.0")')).toBe('* ID ("name" "mailgate")\r\nt4 OK ID completed\r\n');
    expect(await c.command('t5', 'capability')).toMatch(/^\* CAPABILITY IMAP4rev1 .*AUTH=PLAIN AUTH=LOGIN\r\nt5 OK CAPABILITY completed\r\n$/);
    const port = c.localPort;
    expect(await c.command('t6', 'logout')).toBe('* BYE Logging out\r\nt6 OK LOGOUT completed\r\n');
    expect(await c.waitClosed()).toBe('');
    const closed = await sessionClosed(gw, port);
    expect(closed).toMatchObject({ outcome: 'logout', client: 'Thunderbird', clientVersion: '153.0' });
  });

  it('unknown commands get BAD, mailbox commands get NO, with the client tag; the third one closes the session', async () => {
    const { c } = await imaps();
    expect(await c.command('u1', 'FROBNICATE')).toBe('u1 BAD Unknown command.\r\n');
    expect(await c.command('u2', 'select INBOX')).toBe('u2 NO Log in first.\r\n');
    c.send('u3 FETCH 1 BODY[]\r\n');
    expect(await c.readLine()).toBe('u3 NO Log in first.\r\n');
    expect(await c.readLine()).toBe('* BYE Too many invalid commands.\r\n');
    expect(await c.waitClosed()).toBe('');
  });

  it('after a pre-login BAD the session goes on; other after-login commands answer NO', async () => {
    const { c } = await imaps();
    for (const [tag, cmd] of [['v1', 'LIST "" "*"'], ['v2', 'IDLE']] as const) {
      expect(await c.command(tag, cmd)).toBe(`${tag} NO Log in first.\r\n`);
    }
    expect(await c.command('v3', 'NOOP')).toBe('v3 OK NOOP completed\r\n');
    await c.end();
  });
});

describe('Thunderbird, replayed with a raw client', () => {
  it('takes capabilities from the greeting, "authenticate PLAIN" waits for "+ ", and logs in with an app password', async () => {
    const { c, greeting } = await imaps();
    expect(capsOf(greeting)).toEqual(expect.arrayContaining(['AUTH=PLAIN', 'IDLE', 'SASL-IR', 'ID']));
    expect(await c.command('1', 'ID ("name" "Thunderbird" "version" "153.0")')).toBe('* ID ("name" "mailgate")\r\n1 OK ID completed\r\n');
    c.send('2 authenticate PLAIN\r\n');
    expect(await c.readLine()).toBe('+ \r\n');
    c.send(`${saslPlain('alice', appPassword)}\r\n`);
    const ok = await c.readUntilTagged('2');
    expect(ok).toMatch(/^2 OK \[CAPABILITY IMAP4rev1 [^\]]*IDLE[^\]]*\] Logged in\r\n$/);
    expect(await c.command('3', 'select "INBOX"')).toMatch(/\r\n3 OK \[READ-WRITE\] Select completed/);
    expect(await c.command('4', 'logout')).toMatch(/^\* BYE .*\r\n4 OK /);
    await c.waitClosed();
  });

  it('after a failed login retries with authenticate LOGIN, then login: each of the three failures gets ALERT + NO', async () => {
    const { c } = await imaps();
    const stale = 'alice-upstream-pw'; // her main password, saved before she turned on 2-step verification
    c.send('2 authenticate PLAIN\r\n');
    expect(await c.readLine()).toBe('+ \r\n');
    c.send(`${saslPlain('alice', stale)}\r\n`);
    expect(await c.readUntilTagged('2')).toBe(credentialFailure('2', HELP_URL));

    c.send('3 authenticate LOGIN\r\n');
    expect(await c.readLine()).toBe('+ VXNlcm5hbWU6\r\n');
    c.send(`${b64('alice')}\r\n`);
    expect(await c.readLine()).toBe('+ UGFzc3dvcmQ6\r\n');
    c.send(`${b64(stale)}\r\n`);
    expect(await c.readUntilTagged('3')).toBe(credentialFailure('3', HELP_URL));

    expect(await c.command('4', `login "alice" "${stale}"`)).toBe(credentialFailure('4', HELP_URL));
    // Three failures on one connection: the limit; the answer came first, then the goodbye.
    expect(await c.waitClosed()).toBe('* BYE Too many failed logins.\r\n');
    const port = c.localPort;
    const failures = logLines(gw, 'login failed', { clientPort: port });
    expect(failures.map((l) => [l.method, l.reason])).toEqual([
      ['authenticate-plain', 'two-factor-required'],
      ['authenticate-login', 'two-factor-required'],
      ['login', 'two-factor-required'],
    ]);
    expect((await sessionClosed(gw, port)).outcome).toBe('too-many-login-failures');
  });
});
