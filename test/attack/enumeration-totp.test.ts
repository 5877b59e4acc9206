/**
 * Information leaks and replays:
 *  - username enumeration by timing: refusing an unknown account must take as
 *    long as refusing an existing one (one argon2 run either way), measured
 *    through a real mailgate with hashing made expensive enough to dominate;
 *  - TOTP replay: a code accepted once is refused afterwards, by the same
 *    store connection, by another one (another process in miniature), and
 *    across the real CLI and the gateway.
 */
import { generateSync } from 'otplib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SqliteRepositories } from '../../src/store/sqlite/repositories.js';
import { runCli } from '../support/cli.js';
import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { startGateway, type GatewayHandle } from '../support/gateway.js';
import { cliConfigFor } from '../support/attack.js';
import { imaps, taggedLine, type ImapClient } from '../support/imap-client.js';
import { enableTotp } from '../support/store.js';
import { median } from '../support/timing.js';

/** Costly enough that one argon2 run (~tens of ms) dwarfs the round trip and the database lookups. */
const SLOW_ARGON2 = { memoryKib: 16 * 1024, iterations: 2, parallelism: 1 };

let dc: DovecotHandle;
let gw: GatewayHandle;
let aliceApp: string;

beforeAll(async () => {
  dc = await startDovecot();
  gw = await startGateway(dc, { argon2: SLOW_ARGON2 });
  gw.store.accounts.add('alice');
  enableTotp(gw.store, 'alice');
  aliceApp = (await gw.store.appPasswords.create('alice', { name: 'phone' })).password;
  for (const user of ['dave', 'erin']) gw.store.accounts.add(user);
});

afterAll(async () => {
  await gw?.stop();
  await dc?.stop();
});

/**
 * Login latencies of two kinds of refused attempt, interleaved so that load
 * changes hit both alike. Connections are reused up to the per-connection
 * failure limit.
 */
async function sampleLatencies(samples: number, a: [string, () => string], b: [string, () => string]): Promise<{ a: number[]; b: number[] }> {
  const out = { a: [] as number[], b: [] as number[] };
  let c: ImapClient | null = null;
  let onConnection = 0;
  let tag = 0;
  for (let i = 0; i < samples * 2; i++) {
    if (!c || onConnection === gw.config.limits.max_login_failures_per_connection) {
      c?.destroy();
      c = await imaps(gw);
      onConnection = 0;
    }
    const [user, password] = i % 2 === 0 ? a : b;
    const t = `e${tag++}`;
    const started = performance.now();
    const answer = await c.command(t, `LOGIN ${user} ${password()}`);
    const ms = performance.now() - started;
    expect(taggedLine(answer, t)).toMatch(/NO \[AUTHENTICATIONFAILED\] Authentication failed\.$/);
    // The first round warms up (the dummy hash is computed on first use): not measured.
    if (i >= 2) (i % 2 === 0 ? out.a : out.b).push(ms);
    onConnection += 1;
  }
  c?.destroy();
  return out;
}

function withinFactor(x: number, y: number, factor: number): boolean {
  return Math.max(x, y) / Math.min(x, y) <= factor;
}

let counter = 0;
const letters = () => {
  counter += 1;
  return counter.toString(26).replace(/[0-9]/g, (d) => 'qrstuvwxyz'[Number(d)]!).padStart(12, 'q');
};

describe('username enumeration by timing', () => {
  it('an unknown account and an existing one (2FA on, wrong password) are refused in the same time', async () => {
    // Catches: skipping the dummy argon2 run for unknown accounts (or for the 2FA refusal).
    const { a, b } = await sampleLatencies(16, ['nosuchuser', () => `wrong-${letters()}`], ['alice', () => `wrong-${letters()}`]);
    const [unknown, existing] = [median(a), median(b)];
    expect(withinFactor(unknown, existing, 1.5), `unknown ${unknown.toFixed(1)} ms vs existing ${existing.toFixed(1)} ms`).toBe(true);
  });

  it('a wrong app password: unknown account vs existing account with a matching selector', async () => {
    // The existing account's attempt reaches a real stored hash (same first four letters), the
    // unknown one a dummy hash: one argon2 run each. Catches a fast path on either side.
    const selector = aliceApp.replace(/ /g, '').slice(0, 4);
    const { a, b } = await sampleLatencies(16, ['nosuchuser', () => `${selector}${letters()}`], ['alice', () => `${selector}${letters()}`]);
    const [unknown, existing] = [median(a), median(b)];
    expect(withinFactor(unknown, existing, 1.5), `unknown ${unknown.toFixed(1)} ms vs existing ${existing.toFixed(1)} ms`).toBe(true);
  });

  it('an unknown account and an existing account without 2FA (wrong main password, checked upstream) are refused in the same time', async () => {
    // The existing account's wrong main password is passed through and refused by Dovecot (hundreds
    // of ms); the unknown one is refused locally by one argon2 run. Catches: answering local
    // refusals without waiting as long as an upstream refusal takes (src/auth/refusal-timing.ts).
    const { a, b } = await sampleLatencies(10, ['nosuchuser', () => `wrong-${letters()}`], ['dave', () => `wrong-${letters()}`]);
    const [unknown, existing] = [median(a), median(b)];
    expect(withinFactor(unknown, existing, 1.5), `unknown ${unknown.toFixed(1)} ms vs existing ${existing.toFixed(1)} ms`).toBe(true);
  });
});

describe('TOTP replay', () => {
  const codeAt = (secret: string, ms: number) => generateSync({ secret, epoch: Math.floor(ms / 1000) });

  it('the store refuses a code it accepted once, also through a second connection', () => {
    // Catches: a verifier that does not record the last accepted time step, or records it only in memory.
    const { secret } = gw.store.totp.enroll('dave');
    // Confirm with the previous step's code (within the ±1 step tolerance), so the current one is fresh.
    const now = Date.now();
    expect(gw.store.totp.confirm('dave', codeAt(secret, now - 30_000)).account.totpState).toBe('enabled');
    const code = codeAt(secret, now);
    expect(gw.store.totp.verify('dave', code)).toBe(true);
    expect(gw.store.totp.verify('dave', code)).toBe(false);
    const other = SqliteRepositories.open({
      path: gw.config.store.path,
      keyFile: gw.config.store.key_file,
      argon2: { memoryKib: 1024, iterations: 1, parallelism: 1 },
      maxAppPasswords: 25,
    });
    try {
      expect(other.totp.verify('dave', code)).toBe(false);
      // An older code is refused too once a later one was used.
      expect(other.totp.verify('dave', codeAt(secret, now - 30_000))).toBe(false);
    } finally {
      other.close();
    }
  });

  it('a code used once, by any process, cannot issue an app password again', async () => {
    // Catches: a replay window across processes (the CLI and another process each accepting the same
    // code once), and a self-service issuance that checks the code without consuming it.
    const cli = cliConfigFor(gw);
    const enrolled = await runCli(['--config', cli, 'totp', 'enroll', 'erin', '--json']);
    expect(enrolled.code).toBe(0);
    const { secret } = JSON.parse(enrolled.stdout) as { secret: string };
    const now = Date.now();
    const code = codeAt(secret, now);
    expect((await runCli(['--config', cli, 'totp', 'confirm', 'erin', code])).code).toBe(0);
    expect(gw.store.totp.status('erin')).toBe('enabled');
    const issue = (name: string, totpCode: string) =>
      runCli(['--config', cli, 'app-password', 'create', 'erin', '--name', name, '--totp-code', totpCode, '--json']);
    // The code that confirmed enrolment is spent.
    const replayed = await issue('phone', code);
    expect(replayed.code).toBe(1);
    expect(replayed.stderr).toMatch(/already used/);
    // The next step's code (within the ±1 tolerance) works once, then is spent too.
    const next = codeAt(secret, now + 30_000);
    const issued = await issue('phone', next);
    expect(issued.code, issued.stderr).toBe(0);
    expect(gw.store.appPasswords.list('erin').map((p) => p.name)).toEqual(['phone']);
    const again = await issue('tablet', next);
    expect(again.code).toBe(1);
    expect(gw.store.totp.verify('erin', next)).toBe(false);
    expect(gw.store.appPasswords.list('erin').map((p) => p.name)).toEqual(['phone']);
    // A wrong code issues nothing either (one that no step of the tolerance window produces).
    const valid = new Set([-30_000, 0, 30_000, 60_000].map((d) => codeAt(secret, Date.now() + d)));
    let wrong = 0;
    while (valid.has(String(wrong).padStart(6, '0'))) wrong += 1;
    expect((await issue('tablet', String(wrong).padStart(6, '0'))).code).toBe(1);
    expect(gw.store.appPasswords.list('erin')).toHaveLength(1);
  });

  it('wrong --totp-code guesses count as failed logins of the account, are audited, and stop at its block', async () => {
    // Catches: unlimited, unrecorded guessing of the six digits through the self-service path
    // (the web page will call the same code path).
    gw.store.accounts.add('frank');
    const secret = enableTotp(gw.store, 'frank', Date.now() - 30_000);
    const cli = cliConfigFor(gw, '[limits]\naccount_block_after = 3\nfailure_delay_base_ms = 0\nfailure_delay_max_ms = 0\n');
    const issue = (name: string, code: string) => runCli(['--config', cli, 'app-password', 'create', 'frank', '--name', name, '--totp-code', code]);
    const valid = new Set([-60_000, -30_000, 0, 30_000, 60_000].map((d) => codeAt(secret, Date.now() + d)));
    const wrong = ['000000', '111111', '222222', '333333', '444444', '555555'].filter((c) => !valid.has(c)).slice(0, 3);
    for (const code of wrong) {
      const result = await issue('phone', code);
      expect(result.code).toBe(1);
      expect(result.stderr).toMatch(/code is wrong/);
    }
    const window = gw.config.limits.account_failure_window_seconds * 1000;
    const state = gw.store.penalties.get('account', 'frank', window);
    expect(state.failures).toBe(3);
    expect(state.blockedUntil).toBeGreaterThan(Date.now());
    expect(gw.store.audit.list({ username: 'frank' }).filter((r) => r.event === 'totp-failed')).toHaveLength(3);
    // Blocked: even the right code is refused now, and is not spent.
    const right = codeAt(secret, Date.now());
    const blocked = await issue('phone', right);
    expect(blocked.code).toBe(1);
    expect(blocked.stderr).toMatch(/temporarily blocked/);
    expect(gw.store.appPasswords.list('frank')).toEqual([]);
    gw.store.penalties.clear('frank');
    expect((await issue('phone', right)).code).toBe(0);
  });

  it('a create refused for another reason (a duplicate name) does not spend the code', async () => {
    // Catches: the code consumed before the create's own checks, so a typo in the name burns it.
    gw.store.accounts.add('gina');
    const secret = enableTotp(gw.store, 'gina', Date.now() - 30_000);
    await gw.store.appPasswords.create('gina', { name: 'phone' });
    const cli = cliConfigFor(gw);
    const code = codeAt(secret, Date.now());
    const duplicate = await runCli(['--config', cli, 'app-password', 'create', 'gina', '--name', 'phone', '--totp-code', code]);
    expect(duplicate.code).toBe(1);
    expect(duplicate.stderr).toMatch(/already has an app password named "phone"/);
    const other = await runCli(['--config', cli, 'app-password', 'create', 'gina', '--name', 'tablet', '--totp-code', code]);
    expect(other.code, other.stderr).toBe(0);
    expect(gw.store.appPasswords.list('gina').map((p) => p.name)).toEqual(['phone', 'tablet']);
  });
});
