/**
 * Live revocation: a session that is already logged in must be closed within
 * seconds when what let it in stops being valid, even though the change is
 * made by another process (the built `mailgate` CLI) on the same database:
 * an app password revoked (one, or --all), its account removed, its expiry
 * reached, or two-step verification turned on for an account whose session
 * logged in with the upstream password. Real Dovecot behind a real mailgate;
 * timeouts.revocation_check_seconds = 1. The store is reached only through
 * the Store interface, so MAILGATE_TEST_STORE=postgres runs it on PostgreSQL.
 */
import { readFileSync } from 'node:fs';
import { ImapFlow } from 'imapflow';
import { generateSync } from 'otplib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../support/cli.js';
import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { logLines, sessionClosed, startGateway, type GatewayHandle } from '../support/gateway.js';
import { cliConfigFor, imapsLogin } from '../support/attack.js';
import { taggedLine, type ImapClient } from '../support/imap-client.js';
import { pop3s } from '../support/pop3-client.js';
import { sleep, waitUntil } from '../support/timing.js';

const REVOKED_BYE = '* BYE [UNAVAILABLE] This app password was revoked or has expired; sign in again with a valid one.\r\n';
const USERS = ['alice', 'bob', 'carol', 'dave', 'erin', 'frank'];

let dc: DovecotHandle;
let gw: GatewayHandle;
let cli: string;

beforeAll(async () => {
  dc = await startDovecot({ users: USERS.map((name) => ({ name, password: `${name}-upstream-pw` })) });
  gw = await startGateway(dc, { config: { timeouts: { revocation_check_seconds: 1 } } });
  for (const user of USERS) await gw.admin.accounts.add(user);
  cli = cliConfigFor(gw);
});

afterAll(async () => {
  await gw?.stop();
  await dc?.stop();
});

async function appPassword(user: string, name: string, expiresAt: number | null = null): Promise<{ id: number; password: string }> {
  const created = await gw.admin.appPasswords.create(user, { name, expiresAt });
  return { id: created.info.id, password: created.password };
}

async function cliOk(args: string[]): Promise<string> {
  const result = await runCli(['--config', cli, ...args]);
  expect(result.code, `mailgate ${args.join(' ')}: ${result.stderr}`).toBe(0);
  return result.stdout;
}

/** Waits for the farewell and the close; returns the time it took from `since`. */
async function expectFarewell(c: ImapClient, since: number, farewell = REVOKED_BYE): Promise<number> {
  const rest = await c.waitClosed(5_000);
  expect(rest).toBe(farewell);
  return Date.now() - since;
}

async function login(user: string, password: string): Promise<ImapClient> {
  const { c, answer } = await imapsLogin(gw, user, password);
  expect(taggedLine(answer, 'L1')).toMatch(/^L1 OK /);
  return c;
}

describe.concurrent('revocation reaches sessions that are already logged in', () => {
  it('an IDLEing ImapFlow client is sent * BYE [UNAVAILABLE] within 5 s of `app-password revoke` in another process', async () => {
    // Catches: a revocation that only applies to future logins (the session would IDLE on for hours).
    const revoked = await appPassword('alice', 'laptop');
    const kept = await appPassword('alice', 'phone');
    const serverData: string[] = [];
    const capture = (entry: { src?: string; data?: string }) => {
      if (entry?.src === 's' && entry.data) serverData.push(Buffer.from(entry.data, 'base64').toString('latin1'));
    };
    const client = new ImapFlow({
      host: '127.0.0.1',
      port: gw.ports.imaps,
      secure: true,
      tls: { ca: readFileSync(gw.caCert), servername: 'localhost' },
      auth: { user: 'alice', pass: revoked.password },
      logRaw: true,
      logger: { trace: capture, debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined },
    });
    client.on('error', () => undefined);
    const closed = new Promise<void>((resolve) => client.once('close', () => resolve()));
    await client.connect();
    await client.mailboxOpen('INBOX');
    const idling = client.idle().catch(() => undefined);
    await waitUntil(() => serverData.join('').includes('+ idling'), 'the IDLE continuation');
    // The other app password's session must not be touched.
    const bystander = await login('alice', kept.password);

    await cliOk(['app-password', 'revoke', 'alice', String(revoked.id)]);
    const revokedAt = Date.now();
    await Promise.race([closed, new Promise((_, reject) => setTimeout(() => reject(new Error('not closed within 5 s')), 5_000))]);
    expect(Date.now() - revokedAt).toBeLessThan(5_000);
    expect(serverData.join('')).toContain(REVOKED_BYE);
    await idling;
    expect(logLines(gw, 'closing a session whose credentials are no longer valid', { user: 'alice', reason: 'app-password-revoked' })).toHaveLength(1);

    expect(await bystander.command('n', 'NOOP')).toMatch(/^n OK /m);
    bystander.destroy();
  });

  it("a revocation made through the store in the gateway's own process closes the session at once; one made by the CLI within revocation_check_seconds", async () => {
    // Catches: a watcher that only polls SQLite's data_version, which does not move for the
    // gateway's own commits: a revocation from the web page (in this process) would go unnoticed
    // until something else changed. And a CLI revocation missing the promised interval.
    const interval = gw.config.timeouts.revocation_check_seconds * 1000;
    const local = await appPassword('frank', 'revoked here');
    const c = await login('frank', local.password);
    // Past the watcher's second look at fresh logins, so only the store's announcement can close it.
    await sleep(4.5 * interval);
    const since = Date.now();
    await gw.gateway.store.appPasswords.revoke('frank', local.id);
    expect(await expectFarewell(c, since)).toBeLessThan(interval);

    const remote = await appPassword('frank', 'revoked by the CLI');
    const d = await login('frank', remote.password);
    await cliOk(['app-password', 'revoke', 'frank', String(remote.id)]);
    // The CLI has exited (its commit is on disk): within one check interval, and the check itself.
    expect(await expectFarewell(d, Date.now())).toBeLessThan(interval + 1_000);
  });

  it('`app-password revoke USER --all` closes every session of the account', async () => {
    // Catches: --all revoking the rows but leaving the open sessions.
    const first = await appPassword('bob', 'one');
    const second = await appPassword('bob', 'two');
    const sessions = [await login('bob', first.password), await login('bob', second.password)];
    await cliOk(['app-password', 'revoke', 'bob', '--all']);
    const since = Date.now();
    for (const c of sessions) expect(await expectFarewell(c, since)).toBeLessThan(5_000);
  });

  it('`account remove` closes the account\'s sessions', async () => {
    // Catches: sessions of a deleted account living on (the watcher must treat a missing row as revoked).
    const { password } = await appPassword('carol', 'tablet');
    const c = await login('carol', password);
    await cliOk(['account', 'remove', 'carol', '--yes']);
    expect(await expectFarewell(c, Date.now())).toBeLessThan(5_000);
    expect(logLines(gw, 'closing a session whose credentials are no longer valid', { user: 'carol', reason: 'account-removed' })).toHaveLength(1);
  });

  it('an app password that expires while its session is open closes the session', async () => {
    // Catches: expiry checked only at login.
    const expiresAt = Date.now() + 2_500;
    const { password } = await appPassword('dave', 'short-lived', expiresAt);
    const c = await login('dave', password);
    expect(await c.command('n', 'NOOP')).toMatch(/^n OK /m);
    await c.waitClosed(8_000).then((rest) => expect(rest).toBe(REVOKED_BYE));
    expect(Date.now()).toBeGreaterThanOrEqual(expiresAt);
    expect(Date.now() - expiresAt).toBeLessThan(3_000);
    expect(logLines(gw, 'closing a session whose credentials are no longer valid', { user: 'dave', reason: 'app-password-expired' })).toHaveLength(1);
  });

  it('a POP3 session is closed too (without a line that would corrupt a relayed answer)', async () => {
    // Catches: revocation applied to IMAP sessions only.
    const { id, password } = await appPassword('erin', 'pop3 phone');
    const p = await pop3s(gw);
    expect(await p.command('USER erin')).toBe('+OK Send PASS\r\n');
    expect(await p.command(`PASS ${password}`)).toMatch(/^\+OK/);
    expect(await p.command('STAT')).toMatch(/^\+OK/);
    await cliOk(['app-password', 'revoke', 'erin', String(id)]);
    const since = Date.now();
    expect(await p.waitClosed(5_000)).toBe('');
    expect(Date.now() - since).toBeLessThan(5_000);
  });

  it('turning two-step verification on (CLI totp enroll + confirm) closes a session that used the upstream password', async () => {
    // Catches: main-password sessions surviving the switch to app passwords only.
    const c = await login('frank', 'frank-upstream-pw');
    const { secret } = JSON.parse(await cliOk(['totp', 'enroll', 'frank', '--json'])) as { secret: string };
    // Pending enrolment changes nothing yet.
    expect(await c.command('n', 'NOOP')).toMatch(/^n OK /m);
    await cliOk(['totp', 'confirm', 'frank', generateSync({ secret, epoch: Math.floor(Date.now() / 1000) })]);
    const since = Date.now();
    const rest = await c.waitClosed(5_000);
    // Its own words: nothing was revoked; the user must now use an app password.
    expect(rest).toBe(`* BYE [UNAVAILABLE] 2-step verification was turned on for this account; sign in again with an app password: ${gw.config.policy.help_url}\r\n`);
    expect(rest).not.toContain('revoked');
    expect(Date.now() - since).toBeLessThan(5_000);
    expect(logLines(gw, 'closing a session whose credentials are no longer valid', { user: 'frank', reason: 'two-factor-enabled' })).toHaveLength(1);
    expect(await sessionClosed(gw, c.localPort)).toMatchObject({ user: 'frank', outcome: 'revoked' });
  });
});
