/**
 * Hostile clients before login, against a real mailgate in front of a real
 * Dovecot: oversized literals and lines, deep nesting, stalled TLS, idle and
 * trickling connections, ALPN and HTTP cross-protocol attempts, invalid
 * commands, and a burst of garbage on every listener.
 */
import net from 'node:net';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { sessionClosed, startGateway, type GatewayHandle } from '../support/gateway.js';
import { assertNoInternalErrors, imapsLogin } from '../support/attack.js';
import { ImapClient, imaps, taggedLine } from '../support/imap-client.js';
import { pop3s } from '../support/pop3-client.js';
import { RawClient } from '../support/raw-client.js';
import { sleep, waitUntil } from '../support/timing.js';

let dc: DovecotHandle;
let gw: GatewayHandle;
let appPassword: string;

beforeAll(async () => {
  dc = await startDovecot();
  gw = await startGateway(dc, {
    config: { timeouts: { tls_handshake_seconds: 1, prelogin_idle_seconds: 2 } },
  });
  gw.store.accounts.add('alice');
  appPassword = (await gw.store.appPasswords.create('alice', { name: 'attack' })).password;
});

afterAll(async () => {
  await gw?.stop();
  await dc?.stop();
});

/** A TLS record header announcing a 512-byte handshake message, then only the first bytes of a ClientHello. */
const HALF_CLIENT_HELLO = Buffer.from('160301020001000200fc0303' + '00'.repeat(20), 'hex');

describe.concurrent('oversized and malformed input', () => {
  it('a 100 MiB synchronising literal is refused with BAD before any of it is sent, and the session goes on', async () => {
    // Catches: a parser that answers "+" to (or allocates for) an announced literal above imap_max_literal_bytes.
    const c = await imaps(gw);
    c.send('a LOGIN alice {104857600}\r\n');
    const line = await c.readLine(1_000);
    expect(line).toBe('a BAD Literal too large\r\n');
    expect(await c.command('b', 'NOOP')).toBe('b OK NOOP completed\r\n');
    c.destroy();
  });

  it('a 100 MiB non-synchronising literal closes the connection at once', async () => {
    // Catches: trying to read (and skip) a LITERAL+ the client will send regardless of our answer.
    const c = await imaps(gw);
    c.send('a LOGIN alice {104857600+}\r\n');
    const rest = await c.waitClosed(1_500);
    expect(rest).toMatch(/^a BAD Literal too large\r\n\* BYE /);
  });

  it('an endless IMAP line without CRLF is cut off at imap_max_line_bytes and the connection closed quickly', async () => {
    // Catches: buffering a line without bound while waiting for its end.
    const c = await imaps(gw);
    const started = Date.now();
    c.send(Buffer.alloc(gw.config.limits.imap_max_line_bytes + 10, 'a'));
    const rest = await c.waitClosed(2_000);
    expect(rest).toMatch(/\* BAD Line too long\r\n\* BYE /);
    expect(Date.now() - started).toBeLessThan(1_500);
  });

  it('an endless POP3 line without CRLF is cut off at pop3_max_line_bytes and the connection closed quickly', async () => {
    const c = await pop3s(gw);
    const started = Date.now();
    c.send(Buffer.alloc(gw.config.limits.pop3_max_line_bytes + 10, 'b'));
    expect(await c.waitClosed(2_000)).toBe('-ERR Line too long\r\n');
    expect(Date.now() - started).toBeLessThan(1_500);
  });

  it('deeply nested parentheses in ID get BAD', async () => {
    // Catches: unbounded recursion/nesting before login (imap_max_nesting).
    const c = await imaps(gw);
    const depth = gw.config.limits.imap_max_nesting + 5;
    const answer = await c.command('a', `ID ${'('.repeat(depth)}"name" "x"${')'.repeat(depth)}`);
    expect(taggedLine(answer, 'a')).toBe('a BAD Lists nested too deeply');
    expect(await c.command('b', 'NOOP')).toBe('b OK NOOP completed\r\n');
    c.destroy();
  });
});

describe.concurrent('slow and silent clients', () => {
  it('a TLS handshake that never starts is closed after timeouts.tls_handshake_seconds', async () => {
    // Catches: an implicit-TLS connection held open forever by a peer that sends nothing.
    const c = await RawClient.connect({ port: gw.ports.imaps, timeoutMs: 4_000 });
    const started = Date.now();
    await c.waitClosed(4_000);
    const took = Date.now() - started;
    expect(took).toBeGreaterThanOrEqual(800);
    expect(took).toBeLessThan(2_500);
    expect((await sessionClosed(gw, c.localPort)).outcome).toBe('tls-handshake-timeout');
  });

  it('half a ClientHello is closed after timeouts.tls_handshake_seconds, on IMAPS and POP3S', async () => {
    // Catches: a handshake deadline that a peer defeats by sending part of a record.
    const clients = await Promise.all([gw.ports.imaps, gw.ports.pop3s].map((port) => RawClient.connect({ port, timeoutMs: 4_000 })));
    const started = Date.now();
    for (const c of clients) c.send(HALF_CLIENT_HELLO);
    await Promise.all(clients.map((c) => c.waitClosed(4_000)));
    expect(Date.now() - started).toBeLessThan(2_500);
    for (const c of clients) expect((await sessionClosed(gw, c.localPort)).outcome).toBe('tls-handshake-timeout');
  });

  it('a stalled handshake after STARTTLS is closed after tls_handshake_seconds too', async () => {
    const c = await ImapClient.connect({ port: gw.ports.imap, timeoutMs: 4_000 });
    await c.readLine();
    expect(await c.command('a', 'STARTTLS')).toBe('a OK Begin TLS negotiation now\r\n');
    const started = Date.now();
    await c.waitClosed(4_000);
    expect(Date.now() - started).toBeLessThan(2_500);
  });

  it('an idle pre-login IMAP session is closed after timeouts.prelogin_idle_seconds', async () => {
    // Catches: pre-login connections that cost a slot forever.
    const c = await imaps(gw, { timeoutMs: 5_000 });
    const started = Date.now();
    expect(await c.waitClosed(5_000)).toBe('* BYE Disconnected for inactivity.\r\n');
    expect(Date.now() - started).toBeGreaterThanOrEqual(1_800);
    expect(Date.now() - started).toBeLessThan(3_500);
  });

  it('an idle pre-login POP3 session is closed after timeouts.prelogin_idle_seconds', async () => {
    const c = await pop3s(gw, { timeoutMs: 5_000 });
    expect(await c.waitClosed(5_000)).toBe('-ERR Disconnected for inactivity.\r\n');
  });

  it('trickling a line one byte at a time does not keep a session alive (slowloris)', async () => {
    // Catches: an idle timer that is reset by any byte instead of by complete commands.
    const c = await imaps(gw, { timeoutMs: 6_000 });
    const started = Date.now();
    const trickle = (async () => {
      for (const byte of 'a NOOP and some more') {
        if (c.isClosed) return;
        c.send(byte);
        await sleep(300);
      }
    })();
    expect(await c.waitClosed(6_000)).toBe('* BYE Disconnected for inactivity.\r\n');
    expect(Date.now() - started).toBeLessThan(3_500);
    await trickle;
  });
});

describe.concurrent('cross-protocol attempts (ALPACA)', () => {
  it('a TLS client offering only http/1.1 is refused during the handshake', async () => {
    // Catches: an ALPN callback that accepts any protocol (a browser's HTTPS request reaching IMAP).
    for (const port of [gw.ports.imaps, gw.ports.pop3s]) {
      await expect(RawClient.connect({ port, tls: true, ca: gw.caCert, alpn: ['http/1.1'] })).rejects.toThrow(/no.application.protocol|alert|socket|ECONNRESET/i);
    }
  });

  it('offering the listener\'s own protocol, or no ALPN at all, works; the other mail protocol is refused', async () => {
    // Catches: an ALPN check so strict it refuses real mail clients, or so loose it takes the other mail protocol.
    const withImap = await RawClient.connect({ port: gw.ports.imaps, tls: true, ca: gw.caCert, alpn: ['imap'] });
    expect((withImap.socket as import('node:tls').TLSSocket).alpnProtocol).toBe('imap');
    expect(await withImap.readLine()).toMatch(/^\* OK /);
    withImap.destroy();
    const withPop3 = await RawClient.connect({ port: gw.ports.pop3s, tls: true, ca: gw.caCert, alpn: ['pop3'] });
    expect(await withPop3.readLine()).toMatch(/^\+OK /);
    withPop3.destroy();
    const none = await RawClient.connect({ port: gw.ports.imaps, tls: true, ca: gw.caCert });
    expect(await none.readLine()).toMatch(/^\* OK /);
    none.destroy();
    await expect(RawClient.connect({ port: gw.ports.pop3s, tls: true, ca: gw.caCert, alpn: ['imap'] })).rejects.toThrow();
  });

  it('an HTTP request on the plain IMAP port is answered untagged, never echoed, and the connection closed', async () => {
    // Catches: echoing "GET" as a tag (an HTTP response smuggled through IMAP) or staying open for more.
    const c = await RawClient.connect({ port: gw.ports.imap });
    await c.readLine();
    c.send('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    const rest = await c.waitClosed(2_000);
    expect(rest).toMatch(/^\* BAD [^\r\n]*\r\n\* BYE /);
    expect(rest).not.toMatch(/GET/);
    expect(rest.split('\r\n').filter(Boolean)).toHaveLength(2);
  });

  it('an HTTP request on the plain POP3 port gets one -ERR and the connection closed', async () => {
    const c = await RawClient.connect({ port: gw.ports.pop3 });
    await c.readLine();
    c.send('POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc');
    const rest = await c.waitClosed(2_000);
    expect(rest).toBe('-ERR HTTP request on a POP3 port\r\n');
  });
});

describe.concurrent('invalid commands', () => {
  it(`IMAP: limits.max_bad_commands invalid commands close the session with * BYE`, async () => {
    // Catches: a scanner allowed to probe forever on one connection.
    const c = await imaps(gw);
    const max = gw.config.limits.max_bad_commands;
    for (let i = 1; i < max; i++) expect(await c.command(`t${i}`, `XYZZY${i}`)).toBe(`t${i} BAD Unknown command.\r\n`);
    c.send('last PLUGH\r\n');
    expect(await c.waitClosed(2_000)).toBe('last BAD Unknown command.\r\n* BYE Too many invalid commands.\r\n');
  });

  it('POP3: limits.max_bad_commands invalid commands close the session with -ERR', async () => {
    // Catches: the same unbounded probing over POP3.
    const c = await pop3s(gw);
    const max = gw.config.limits.max_bad_commands;
    for (let i = 1; i < max; i++) expect(await c.command(`XYZZY${i}`)).toBe('-ERR Unknown command.\r\n');
    c.send('PLUGH\r\n');
    expect(await c.waitClosed(2_000)).toBe('-ERR Unknown command.\r\n-ERR Too many invalid commands.\r\n');
  });
});

describe('garbage on every listener', () => {
  it('a bounded burst of random bytes, half handshakes, resets and HTTP leaves the gateway serving', async () => {
    // Catches: any input that throws out of a session (an uncaught exception would fail this
    // run), leaks sessions, or wedges a listener.
    const ports = [gw.ports.imaps, gw.ports.imap, gw.ports.pop3s, gw.ports.pop3];
    const payloads: Array<() => Buffer> = [
      () => randomBytes(1 + Math.floor(Math.random() * 3000)),
      () => HALF_CLIENT_HELLO,
      () => Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'),
      () => Buffer.from('a STARTTLS\r\n'),
      () => Buffer.concat([Buffer.from('a LOGIN {5}\r\n'), randomBytes(200)]),
      () => Buffer.from('\r\n\r\n\0\0\0\xff\xfe', 'latin1'),
      () => Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n'),
      () => Buffer.from('STLS\r\nAUTH PLAIN\r\n****\r\n'),
    ];
    const deadline = Date.now() + 2_500;
    let sent = 0;
    const worker = async (w: number) => {
      for (let i = 0; Date.now() < deadline && i < 25; i++) {
        const port = ports[(w + i) % ports.length]!;
        const payload = payloads[(w * 7 + i) % payloads.length]!();
        await new Promise<void>((resolve) => {
          const s = net.connect({ host: '127.0.0.1', port });
          s.on('error', () => resolve());
          s.on('close', () => resolve());
          s.on('data', () => undefined);
          s.on('connect', () => {
            s.write(payload);
            sent += 1;
            // Half the time a reset right away, otherwise a moment for the gateway to answer.
            if (i % 2 === 0) s.resetAndDestroy();
            else setTimeout(() => s.destroy(), 30);
          });
        });
      }
    };
    await Promise.all(Array.from({ length: 8 }, (_, w) => worker(w)));
    expect(sent).toBeGreaterThan(40);

    const { c, answer } = await imapsLogin(gw, 'alice', appPassword);
    expect(taggedLine(answer, 'L1')).toMatch(/^L1 OK /);
    c.destroy();
    // Every garbage session was cleaned up (sessions closing after a fatal error get 2 s to read their farewell).
    await waitUntil(() => gw.gateway.services.registry.size === 0, 'the registry to drain', 5_000);
    assertNoInternalErrors(gw);
  });
});
