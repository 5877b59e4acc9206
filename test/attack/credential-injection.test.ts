/**
 * CRLF, quote, brace and NUL injection in usernames and passwords, through a
 * real mailgate to a real Dovecot. Each hostile credential must either be
 * refused by the gateway, or reach Dovecot as exactly one well-formed
 * authentication carrying exactly the client's bytes.
 *
 * Exactness is proven with a Dovecot user whose password is full of IMAP
 * metacharacters (quotes, a backslash, "{5}", spaces): every way of sending
 * it (quoted with escapes, literal, LITERAL+, POP3 PASS, SASL PLAIN) must log
 * in, and a near miss must not. One-command-ness is read from Dovecot's log:
 * "auth failed, 1 attempts" for the upstream connection, and no command ever
 * executed from inside a credential.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { logLines, startGateway, type GatewayHandle } from '../support/gateway.js';
import { imaps, imapQuote, taggedLine } from '../support/imap-client.js';
import { pop3s } from '../support/pop3-client.js';
import { saslPlain } from '../support/raw-client.js';
import { sleep, waitUntil } from '../support/timing.js';

/** Quotes, a backslash, a literal announcement, spaces: every IMAP metacharacter that can be in a passwd-file. */
const META_PASSWORD = `p"q\\r {5} x'y`;
const AUTH_FAILED = /^L\d? NO \[AUTHENTICATIONFAILED\]/;

let dc: DovecotHandle;
let gw: GatewayHandle;
let logMark = 0;

beforeAll(async () => {
  dc = await startDovecot({
    users: [
      { name: 'alice', password: 'alice-upstream-pw' },
      { name: 'quoter', password: META_PASSWORD },
    ],
  });
  // Neither is in mailgate's store: both log in upstream with their own password (passthrough),
  // so Dovecot judges the exact bytes the gateway forwards.
  gw = await startGateway(dc, { config: { policy: { unknown_users: 'passthrough' } } });
});

afterAll(async () => {
  await gw?.stop();
  await dc?.stop();
});

/** Dovecot log lines written since the last call. */
async function newDovecotLines(): Promise<string[]> {
  const text = await dc.logText();
  const fresh = text.slice(logMark);
  logMark = text.length;
  return fresh.split('\n').filter(Boolean);
}

/** Waits for Dovecot to log the end of one upstream login attempt, and returns the lines since the mark. */
async function dovecotVerdict(pattern: RegExp): Promise<string[]> {
  const lines: string[] = [];
  await waitUntil(async () => {
    lines.push(...(await newDovecotLines()));
    return lines.some((l) => pattern.test(l));
  }, `Dovecot to log ${pattern}`);
  return lines;
}

describe('metacharacters reach Dovecot byte for byte', () => {
  it('IMAP LOGIN, quoted with \\" and \\\\ escapes: logs in', async () => {
    // Catches: quoted-string unescaping that is wrong or missing (the upstream would get different bytes).
    const c = await imaps(gw);
    expect(taggedLine(await c.command('L', `LOGIN quoter ${imapQuote(META_PASSWORD)}`), 'L')).toMatch(/^L OK /);
    c.destroy();
  });

  it('IMAP LOGIN with the password as a synchronising literal, and as LITERAL+: logs in', async () => {
    // Catches: literal bytes altered on the way (CR/LF or braces re-interpreted, LITERAL+ mishandled).
    for (const plus of ['', '+']) {
      const c = await imaps(gw);
      c.send(`L LOGIN quoter {${Buffer.byteLength(META_PASSWORD)}${plus}}\r\n`);
      if (!plus) expect(await c.readLine()).toBe('+ Ready for literal data\r\n');
      c.send(`${META_PASSWORD}\r\n`);
      expect(taggedLine(await c.readUntil(/^L /), 'L')).toMatch(/^L OK /);
      c.destroy();
    }
  });

  it('POP3 USER/PASS, IMAP AUTHENTICATE PLAIN and POP3 AUTH PLAIN: log in', async () => {
    // Catches: a PASS argument trimmed or split at spaces, or SASL fields shifted.
    const p = await pop3s(gw);
    expect(await p.command('USER quoter')).toBe('+OK Send PASS\r\n');
    expect(await p.command(`PASS ${META_PASSWORD}`)).toMatch(/^\+OK/);
    p.destroy();
    const a = await pop3s(gw);
    expect(await a.command(`AUTH PLAIN ${saslPlain('quoter', META_PASSWORD)}`)).toMatch(/^\+OK/);
    a.destroy();
    const c = await imaps(gw);
    c.send('A AUTHENTICATE PLAIN\r\n');
    expect(await c.readLine()).toBe('+ \r\n');
    c.send(`${saslPlain('quoter', META_PASSWORD)}\r\n`);
    expect(taggedLine(await c.readUntil(/^A /), 'A')).toMatch(/^A OK /);
    c.destroy();
  });

  it('a near miss (the escaped form taken literally) does not log in', async () => {
    // Catches: a gateway that forwards the wire form instead of the parsed value (or vice versa).
    await newDovecotLines();
    const escaped = imapQuote(META_PASSWORD).slice(1, -1);
    const c = await imaps(gw);
    c.send(`L LOGIN quoter {${escaped.length}+}\r\n${escaped}\r\n`);
    expect(await c.readUntil(/^L /)).toMatch(/^\* NO \[ALERT\][^\r\n]*\r\nL NO \[AUTHENTICATIONFAILED\]/);
    c.destroy();
    await dovecotVerdict(/auth failed, 1 attempts.*user=<quoter>/);
  });
});

describe('CRLF in credentials never becomes a command', () => {
  it('IMAP LOGIN with a literal password containing "\\r\\nA LOGOUT\\r\\n": one failed attempt upstream, the session lives on', async () => {
    // Catches: a literal re-encoded as a quoted string (or sent raw) so that its CRLF splits
    // the upstream command, and a parser that takes the literal's content for commands.
    await newDovecotLines();
    const password = 'x\r\nA LOGOUT\r\n';
    const c = await imaps(gw);
    c.send(`L LOGIN alice {${password.length}}\r\n`);
    expect(await c.readLine()).toBe('+ Ready for literal data\r\n');
    c.send(`${password}\r\n`);
    expect(taggedLine(await c.readUntil(/^L /), 'L')).toMatch(AUTH_FAILED);
    expect(await c.command('n', 'NOOP')).toBe('n OK NOOP completed\r\n');
    expect(c.transcript()).not.toMatch(/BYE|^A /m);
    c.destroy();
    const lines = await dovecotVerdict(/auth failed, 1 attempts.*user=<alice>/);
    // Dovecot saw the CR/LF inside the one password it was given, and nothing else ran.
    expect(lines.join('\n')).toMatch(/password having illegal chars/);
    expect(lines.join('\n')).not.toMatch(/Login: user=<alice>/);
  });

  it('SASL PLAIN whose password contains CRLF: one failed attempt upstream, the session lives on', async () => {
    // Catches: a decoded SASL password re-sent upstream raw, where its CRLF would end the command.
    await newDovecotLines();
    const c = await imaps(gw);
    const answer = await c.command('A', `AUTHENTICATE PLAIN ${saslPlain('alice', 'alice-upstream-pw\r\nb LOGOUT\r\n')}`);
    expect(taggedLine(answer, 'A')).toMatch(/^A NO \[AUTHENTICATIONFAILED\]/);
    expect(await c.command('n', 'NOOP')).toBe('n OK NOOP completed\r\n');
    c.destroy();
    const lines = await dovecotVerdict(/auth failed, 1 attempts.*user=<alice>/);
    expect(lines.join('\n')).toMatch(/password having illegal chars/);
  });

  it('POP3 PASS with embedded control bytes (a bare CR, ESC, DEL, ^A): refused upstream as one attempt', async () => {
    // Catches: a bare CR taken as a line end (RETR 1 would run), or control bytes dropped before the upstream.
    await newDovecotLines();
    const p = await pop3s(gw);
    expect(await p.command('USER alice')).toBe('+OK Send PASS\r\n');
    expect(await p.command('PASS alice-upstream-pw\rRETR 1\x1b\x7f\x01')).toMatch(/^-ERR \[AUTH\]/);
    // Still in the authorization state: nothing after the CR was taken for a command.
    expect(await p.command('STAT')).toBe('-ERR Log in first.\r\n');
    p.destroy();
    const lines = await dovecotVerdict(/pop3-login.*auth failed, 1 attempts.*user=<alice>/);
    expect(lines.join('\n')).toMatch(/password having illegal chars/);
  });

  it('a username with CRLF in a literal is refused by the gateway itself, never sent upstream', async () => {
    // Catches: control characters in a username reaching the upstream or the store (log and protocol injection).
    await newDovecotLines();
    const user = 'alice\r\nA LOGOUT';
    const c = await imaps(gw);
    c.send(`L LOGIN {${user.length}+}\r\n${user} alice-upstream-pw\r\n`);
    expect(taggedLine(await c.readUntil(/^L /), 'L')).toMatch(AUTH_FAILED);
    c.destroy();
    await waitUntil(() => logLines(gw, 'login failed', { reason: 'invalid-username' })[0], 'the refusal in the log');
    await sleep(200);
    expect((await newDovecotLines()).filter((l) => /-login:/.test(l))).toEqual([]);
  });

  it('"{5}" after a password is a syntax error, not a literal: nothing is waited for or swallowed', async () => {
    // Catches: a parser that waits for (or swallows the next command as) a literal announced in the wrong place.
    const c = await imaps(gw);
    expect(taggedLine(await c.command('L', 'LOGIN alice pw{5}'), 'L')).toBe('L BAD Missing space between arguments');
    // With LITERAL+ the client sends the bytes anyway: they are skipped, never run as a command.
    c.send('M LOGIN alice pw{7+}\r\nX NOOP\r\n');
    expect(await c.readLine()).toBe('M BAD Missing space between arguments\r\n');
    expect(await c.command('n', 'NOOP')).toBe('n OK NOOP completed\r\n');
    expect(c.transcript()).not.toMatch(/^X /m);
    c.destroy();
  });
});

describe('NUL in credentials is refused before any upstream contact', () => {
  it('quoted, literal, POP3 PASS and SASL PLAIN with an extra NUL', async () => {
    // Catches: a NUL that truncates or splits a credential (C-string upstreams, SASL field confusion).
    await newDovecotLines();
    const c = await imaps(gw);
    expect(taggedLine(await c.command('a', 'LOGIN alice "alice\0upstream-pw"'), 'a')).toBe('a BAD NUL byte in quoted string');
    c.send('b LOGIN alice {9}\r\n');
    expect(await c.readLine()).toBe('+ Ready for literal data\r\n');
    c.send('alice\0pw\0\r\n');
    expect(await c.readLine()).toBe('b BAD NUL byte in literal\r\n');
    c.destroy();
    const s = await imaps(gw);
    expect(taggedLine(await s.command('A', `AUTHENTICATE PLAIN ${saslPlain('alice', 'alice-upstream-pw\0x')}`), 'A')).toBe('A BAD Malformed authentication data.');
    s.destroy();
    const p = await pop3s(gw);
    expect(await p.command('USER alice')).toBe('+OK Send PASS\r\n');
    expect(await p.command('PASS alice-upstream-pw\0')).toBe('-ERR NUL byte in command line\r\n');
    p.destroy();
    await sleep(300);
    expect((await newDovecotLines()).filter((l) => /-login:/.test(l))).toEqual([]);
  });
});

describe('the gateway log stays well-formed', () => {
  it('every log line is one JSON object, and no password used here is in it', () => {
    // Catches: client bytes reaching the log unescaped (forged log lines for fail2ban) or secrets in logs.
    const text = gw.logText();
    for (const line of text.split('\n').filter(Boolean)) expect(() => JSON.parse(line)).not.toThrow();
    for (const secret of [META_PASSWORD, 'alice-upstream-pw']) expect(text).not.toContain(secret);
  });
});
