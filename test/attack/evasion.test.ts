/**
 * Attempts to get around the limits rather than through them:
 *  - guessing through passwords the upstream checks (passthrough), in
 *    parallel, or hanging up right after sending them;
 *  - connection floods that never finish their TLS handshake;
 *  - a blocked client hammering one connection;
 *  - a client that keeps itself busy before login instead of logging in;
 *  - an upstream whose own temporary failure would be taken for a wrong
 *    password and counted against the user.
 *
 * The upstream here is a scripted fake (the behaviours under test are the
 * upstream's timing and answers, which a real Dovecot does not offer on cue).
 */
import net from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { PENALTIES_ON } from '../support/attack.js';
import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { startFakeUpstream, type FakeConnection, type FakeUpstream } from '../support/fake-upstream.js';
import { startGateway, type GatewayHandle } from '../support/gateway.js';
import { imaps, taggedLine } from '../support/imap-client.js';
import { pop3s } from '../support/pop3-client.js';
import { sleep, waitUntil } from '../support/timing.js';

let dc: DovecotHandle;
let fake: FakeUpstream;
const gateways: GatewayHandle[] = [];

/** How the fake IMAP upstream answers LOGIN / AUTHENTICATE, and after how long. */
let loginAnswer = { delayMs: 400, line: 'NO [AUTHENTICATIONFAILED] Authentication failed.' };
/** LOGINs received and not yet answered or abandoned, and the most seen at once. */
let inFlight = 0;
let maxInFlight = 0;

function imapScript() {
  return {
    onConnect(conn: FakeConnection) {
      conn.write('* OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID AUTH=PLAIN] fake ready\r\n');
    },
    onLine(conn: FakeConnection, line: string) {
      const [tag, command] = line.split(' ');
      if (!tag || !command) return;
      const name = command.toUpperCase();
      if (name === 'ID') return conn.write(`* ID NIL\r\n${tag} OK ID done\r\n`);
      if (name === 'LOGIN' || name === 'AUTHENTICATE') {
        inFlight += 1;
        maxInFlight = Math.max(maxInFlight, inFlight);
        let done = false;
        const finish = () => {
          if (done) return;
          done = true;
          inFlight -= 1;
        };
        setTimeout(() => {
          finish();
          conn.write(`${tag} ${loginAnswer.line}\r\n`);
        }, loginAnswer.delayMs);
        // The gateway abandoning the dialogue (its client left) ends it too.
        conn.onClose(finish);
        return;
      }
      conn.write(`${tag} BAD unexpected\r\n`);
    },
  };
}

beforeAll(async () => {
  dc = await startDovecot();
  fake = await startFakeUpstream(imapScript(), dc.pki);
});

afterEach(async () => {
  for (const gw of gateways.splice(0)) await gw.stop();
  inFlight = 0;
  maxInFlight = 0;
  loginAnswer = { delayMs: 400, line: 'NO [AUTHENTICATIONFAILED] Authentication failed.' };
});

afterAll(async () => {
  await fake?.close();
  await dc?.stop();
});

async function gatewayOnFake(limits: Record<string, unknown> = {}, timeouts: Record<string, unknown> = {}): Promise<GatewayHandle> {
  const gw = await startGateway(dc, {
    config: {
      upstream: { imap: { port: fake.port, tls: 'none', ca: '' } },
      policy: { unknown_users: 'passthrough' },
      limits: { ...PENALTIES_ON, ip_block_after: 1000, account_block_after: 1000, ...limits },
      ...(Object.keys(timeouts).length > 0 ? { timeouts } : {}),
    },
  });
  gateways.push(gw);
  return gw;
}

describe('guessing through the upstream', () => {
  it('passwords checked upstream take a credential-check slot until the upstream answers', async () => {
    // Catches: releasing the client's slot after the local decision, so guesses that go to the
    // upstream (no argon2 locally) could all be in flight at once.
    const gw = await gatewayOnFake({ max_concurrent_logins_per_ip: 2 });
    const clients = await Promise.all(Array.from({ length: 6 }, () => imaps(gw, { from: '127.0.0.21', timeoutMs: 10_000 })));
    const answers = await Promise.all(clients.map((c, i) => c.command(`p${i}`, `LOGIN guesser${i} guess-${i}`, 10_000)));
    for (const [i, a] of answers.entries()) expect(taggedLine(a, `p${i}`)).toMatch(/NO \[AUTHENTICATIONFAILED\]/);
    expect(maxInFlight).toBe(2);
    for (const c of clients) c.destroy();
  });

  it('a client that hangs up right after sending its password gets no verdict, and its login stops upstream too', async () => {
    // Catches: logins that run on after their client left (unbounded guesses in flight, a
    // master login and a last-use record for nobody), and sessions that stop counting while
    // their login still runs.
    loginAnswer = { delayMs: 1500, line: 'NO [AUTHENTICATIONFAILED] Authentication failed.' };
    const gw = await gatewayOnFake({ max_concurrent_logins_per_ip: 2 });
    const before = fake.connections.length;
    const c = await imaps(gw, { from: '127.0.0.22' });
    c.send('h1 LOGIN leaver secret\r\n');
    await waitUntil(() => inFlight === 1, 'the LOGIN upstream');
    // While the login runs the session is counted, also after its client left.
    expect(gw.gateway.services.registry.size).toBe(1);
    c.destroy();
    await sleep(50);
    // The upstream dialogue was abandoned (its connection closed), long before the upstream's answer.
    await waitUntil(() => inFlight === 0, 'the upstream login abandoned', 1000);
    await waitUntil(() => gw.gateway.services.registry.size === 0, 'registry empty', 1000);
    expect(fake.connections.length).toBe(before + 1);
    // Nothing counted or recorded for a verdict nobody saw.
    expect(gw.store.penalties.get('ip', '127.0.0.22', 600_000).failures).toBe(0);
    expect(gw.logs().filter((l) => l.msg === 'login ok' || l.msg === 'login failed')).toEqual([]);
  });

  it("the upstream's own temporary failure is answered as temporary and never counted as a wrong password", async () => {
    // Catches: mapping every upstream NO to "wrong password" (an auth backend outage would turn
    // into AUTHENTICATIONFAILED answers, penalties and blocks for everyone behind a NAT).
    loginAnswer = { delayMs: 10, line: 'NO [UNAVAILABLE] Temporary authentication failure.' };
    const gw = await gatewayOnFake();
    const c = await imaps(gw, { from: '127.0.0.23' });
    const answer = await c.command('u1', 'LOGIN someone secret');
    expect(answer).toBe('u1 NO [UNAVAILABLE] The mail service is temporarily unavailable; try again in a few minutes.\r\n');
    expect(gw.store.penalties.get('ip', '127.0.0.23', 600_000).failures).toBe(0);
    // A busy mailbox is reported as such.
    loginAnswer = { delayMs: 10, line: 'NO [INUSE] Mailbox is locked.' };
    expect(await c.command('u2', 'LOGIN someone secret')).toBe('u2 NO [INUSE] The mailbox is in use by another session; try again later.\r\n');
    expect(gw.store.penalties.get('ip', '127.0.0.23', 600_000).failures).toBe(0);
    c.destroy();
  });

  it('the same for POP3: -ERR [SYS/TEMP] from the upstream stays a temporary failure', async () => {
    const pop = await startFakeUpstream(
      {
        onConnect: (conn) => conn.write('+OK fake ready\r\n'),
        onLine: (conn, line) => {
          const name = line.split(' ')[0]!.toUpperCase();
          if (name === 'CAPA') conn.write('+OK\r\nUSER\r\nSASL PLAIN\r\n.\r\n');
          else if (name === 'AUTH') conn.write('-ERR [SYS/TEMP] Temporary authentication failure.\r\n');
          else conn.write('-ERR unexpected\r\n');
        },
      },
      dc.pki,
    );
    try {
      const gw = await startGateway(dc, {
        config: { upstream: { pop3: { port: pop.port, tls: 'none', ca: '' } }, policy: { unknown_users: 'passthrough' }, limits: PENALTIES_ON },
      });
      gateways.push(gw);
      const p = await pop3s(gw, { from: '127.0.0.24' });
      expect(await p.command('USER someone')).toBe('+OK Send PASS\r\n');
      expect(await p.command('PASS secret')).toBe('-ERR [SYS/TEMP] The mail service is temporarily unavailable; try again in a few minutes.\r\n');
      expect(gw.store.penalties.get('ip', '127.0.0.24', 600_000).failures).toBe(0);
      p.destroy();
    } finally {
      await pop.close();
    }
  });
});

describe('connection limits that cannot be walked around', () => {
  it('a flood of connections that never start TLS is dropped on accept past twice the per-IP cap', async () => {
    // Catches: caps checked only after the handshake, so half-open connections hold descriptors
    // until the handshake deadline, however many there are.
    const gw = await gatewayOnFake({ max_connections_per_ip: 3 }, { tls_handshake_seconds: 10 });
    const sockets: net.Socket[] = [];
    const closedAt: Array<number | null> = [];
    for (let i = 0; i < 10; i++) {
      const s = net.connect({ host: '127.0.0.1', port: gw.ports.imaps, localAddress: '127.0.0.25' });
      s.on('error', () => undefined);
      closedAt.push(null);
      s.on('close', () => (closedAt[i] = Date.now()));
      sockets.push(s);
      await new Promise((resolve) => s.once('connect', resolve));
      await sleep(20);
    }
    await sleep(500);
    // The first twice-the-cap wait in their handshakes; the rest were dropped at once.
    expect(closedAt.slice(0, 6).every((t) => t === null)).toBe(true);
    expect(closedAt.slice(6).every((t) => t !== null)).toBe(true);
    // Another address is served meanwhile.
    const other = await imaps(gw, { from: '127.0.0.26' });
    expect(await other.command('n1', 'NOOP')).toBe('n1 OK NOOP completed\r\n');
    other.destroy();
    for (const s of sockets) s.destroy();
  });

  it('a blocked client cannot hammer one connection: each refusal counts, and the connection is closed', async () => {
    // Catches: answering a blocked client instantly and forever on one connection (log and
    // database floods at no cost to the attacker).
    const gw = await gatewayOnFake({ ip_block_after: 1 });
    loginAnswer = { delayMs: 10, line: 'NO [AUTHENTICATIONFAILED] Authentication failed.' };
    const first = await imaps(gw, { from: '127.0.0.27' });
    expect(taggedLine(await first.command('b0', 'LOGIN someone wrong'), 'b0')).toMatch(/AUTHENTICATIONFAILED/);
    first.destroy();
    const c = await imaps(gw, { from: '127.0.0.27' });
    const limit = gw.config.limits.max_login_failures_per_connection;
    const started = Date.now();
    for (let i = 1; i <= limit; i++) {
      c.send(`b${i} LOGIN someone wrong-${i}\r\n`);
    }
    await c.closed;
    const text = c.transcript();
    expect(text.match(/ NO \[UNAVAILABLE\]/g)).toHaveLength(limit);
    expect(text).toContain('* BYE ');
    // Each refusal waited the first-failure delay.
    expect(Date.now() - started).toBeGreaterThanOrEqual(limit * PENALTIES_ON.failure_delay_base_ms);
  });

  it('a client that keeps itself busy instead of logging in is closed after prelogin_total_seconds', async () => {
    // Catches: a pre-login deadline that every NOOP resets, letting a client sit before login forever.
    const gw = await gatewayOnFake({}, { prelogin_idle_seconds: 60, prelogin_total_seconds: 2 });
    const c = await imaps(gw, { from: '127.0.0.28' });
    const started = Date.now();
    let n = 0;
    while (!c.isClosed && Date.now() - started < 6000) {
      c.send(`k${n++} NOOP\r\n`);
      await sleep(200);
    }
    expect(c.isClosed).toBe(true);
    expect(Date.now() - started).toBeLessThan(4000);
    expect(c.transcript()).toMatch(/\* BYE Disconnected for inactivity\.\r\n$/);
  });
});
