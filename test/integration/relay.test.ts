/**
 * The relay after login, through a real mailgate in front of a real Dovecot:
 *
 * - backpressure both ways: a client that stops reading in the middle of a
 *   48 MiB FETCH stops mailgate from reading the upstream (so mailgate does
 *   not buffer the message), an upstream that stops reading stops mailgate
 *   from reading the client's APPEND, and once the stalled side reads again
 *   every byte arrives intact;
 * - `timeouts.session_idle_seconds`: a logged-in IMAP or POP3 session with
 *   no traffic either way is closed after it, and the log says why; traffic
 *   keeps it open.
 *
 * A counting proxy (test/support/fault-proxy.ts) between mailgate and
 * Dovecot tells how many bytes mailgate has read from the server.
 */
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { startFaultProxy, type FaultProxy, type ProxyConnection } from '../support/fault-proxy.js';
import { sessionClosed, startGateway, type GatewayHandle } from '../support/gateway.js';
import { imaps, taggedLine, type ImapClient } from '../support/imap-client.js';
import { pop3s } from '../support/pop3-client.js';
import { sleep, waitUntil } from '../support/timing.js';

const MiB = 1024 * 1024;
/** Several times what loopback socket buffers can hold, so buffering in mailgate cannot hide. */
const SIZE = 48 * MiB;

let dc: DovecotHandle;
let proxy: FaultProxy;
let gw: GatewayHandle;

/** A message of exactly `size` bytes: CRLF lines of a position-dependent pattern, so a lost or reordered chunk shows. */
function patternedMessage(size: number, subject: string): Buffer {
  const header = Buffer.from(`From: big@example.org\r\nTo: bob@example.org\r\nSubject: ${subject}\r\n\r\n`);
  const out = Buffer.alloc(size);
  header.copy(out);
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
  for (let pos = header.length, line = 0; pos < size; line++) {
    const text = `${String(line).padStart(8, '0')} ${alphabet.slice(line % 31)}${alphabet.slice(0, line % 31)}`.padEnd(78, '.');
    const n = Math.min(size - pos, 80);
    out.write(`${text}\r\n`.slice(0, n), pos, 'latin1');
    pos += n;
  }
  // End on CRLF whatever the size.
  out[size - 2] = 0x0d;
  out[size - 1] = 0x0a;
  return out;
}

/** The value once it has not changed for `quietMs` (or at `timeoutMs`, whatever it is then). */
async function settled(read: () => number, quietMs = 700, timeoutMs = 8_000): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  let last = read();
  let since = Date.now();
  while (Date.now() - since < quietMs && Date.now() < deadline) {
    await sleep(50);
    const now = read();
    if (now !== last) {
      last = now;
      since = Date.now();
    }
  }
  return last;
}

async function maildirFile(user: string, subject: string): Promise<Buffer> {
  for (const sub of ['cur', 'new']) {
    const dir = path.join(dc.maildir(user), sub);
    for (const name of await readdir(dir)) {
      const data = await readFile(path.join(dir, name));
      if (data.subarray(0, 200).toString('latin1').includes(`Subject: ${subject}\r\n`)) return data;
    }
  }
  throw new Error(`no message "${subject}" for ${user}`);
}

/** Logs bob in (passthrough) and returns the client with the proxy connection its login opened. */
async function loginThroughProxy(): Promise<{ c: ImapClient; upstream: ProxyConnection }> {
  const before = proxy.connections.length;
  const c = await imaps(gw, { timeoutMs: 30_000 });
  expect(taggedLine(await c.command('a1', 'LOGIN bob bob-upstream-pw'), 'a1')).toMatch(/^a1 OK /);
  expect(proxy.connections).toHaveLength(before + 1);
  return { c, upstream: proxy.connections[before]! };
}

beforeAll(async () => {
  dc = await startDovecot();
  proxy = await startFaultProxy({ port: dc.imapPort });
  gw = await startGateway(dc, { upstreamImapPort: proxy.port });
  gw.store.accounts.add('bob');
  await dc.seedMessage('bob', patternedMessage(SIZE, 'download')); // UID 1
});

afterAll(async () => {
  await gw?.stop();
  await proxy?.close();
  await dc?.stop();
});

describe('relay backpressure', () => {
  it('a client that stops reading mid-FETCH stops mailgate reading the upstream; resumed, the message arrives byte-identical', async () => {
    // Catches: a relay that forwards with on('data', write) instead of pipe():
    // it would read the whole message from Dovecot into its own memory.
    const file = await maildirFile('bob', 'download');
    expect(file.length).toBe(SIZE);
    const { c, upstream } = await loginThroughProxy();
    expect(taggedLine(await c.command('a2', 'EXAMINE INBOX'), 'a2')).toMatch(/^a2 OK /);
    c.pause();
    const fetched = c.fetchLiteral('a3 UID FETCH 1 BODY.PEEK[]', 30_000);
    const pulled = await settled(() => upstream.fromServer);
    // The transfer started, and stopped at what socket buffers hold, far short of the message.
    expect(pulled).toBeGreaterThan(256 * 1024);
    expect(pulled).toBeLessThan(SIZE / 2);
    c.resume();
    const literal = await fetched;
    expect(literal.length).toBe(SIZE);
    expect(literal.equals(file)).toBe(true);
    expect(upstream.fromServer).toBeGreaterThan(SIZE);
    expect(taggedLine(await c.command('a4', 'LOGOUT'), 'a4')).toMatch(/^a4 OK/);
    await c.waitClosed();
  });

  it('an upstream that stops reading stops mailgate reading the client\'s APPEND; released, the message is stored intact', async () => {
    // Catches: the same on('data', write) shortcut in the client-to-upstream direction.
    const { c, upstream } = await loginThroughProxy();
    upstream.holdGatewayBytes();
    const msg = patternedMessage(SIZE, 'upload');
    c.send(`b1 APPEND INBOX {${SIZE}+}\r\n`);
    for (let offset = 0; offset < SIZE; offset += 64 * 1024) c.send(msg.subarray(offset, offset + 64 * 1024));
    c.send('\r\n');
    // mailgate stops reading the client, so most of the message is still queued in the client.
    const queued = await settled(() => c.socket.writableLength);
    expect(queued).toBeGreaterThan(SIZE / 2);
    upstream.releaseGatewayBytes();
    const appended = await c.readUntilTagged('b1', 30_000);
    const uid = /^b1 OK \[APPENDUID \d+ (\d+)\]/m.exec(appended)?.[1];
    expect(uid, appended).toBeDefined();
    expect(taggedLine(await c.command('b2', 'EXAMINE INBOX'), 'b2')).toMatch(/^b2 OK /);
    const stored = await c.fetchLiteral(`b3 UID FETCH ${uid} BODY.PEEK[]`, 30_000);
    expect(stored.equals(msg)).toBe(true);
    expect(taggedLine(await c.command('b4', 'LOGOUT'), 'b4')).toMatch(/^b4 OK/);
    await c.waitClosed();
  });
});

describe('timeouts.session_idle_seconds', () => {
  let idle: GatewayHandle;

  beforeAll(async () => {
    idle = await startGateway(dc, { config: { timeouts: { session_idle_seconds: 1 } } });
    idle.store.accounts.add('bob');
  });

  afterAll(async () => {
    await idle?.stop();
  });

  it('an idle IMAP session and an idle POP3 session are closed after it; the log says idle-timeout', async () => {
    // Catches: no idle timer on relayed sessions (a dead phone would hold two sockets forever).
    const imap = await imaps(idle);
    expect(taggedLine(await imap.command('i1', 'LOGIN bob bob-upstream-pw'), 'i1')).toMatch(/^i1 OK /);
    expect(taggedLine(await imap.command('i2', 'SELECT INBOX'), 'i2')).toMatch(/^i2 OK /);
    const pop = await pop3s(idle);
    expect(await pop.command('USER bob')).toMatch(/^\+OK/);
    expect(await pop.command('PASS bob-upstream-pw')).toMatch(/^\+OK/);
    expect(await pop.command('STAT')).toMatch(/^\+OK \d+ \d+\r\n$/);
    const quietSince = Date.now();
    await Promise.all([imap.waitClosed(4_000), pop.waitClosed(4_000)]);
    const ms = Date.now() - quietSince;
    expect(ms).toBeGreaterThanOrEqual(900);
    expect(ms).toBeLessThan(3_000);
    for (const [client, protocol] of [[imap, 'imap'], [pop, 'pop3']] as const) {
      expect(await sessionClosed(idle, client.localPort)).toMatchObject({ protocol, user: 'bob', mode: 'upstream-password', outcome: 'idle-timeout' });
    }
    await waitUntil(() => idle.gateway.services.registry.size === 0, 'the registry to empty');
  });

  it('traffic keeps a session open well past the idle timeout', async () => {
    // Catches: a timer that counts from the login instead of from the last traffic.
    const imap = await imaps(idle);
    expect(taggedLine(await imap.command('k1', 'LOGIN bob bob-upstream-pw'), 'k1')).toMatch(/^k1 OK /);
    const pop = await pop3s(idle);
    expect(await pop.command('USER bob')).toMatch(/^\+OK/);
    expect(await pop.command('PASS bob-upstream-pw')).toMatch(/^\+OK/);
    for (let i = 0; i < 6; i++) {
      await sleep(400);
      expect(taggedLine(await imap.command(`n${i}`, 'NOOP'), `n${i}`)).toMatch(/ OK /);
      expect(await pop.command('NOOP')).toMatch(/^\+OK/);
    }
    expect(imap.isClosed || pop.isClosed).toBe(false);
    expect(taggedLine(await imap.command('k2', 'LOGOUT'), 'k2')).toMatch(/^k2 OK/);
    expect(await pop.quit()).toMatch(/^\+OK/);
    await imap.waitClosed();
  });
});
