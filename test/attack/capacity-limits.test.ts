/**
 * Resource caps under attack, against a real mailgate and Dovecot:
 *  - connections per client IP (limits.max_connections_per_ip) and in all
 *    (limits.max_connections): the excess gets a one-line refusal and is
 *    closed, other clients are still served, logged-in sessions do not count
 *    against the per-IP cap;
 *  - argon2 capacity (auth.hash_concurrency, auth.hash_queue): a burst of
 *    wrong passwords fails fast as temporarily unavailable instead of queueing
 *    without bound, and everything works again once it has passed.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { attemptsLogged, logLines, startGateway, type GatewayHandle } from '../support/gateway.js';
import { imapsLogin } from '../support/attack.js';
import { imaps, taggedLine, type ImapClient } from '../support/imap-client.js';
import { RawClient } from '../support/raw-client.js';
import { enableTotp } from '../support/store.js';
import { waitUntil } from '../support/timing.js';

const IMAP_REFUSAL = '* BYE [UNAVAILABLE] Too many connections; try again later.\r\n';
const POP3_REFUSAL = '-ERR [SYS/TEMP] Too many connections; try again later.\r\n';

let dc: DovecotHandle;

beforeAll(async () => {
  dc = await startDovecot();
});

afterAll(async () => {
  await dc?.stop();
});

/** Connects over implicit TLS and returns the first line (greeting or refusal). */
async function firstLine(gw: GatewayHandle, from: string, protocol: 'imap' | 'pop3' = 'imap'): Promise<{ c: RawClient; line: string }> {
  const c = await RawClient.connect({ port: protocol === 'imap' ? gw.ports.imaps : gw.ports.pop3s, tls: true, ca: gw.caCert, localAddress: from });
  return { c, line: await c.readLine() };
}

describe('connection caps', () => {
  let gw: GatewayHandle;
  let appPassword: string;

  beforeAll(async () => {
    gw = await startGateway(dc, { config: { limits: { max_connections_per_ip: 3, max_connections: 8 } } });
    gw.store.accounts.add('alice');
    appPassword = (await gw.store.appPasswords.create('alice', { name: 'phone' })).password;
  });

  afterAll(async () => {
    await gw?.stop();
  });

  const drained = () => waitUntil(() => gw.gateway.services.registry.size === 0, 'every session to close');

  it('the 4th unauthenticated connection from one IP is refused in one line and closed; another IP is served', async () => {
    // Catches: one address holding every pre-login slot (a per-IP cap that is missing or off by more than one).
    const open: RawClient[] = [];
    for (let i = 0; i < 3; i++) {
      const { c, line } = await firstLine(gw, '127.0.0.2');
      expect(line).toMatch(/^\* OK \[CAPABILITY /);
      open.push(c);
    }
    const over = await firstLine(gw, '127.0.0.2');
    expect(over.line).toBe(IMAP_REFUSAL);
    expect(await over.c.waitClosed(3_000)).toBe('');
    // The count is per client, across listeners and protocols.
    const pop3 = await firstLine(gw, '127.0.0.2', 'pop3');
    expect(pop3.line).toBe(POP3_REFUSAL);
    await pop3.c.waitClosed(3_000);
    const other = await firstLine(gw, '127.0.0.3');
    expect(other.line).toMatch(/^\* OK \[CAPABILITY /);
    await waitUntil(() => logLines(gw, 'session closed', { clientIp: '127.0.0.2', outcome: 'refused-per-ip-limit' }).length === 2, 'the refusals in the log');
    for (const c of [...open, other.c]) c.destroy();
    await drained();
  });

  it('logged-in sessions do not count against the per-IP cap', async () => {
    // Catches: a household whose devices are logged in being locked out of new connections.
    const loggedIn: RawClient[] = [];
    for (let i = 0; i < 3; i++) {
      const { c, answer } = await imapsLogin(gw, 'alice', appPassword, { from: '127.0.0.4' });
      expect(taggedLine(answer, 'L1')).toMatch(/^L1 OK /);
      loggedIn.push(c);
    }
    const fresh: RawClient[] = [];
    for (let i = 0; i < 3; i++) {
      const { c, line } = await firstLine(gw, '127.0.0.4');
      expect(line).toMatch(/^\* OK \[CAPABILITY /);
      fresh.push(c);
    }
    expect((await firstLine(gw, '127.0.0.4')).line).toBe(IMAP_REFUSAL);
    for (const c of [...loggedIn, ...fresh]) c.destroy();
    await drained();
  });

  it('the global cap (limits.max_connections) refuses the connection after it, from any IP', async () => {
    // Catches: no global cap (a botnet spread over many IPs exhausting memory and file descriptors) or one that never frees its slots.
    const open: RawClient[] = [];
    for (let i = 0; i < 8; i++) {
      const { c, line } = await firstLine(gw, `127.0.1.${10 + i}`);
      expect(line).toMatch(/^\* OK /);
      open.push(c);
    }
    const over = await firstLine(gw, '127.0.1.99');
    expect(over.line).toBe(IMAP_REFUSAL);
    await over.c.waitClosed(3_000);
    await waitUntil(() => logLines(gw, 'session closed', { clientIp: '127.0.1.99', outcome: 'refused-global-limit' }).length === 1, 'the refusal in the log');
    open.pop()!.destroy();
    await waitUntil(() => gw.gateway.services.registry.size <= 7, 'a slot to free up');
    expect((await firstLine(gw, '127.0.1.99')).line).toMatch(/^\* OK /);
    for (const c of open) c.destroy();
  });
});

describe('argon2 capacity', () => {
  let gw: GatewayHandle;
  let appPassword: string;

  beforeAll(async () => {
    gw = await startGateway(dc, {
      // One hash at a time, two waiting; each hash costs tens of milliseconds.
      argon2: { memoryKib: 16 * 1024, iterations: 2, parallelism: 1 },
      config: { auth: { hash_concurrency: 1, hash_queue: 2 }, limits: { max_concurrent_logins_per_ip: 2 } },
    });
    gw.store.accounts.add('alice');
    enableTotp(gw.store, 'alice');
    appPassword = (await gw.store.appPasswords.create('alice', { name: 'phone' })).password;
  });

  afterAll(async () => {
    await gw?.stop();
  });

  it('a burst of wrong passwords from many clients fails fast as temporary; afterwards every path works again', async () => {
    // Catches: an unbounded hashing queue (attempts wait forever, correct logins stuck behind
    // them), and a refusal under load that sticks afterwards: here, the first dummy
    // verification (for unknown accounts) failing under load and being remembered, which
    // would answer every later unknown account "unavailable" without hashing, an oracle
    // that tells unknown accounts from real ones.
    const hasher = () => gw.hasher.stats;
    const selector = appPassword.replace(/ /g, '').slice(0, 4);
    const connect = (ips: string[]) => Promise.all(ips.flatMap((ip) => [imaps(gw, { from: ip }), imaps(gw, { from: ip })]));
    // Six clients on three IPs (two each: the per-IP concurrency cap) try wrong app passwords
    // that reach alice's real hash; then six more on three other IPs try unknown accounts.
    const real = await connect(['127.0.2.1', '127.0.2.2', '127.0.2.3']);
    const unknown = await connect(['127.0.2.4', '127.0.2.5', '127.0.2.6']);
    const results: Array<{ line: string; ms: number }> = [];
    const run = (c: ImapClient, i: number, user: string, password: string) => {
      const started = performance.now();
      return c.command(`b${i}`, `LOGIN ${user} ${password}`, 10_000).then((answer) => results.push({ line: taggedLine(answer, `b${i}`), ms: performance.now() - started }));
    };
    const firstWave = real.map((c, i) => run(c, i, 'alice', `${selector}${'q'.repeat(11)}${String.fromCharCode(97 + i)}`));
    await waitUntil(() => hasher().running === 1 && hasher().queued === 2, 'the hashing queue to fill', 3_000);
    const secondWave = unknown.map((c, i) => run(c, 10 + i, `nosuchuser${i}`, `wrong-password-${i}`));
    await Promise.all([...firstWave, ...secondWave]);

    const busy = results.filter((r) => /NO \[UNAVAILABLE\]/.test(r.line));
    const refused = results.filter((r) => /NO \[AUTHENTICATIONFAILED\]/.test(r.line));
    expect(busy.length + refused.length).toBe(12);
    // At most three were ever hashed at once (1 running + 2 queued); the rest did not wait.
    expect(refused.length).toBeLessThanOrEqual(6);
    expect(busy.length).toBeGreaterThanOrEqual(6);
    const slowestRefusal = Math.max(...refused.map((r) => r.ms));
    for (const r of busy) expect(r.ms).toBeLessThan(slowestRefusal);
    expect(attemptsLogged(gw, 'login temporarily failed', { reason: 'hash-busy' })).toBe(busy.length);
    for (const c of [...real, ...unknown]) c.destroy();

    // Once the burst is over, every path hashes again and gives its real answer.
    await waitUntil(() => hasher().running === 0 && hasher().queued === 0, 'the hashing queue to drain');
    const ok = await imapsLogin(gw, 'alice', appPassword, { from: '127.0.2.7' });
    expect(taggedLine(ok.answer, 'L1')).toMatch(/^L1 OK /);
    ok.c.destroy();
    for (const [user, password] of [['nosuchuser', 'wrong-password'], ['alice', 'not-an-app-password']] as const) {
      const before = hasher().verifications;
      const { c, answer } = await imapsLogin(gw, user, password, { from: '127.0.2.8' });
      expect(taggedLine(answer, 'L1'), `${user} after the burst`).toMatch(/^L1 NO \[AUTHENTICATIONFAILED\]/);
      expect(hasher().verifications).toBe(before + 1);
      c.destroy();
    }
  });

  it('one IP\'s simultaneous attempts wait their turn (max_concurrent_logins_per_ip) instead of taking every hashing slot', async () => {
    // Catches: a missing per-client cap: six guesses from one address at once would fill the
    // hasher (1 running + 2 queued) and push everyone else into "unavailable".
    const hasher = () => gw.hasher.stats;
    const selector = appPassword.replace(/ /g, '').slice(0, 4);
    const clients = await Promise.all(Array.from({ length: 6 }, () => imaps(gw, { from: '127.0.2.9' })));
    let peak = 0;
    const sampler = setInterval(() => (peak = Math.max(peak, hasher().running + hasher().queued)), 2);
    const answers = await Promise.all(clients.map((c, i) => c.command(`p${i}`, `LOGIN alice ${selector}${'r'.repeat(11)}${String.fromCharCode(97 + i)}`, 10_000)));
    clearInterval(sampler);
    // Never more than the cap in the hasher at once, so nobody got "unavailable": each waited.
    expect(peak).toBeLessThanOrEqual(2);
    answers.forEach((answer, i) => expect(taggedLine(answer, `p${i}`)).toMatch(/NO \[AUTHENTICATIONFAILED\]/));
    for (const c of clients) c.destroy();
  });
});
