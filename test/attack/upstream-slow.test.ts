/**
 * An upstream that is slow or goes silent during the login dialogue: slow
 * to greet, silent after the TCP connect, silent after its STARTTLS/STLS
 * go-ahead (the TLS handshake never completes). For IMAP and POP3:
 *
 * - the client gets `NO [UNAVAILABLE]` / `-ERR [SYS/TEMP]` within the
 *   configured upstream timeouts (2 s here), never a hang;
 * - mailgate closes its upstream connection at the deadline, and once the
 *   client has gone no socket or timer is left (registry empty, the process's
 *   sockets and timers back to where they were);
 * - a correct login is served while another login waits on a silent upstream.
 *
 * The upstream is the real Dovecot behind a fault-injecting proxy
 * (test/support/fault-proxy.ts), since Dovecot cannot be made slow on cue.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { assertNoInternalErrors } from '../support/attack.js';
import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { startFaultProxy, type FaultProxy, type ProxyConnection, type ProxyFault } from '../support/fault-proxy.js';
import { logLines, sessionClosed, startGateway, type GatewayHandle } from '../support/gateway.js';
import { imapQuote, imaps, taggedLine } from '../support/imap-client.js';
import { pop3s } from '../support/pop3-client.js';
import { resourcesBackTo, settledResources } from '../support/resources.js';
import { waitUntil } from '../support/timing.js';

const TIMEOUT_S = 2;
const IMAP_UNAVAILABLE = 'NO [UNAVAILABLE] The mail service is temporarily unavailable; try again in a few minutes.\r\n';
const POP3_SYS_TEMP = /^-ERR \[SYS\/TEMP\] /;

let dc: DovecotHandle;
let gw: GatewayHandle;
let imapProxy: FaultProxy;
let pop3Proxy: FaultProxy;
let appPassword: string;

beforeAll(async () => {
  dc = await startDovecot();
  [imapProxy, pop3Proxy] = await Promise.all([startFaultProxy({ port: dc.imapPort }), startFaultProxy({ port: dc.pop3Port })]);
  gw = await startGateway(dc, {
    upstreamImapPort: imapProxy.port,
    upstreamPop3Port: pop3Proxy.port,
    config: { timeouts: { upstream_connect_seconds: TIMEOUT_S, upstream_response_seconds: TIMEOUT_S } },
  });
  gw.store.accounts.add('alice');
  appPassword = (await gw.store.appPasswords.create('alice', { name: 'phone', scopes: ['imap', 'pop3'] })).password;
});

afterAll(async () => {
  await gw?.stop();
  await Promise.all([imapProxy?.close(), pop3Proxy?.close()]);
  await dc?.stop();
});

/** The proxy connection the next login opens (the start-up probe and earlier tests opened others). */
async function nextConnection(proxy: FaultProxy, before: number): Promise<ProxyConnection> {
  return waitUntil(() => proxy.connections[before], 'mailgate to connect to the upstream');
}

interface Stalled {
  answer: string;
  ms: number;
  upstream: ProxyConnection;
  clientPort: number;
}

/** Logs in over IMAPS while the upstream misbehaves; logs out again before returning. */
async function imapLoginAgainst(fault: ProxyFault): Promise<Stalled> {
  imapProxy.fault = fault;
  const before = imapProxy.connections.length;
  const c = await imaps(gw, { timeoutMs: 10_000 });
  const started = Date.now();
  const answer = await c.command('s1', `LOGIN alice ${imapQuote(appPassword)}`);
  const ms = Date.now() - started;
  const upstream = await nextConnection(imapProxy, before);
  // The upstream connection is closed at the deadline, while the client stays.
  await waitUntil(() => upstream.closed, 'mailgate to close the stalled upstream connection', 1_000);
  expect(await c.command('s2', 'NOOP')).toMatch(/^s2 OK /);
  expect(taggedLine(await c.command('s3', 'LOGOUT'), 's3')).toMatch(/^s3 OK/);
  await c.waitClosed();
  return { answer, ms, upstream, clientPort: c.localPort };
}

async function pop3LoginAgainst(fault: ProxyFault): Promise<Stalled> {
  pop3Proxy.fault = fault;
  const before = pop3Proxy.connections.length;
  const c = await pop3s(gw, { timeoutMs: 10_000 });
  expect(await c.command('USER alice')).toMatch(/^\+OK/);
  const started = Date.now();
  const answer = await c.command(`PASS ${appPassword}`);
  const ms = Date.now() - started;
  const upstream = await nextConnection(pop3Proxy, before);
  await waitUntil(() => upstream.closed, 'mailgate to close the stalled upstream connection', 1_000);
  expect(await c.command('NOOP')).toMatch(/^-ERR/); // still pre-login, still answering
  expect(await c.quit()).toMatch(/^\+OK/);
  return { answer, ms, upstream, clientPort: c.localPort };
}

const FAULTS: Array<[string, ProxyFault, RegExp]> = [
  ['slow to greet (greets after 3x the timeout)', { kind: 'delay-greeting', ms: 3 * TIMEOUT_S * 1000 }, /did not answer in time/],
  ['silent after the TCP connect', { kind: 'silent' }, /did not answer in time/],
  ['silent after its STARTTLS/STLS go-ahead', { kind: 'stall-after-starttls' }, /TLS handshake with the upstream timed out/],
];

describe.each(FAULTS)('upstream %s', (_name, fault, reason) => {
  it('IMAP and POP3 clients get a temporary error within the timeout; nothing is left behind', async () => {
    // Catches: a login dialogue without a deadline (the client hangs), or one
    // that gives up but leaves its upstream socket or a timer behind.
    await waitUntil(() => gw.gateway.services.registry.size === 0, 'no session left from earlier tests');
    const baseline = await settledResources();
    const [imap, pop3] = await Promise.all([imapLoginAgainst(fault), pop3LoginAgainst(fault)]);

    expect(imap.answer).toBe(`s1 ${IMAP_UNAVAILABLE}`);
    expect(pop3.answer).toMatch(POP3_SYS_TEMP);
    for (const { ms } of [imap, pop3]) {
      expect(ms).toBeGreaterThanOrEqual(TIMEOUT_S * 1000 - 100);
      expect(ms).toBeLessThan(TIMEOUT_S * 1000 + 1_500);
    }
    for (const port of [imap.clientPort, pop3.clientPort]) {
      const closed = await sessionClosed(gw, port);
      const why = logLines(gw, 'upstream login failed', { session: closed.session });
      expect(why).toHaveLength(1);
      expect(why[0]!.reason).toMatch(reason);
    }

    await waitUntil(() => gw.gateway.services.registry.size === 0, 'the registry to empty');
    expect(imapProxy.openConnections() + pop3Proxy.openConnections()).toBe(0);
    await resourcesBackTo(baseline);
    assertNoInternalErrors(gw);
  });
});

describe('a silent upstream does not hold up other sessions', () => {
  it('a correct login succeeds while another waits on a silent upstream, which then fails on time', async () => {
    // Catches: an upstream wait that blocks the event loop or a shared slot.
    await waitUntil(() => gw.gateway.services.registry.size === 0, 'no session left from earlier tests');
    const baseline = await settledResources();
    imapProxy.fault = { kind: 'silent' };
    const before = imapProxy.connections.length;
    const stuck = await imaps(gw, { timeoutMs: 10_000 });
    const started = Date.now();
    let stuckSettled = false;
    const stuckAnswer = stuck.command('w1', `LOGIN alice ${imapQuote(appPassword)}`).finally(() => (stuckSettled = true));
    await nextConnection(imapProxy, before);
    imapProxy.fault = { kind: 'pass' };
    pop3Proxy.fault = { kind: 'pass' };

    const good = await imaps(gw, { timeoutMs: 10_000 });
    expect(taggedLine(await good.command('g1', `LOGIN alice ${imapQuote(appPassword)}`), 'g1')).toMatch(/^g1 OK \[CAPABILITY /);
    expect(taggedLine(await good.command('g2', 'SELECT INBOX'), 'g2')).toMatch(/^g2 OK /);
    const goodPop = await pop3s(gw, { timeoutMs: 10_000 });
    expect(await goodPop.command('USER alice')).toMatch(/^\+OK/);
    expect(await goodPop.command(`PASS ${appPassword}`)).toMatch(/^\+OK/);
    expect(await goodPop.command('STAT')).toMatch(/^\+OK \d+ \d+\r\n$/);
    expect(stuckSettled).toBe(false);

    expect(await stuckAnswer).toBe(`w1 ${IMAP_UNAVAILABLE}`);
    expect(Date.now() - started).toBeLessThan(TIMEOUT_S * 1000 + 1_500);
    expect(taggedLine(await good.command('g3', 'LOGOUT'), 'g3')).toMatch(/^g3 OK/);
    expect(await goodPop.quit()).toMatch(/^\+OK/);
    stuck.destroy();
    await Promise.all([good.waitClosed(), stuck.closed]);
    await waitUntil(() => gw.gateway.services.registry.size === 0, 'the registry to empty');
    await waitUntil(() => imapProxy.openConnections() + pop3Proxy.openConnections() === 0, 'every upstream connection closed');
    await resourcesBackTo(baseline);
    assertNoInternalErrors(gw);
  });
});
