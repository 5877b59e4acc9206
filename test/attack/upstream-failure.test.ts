/**
 * The upstream dying in the middle of a relayed transfer: the client must see
 * a clean close (no hang), the session must leave the registry, and the
 * gateway must go on serving new logins.
 *
 * Two versions: the real Dovecot's mail process (the one serving the session)
 * SIGKILLed while it streams a large message, and a scripted fake upstream
 * that sends half a literal and then resets the connection.
 */
import { readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { startFakeUpstream, type FakeConnection, type FakeUpstream } from '../support/fake-upstream.js';
import { sessionClosed, startGateway, type GatewayHandle } from '../support/gateway.js';
import { imapsLogin } from '../support/attack.js';
import { taggedLine } from '../support/imap-client.js';
import { resourcesBackTo, settledResources } from '../support/resources.js';
import { sleep, waitUntil } from '../support/timing.js';

const BIG = 24 * 1024 * 1024;

let dc: DovecotHandle;
let gw: GatewayHandle;
let appPassword: string;

beforeAll(async () => {
  dc = await startDovecot();
  gw = await startGateway(dc);
  gw.store.accounts.add('alice');
  appPassword = (await gw.store.appPasswords.create('alice', { name: 'big fetch' })).password;
  const line = 'x'.repeat(998) + '\r\n';
  const body = line.repeat(Math.ceil(BIG / line.length));
  await dc.seedMessage('alice', Buffer.from(`From: a@example.test\r\nSubject: big\r\n\r\n${body}`));
});

afterAll(async () => {
  await gw?.stop();
  await dc?.stop();
});

/** Pids of the Dovecot master's children whose command is `name` (Linux /proc). */
async function dovecotChildren(name: string): Promise<number[]> {
  const pid = dc.pid!;
  const kids = (await readFile(`/proc/${pid}/task/${pid}/children`, 'utf8')).split(/\s+/).filter(Boolean).map(Number);
  const out: number[] = [];
  for (const kid of kids) {
    const comm = (await readFile(`/proc/${kid}/comm`, 'utf8').catch(() => '')).trim();
    if (comm === name) out.push(kid);
  }
  return out;
}

describe('upstream death mid-transfer', () => {
  it('the real Dovecot mail process killed mid-FETCH: the client sees a clean close, the registry empties, new logins work', async () => {
    // Catches: a relay that leaves the client hanging (or the session registered) when the upstream vanishes.
    const { c, answer } = await imapsLogin(gw, 'alice', appPassword, { timeoutMs: 10_000 });
    expect(taggedLine(answer, 'L1')).toMatch(/^L1 OK /);
    expect(taggedLine(await c.command('s', 'SELECT INBOX'), 's')).toMatch(/^s OK /);
    c.send('f FETCH 1 BODY[]\r\n');
    const head = await c.readUntil(/^\* 1 FETCH .*\{\d+\}\r\n$/);
    const size = Number(/\{(\d+)\}\r\n$/.exec(head)![1]);
    expect(size).toBeGreaterThan(BIG);
    // Stop reading: with the pipes full, Dovecot is stuck mid-message when it dies.
    c.pause();
    await sleep(200);
    const imapPids = await waitUntil(async () => {
      const pids = await dovecotChildren('imap');
      return pids.length === 1 ? pids : null;
    }, 'the one imap process of the session');
    process.kill(imapPids[0]!, 'SIGKILL');
    c.resume();
    const started = Date.now();
    const rest = await c.waitClosed(5_000);
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(rest.length).toBeLessThan(size);
    expect(rest).not.toMatch(/^f OK/m);
    const closed = await sessionClosed(gw, c.localPort);
    expect(['upstream-closed', 'upstream-error']).toContain(closed.outcome);
    await waitUntil(() => gw.gateway.services.registry.size === 0, 'the registry to empty', 3_000);

    const again = await imapsLogin(gw, 'alice', appPassword, { timeoutMs: 10_000 });
    expect(taggedLine(again.answer, 'L1')).toMatch(/^L1 OK /);
    expect(taggedLine(await again.c.command('s', 'SELECT INBOX'), 's')).toMatch(/^s OK /);
    again.c.destroy();
  });
});

describe('upstream reset mid-literal (scripted fake)', () => {
  let fake: FakeUpstream;
  let fgw: GatewayHandle;
  let fakeAppPassword: string;
  const LITERAL = 200_000;

  beforeAll(async () => {
    fake = await startFakeUpstream(
      {
        onConnect(conn: FakeConnection) {
          conn.write('* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] fake ready\r\n');
        },
        onLine(conn: FakeConnection, line: string) {
          const [tag, command = ''] = line.split(' ');
          switch (command.toUpperCase()) {
            case 'STARTTLS':
              conn.write(`${tag} OK Begin TLS\r\n`);
              void conn.upgrade().catch(() => undefined);
              return;
            case 'CAPABILITY':
              conn.write(`* CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN ID${conn.secure ? '' : ' STARTTLS'}\r\n${tag} OK done\r\n`);
              return;
            case 'ID':
              conn.write(`* ID NIL\r\n${tag} OK done\r\n`);
              return;
            case 'AUTHENTICATE':
              conn.write(`${tag} OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n`);
              return;
            case 'SELECT':
              conn.write(`* 1 EXISTS\r\n${tag} OK [READ-WRITE] done\r\n`);
              return;
            case 'FETCH':
              // Half the announced literal, then a TCP reset.
              conn.write(`* 1 FETCH (BODY[] {${LITERAL}}\r\n${'y'.repeat(LITERAL / 2)}`);
              setTimeout(() => conn.reset(), 50);
              return;
            case 'LOGOUT':
              conn.end(`* BYE\r\n${tag} OK\r\n`);
              return;
            default:
              conn.write(`${tag} OK done\r\n`);
          }
        },
      },
      dc.pki,
    );
    fgw = await startGateway(dc, { upstreamImapPort: fake.port });
    fgw.store.accounts.add('alice');
    fakeAppPassword = (await fgw.store.appPasswords.create('alice', { name: 'fake' })).password;
  });

  afterAll(async () => {
    await fgw?.stop();
    await fake?.close();
  });

  it('half a literal then a reset: clean close for the client, registry empty, the next login works, nothing leaked', async () => {
    // Catches: a client left waiting for the rest of a literal that will never come,
    // and a reset that leaves the client socket or a timer behind.
    const baseline = await settledResources();
    const { c, answer } = await imapsLogin(fgw, 'alice', fakeAppPassword);
    expect(taggedLine(answer, 'L1')).toMatch(/^L1 OK /);
    expect(taggedLine(await c.command('s', 'SELECT INBOX'), 's')).toMatch(/^s OK /);
    c.send('f FETCH 1 BODY[]\r\n');
    const head = await c.readLine();
    expect(head).toBe(`* 1 FETCH (BODY[] {${LITERAL}}\r\n`);
    const rest = await c.waitClosed(3_000);
    expect(rest.length).toBeLessThanOrEqual(LITERAL / 2);
    const closed = await sessionClosed(fgw, c.localPort);
    expect(['upstream-closed', 'upstream-error']).toContain(closed.outcome);
    await waitUntil(() => fgw.gateway.services.registry.size === 0, 'the registry to empty', 3_000);

    const again = await imapsLogin(fgw, 'alice', fakeAppPassword);
    expect(taggedLine(again.answer, 'L1')).toMatch(/^L1 OK /);
    again.c.destroy();
    await waitUntil(() => fgw.gateway.services.registry.size === 0 && fake.connections.every((conn) => conn.closed), 'every session and upstream connection closed');
    await resourcesBackTo(baseline);
  });
});


