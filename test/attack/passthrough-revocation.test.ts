/**
 * Sessions passed through for names mailgate did not know (unknown_users =
 * "passthrough") are checked by the revocation watcher too, by username
 * (issue 10, §1): once the name is added with two-step verification (by the
 * CLI, another process) or blocked (by guesses through this gateway), its
 * open sessions are closed within the promised 5 seconds. Real Dovecot, real
 * mailgate, the built CLI.
 */
import { generateSync } from 'otplib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cliConfigFor, imapsLogin, PENALTIES_ON } from '../support/attack.js';
import { runCli } from '../support/cli.js';
import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { logLines, startGateway, type GatewayHandle } from '../support/gateway.js';
import { imaps, taggedLine, type ImapClient } from '../support/imap-client.js';

const HELP_URL = 'https://mail.example.test/app-passwords';

let dc: DovecotHandle;
let gw: GatewayHandle;
let cli: string;

beforeAll(async () => {
  dc = await startDovecot({ users: ['carol', 'dave', 'erin'].map((name) => ({ name, password: `${name}-upstream-pw` })) });
  gw = await startGateway(dc, {
    config: {
      policy: { unknown_users: 'passthrough', help_url: HELP_URL },
      timeouts: { revocation_check_seconds: 2 },
      limits: { ...PENALTIES_ON, account_block_after: 3, ip_block_after: 100 },
    },
  });
  cli = cliConfigFor(gw);
});

afterAll(async () => {
  await gw?.stop();
  await dc?.stop();
});

/** Logs in with the upstream password (passthrough) and starts IDLE. */
async function idlingPassthrough(user: string): Promise<ImapClient> {
  const { c, answer } = await imapsLogin(gw, user, `${user}-upstream-pw`);
  expect(taggedLine(answer, 'L1')).toMatch(/^L1 OK /);
  expect(taggedLine(await c.command('s', 'SELECT INBOX'), 's')).toMatch(/^s OK /);
  c.send('i IDLE\r\n');
  expect(await c.readLine()).toBe('+ idling\r\n');
  return c;
}

async function cli0(args: string[]): Promise<string> {
  const result = await runCli(['--config', cli, ...args]);
  expect(result.code, `mailgate ${args.join(' ')}: ${result.stderr}`).toBe(0);
  return result.stdout;
}

describe('passthrough sessions of names mailgate did not know', () => {
  it('are closed within 5 s once the CLI adds the name with two-step verification on', async () => {
    // Catches: a watcher that skips sessions without an account id (a user turns on 2FA, and the
    // sessions opened with the main password stay open for hours).
    const c = await idlingPassthrough('carol');
    await cli0(['account', 'add', 'carol']);
    const { secret } = JSON.parse(await cli0(['totp', 'enroll', 'carol', '--json'])) as { secret: string };
    const since = Date.now();
    await cli0(['totp', 'confirm', 'carol', generateSync({ secret })]);
    const rest = await c.waitClosed(6_000);
    expect(Date.now() - since).toBeLessThan(5_000);
    expect(rest).toBe(`* BYE [UNAVAILABLE] 2-step verification was turned on for this account; sign in again with an app password: ${HELP_URL}\r\n`);
    expect(logLines(gw, 'closing a session whose credentials are no longer valid', { user: 'carol', reason: 'two-factor-enabled' })).toHaveLength(1);
  });

  it('are closed at once when guesses through this gateway block the name', async () => {
    // Catches: a block started by this process going unnoticed (SQLite's data_version does not move
    // for a connection's own commits), and a blocked name's attacker staying logged in.
    const c = await idlingPassthrough('dave');
    const keep = await idlingPassthrough('erin');
    const since = Date.now();
    for (let i = 0; i < 3; i++) {
      const g = await imaps(gw, { from: '127.0.0.91' });
      expect(taggedLine(await g.command('g', `LOGIN dave wrong-guess-${i}`), 'g')).toMatch(/^g NO /);
      g.destroy();
    }
    const rest = await c.waitClosed(6_000);
    expect(Date.now() - since).toBeLessThan(5_000);
    expect(rest).toBe('* BYE [UNAVAILABLE] This account is temporarily blocked after repeated failed sign-ins; try again later.\r\n');
    expect(logLines(gw, 'closing a session whose credentials are no longer valid', { user: 'dave', reason: 'account-blocked' })).toHaveLength(1);
    // Another name's session is untouched.
    keep.send('DONE\r\n');
    expect(taggedLine(await keep.readUntilTagged('i'), 'i')).toMatch(/^i OK /);
    expect(taggedLine(await keep.command('n', 'NOOP'), 'n')).toMatch(/^n OK NOOP completed/);
    keep.destroy();
  });
});
