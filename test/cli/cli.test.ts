/**
 * The admin CLI, run as the built binary against a temporary database:
 * output, exit codes (0 ok, 1 refused, 2 usage) and --json shapes.
 */
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { generateSync } from 'otplib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import { SqliteRepositories, storeOptionsFromConfig } from '../../src/store/sqlite/repositories.js';
import { BIN, ROOT, runCli, writeCliConfig } from '../support/cli.js';
import { outsideWrite } from '../support/outside.js';
import { makeTempDir, removeTempDir } from '../support/tmp.js';

let dir: string;
let config: string;
let dbFile: string;

beforeEach(async () => {
  dir = await makeTempDir('cli');
  config = writeCliConfig(dir);
  dbFile = path.join(dir, 'data', 'mailgate.db');
});
afterEach(() => removeTempDir(dir));

const cli = (...args: string[]) => runCli(['--config', config, ...args]);

/** Everything in the database except the audit trail of reads, as one comparable string. */
function snapshot(): string {
  const db = new Database(dbFile, { readonly: true });
  try {
    return JSON.stringify(['accounts', 'app_passwords', 'audit'].map((t) => db.prepare(`SELECT * FROM ${t} ORDER BY id`).all()));
  } finally {
    db.close();
  }
}

/** The audit trail as the CLI left it: [event, username, app password id] per row. */
function auditTrail(): Array<[string, string | null, number | null]> {
  const db = new Database(dbFile, { readonly: true });
  try {
    const rows = db.prepare('SELECT event, username, app_password_id FROM audit ORDER BY id').all() as Array<{
      event: string;
      username: string | null;
      app_password_id: number | null;
    }>;
    return rows.map((r) => [r.event, r.username, r.app_password_id]);
  } finally {
    db.close();
  }
}

/** How many failure counters and blocks the database holds. */
function penaltyRows(): number {
  const db = new Database(dbFile, { readonly: true });
  try {
    return (db.prepare('SELECT COUNT(*) AS n FROM penalties').get() as { n: number }).n;
  } finally {
    db.close();
  }
}

/** Runs `fn` against the CLI's database through the store API, in this process, as the gateway would. */
async function withGatewayStore<T>(fn: (store: SqliteRepositories) => T | Promise<T>): Promise<T> {
  const store = SqliteRepositories.open(storeOptionsFromConfig(loadConfig(config, {}).config));
  try {
    return await fn(store);
  } finally {
    store.close();
  }
}

async function expectRefused(args: string[], code: 1 | 2, message: RegExp) {
  const before = snapshot();
  const result = await cli(...args);
  expect(result.code, result.stderr).toBe(code);
  expect(result.stderr).toMatch(message);
  expect(result.stderr.trim().split('\n')).toHaveLength(1);
  expect(result.stdout).toBe('');
  expect(snapshot()).toBe(before);
}

describe('mailgate CLI', () => {
  it('prints its version and help', async () => {
    expect((await cli('--version')).stdout.trim()).toMatch(/^\d+\.\d+\.\d+$/);
    const help = await cli('--help');
    expect(help.code).toBe(0);
    for (const cmd of ['account', 'totp', 'app-password', 'blocks', 'store', 'web']) expect(help.stdout).toContain(cmd);
  });

  it('adds, lists, shows and removes accounts', async () => {
    const added = await cli('account', 'add', '  Alice@Example.ORG ', '--json');
    expect(added.code, added.stderr).toBe(0);
    expect(JSON.parse(added.stdout)).toMatchObject({ username: 'alice@example.org', totp: 'none', appPasswords: { active: 0, total: 0 } });
    expect(JSON.parse(added.stdout).createdAt).toMatch(/^\d{4}-\d\d-\d\dT/);
    expect((await cli('account', 'add', 'bob')).stdout).toBe('added account bob\n');

    const list = await cli('account', 'list', '--json');
    expect(JSON.parse(list.stdout).map((a: { username: string }) => a.username)).toEqual(['alice@example.org', 'bob']);
    const table = await cli('account', 'list');
    expect(table.stdout).toMatch(/^USER\s+CREATED\s+TOTP/);
    expect(table.stdout).toContain('alice@example.org');

    const show = await cli('account', 'show', 'ALICE@example.org', '--json');
    expect(JSON.parse(show.stdout)).toMatchObject({ username: 'alice@example.org', totp: 'none' });

    await expectRefused(['account', 'remove', 'bob'], 2, /--yes/);
    const removed = await cli('account', 'remove', 'bob', '--yes');
    expect(removed.code).toBe(0);
    expect(JSON.parse((await cli('account', 'list', '--json')).stdout)).toHaveLength(1);
  });

  it('creates, lists and revokes app passwords', async () => {
    await cli('account', 'add', 'alice');
    const created = await cli('app-password', 'create', 'alice', '--name', 'Thunderbird', '--json');
    expect(created.code, created.stderr).toBe(0);
    const json = JSON.parse(created.stdout);
    expect(Object.keys(json).sort()).toEqual(['expiresAt', 'id', 'name', 'password', 'scopes']);
    expect(json).toMatchObject({ name: 'Thunderbird', scopes: ['imap', 'pop3'], expiresAt: null });
    expect(json.password).toMatch(/^[a-z]{16}$/);

    const human = await cli('app-password', 'create', 'alice', '--name', 'Phone', '--scope', 'pop3', '--expires', '90d');
    expect(human.code).toBe(0);
    expect(human.stdout).toMatch(/^\s+[a-z]{4} [a-z]{4} [a-z]{4} [a-z]{4}$/m);
    expect(human.stdout).toMatch(/use it as the password in your mail program/i);

    const list = await cli('app-password', 'list', 'alice', '--json');
    const rows = JSON.parse(list.stdout);
    expect(rows).toHaveLength(2);
    expect(rows[1]).toMatchObject({ name: 'Phone', scopes: ['pop3'], status: 'active', lastUsed: null, revokedAt: null });
    const days = (Date.parse(rows[1].expiresAt) - Date.parse(rows[1].createdAt)) / 86_400_000;
    expect(days).toBeCloseTo(90, 1);
    expect(list.stdout).not.toContain(json.password);

    const table = await cli('app-password', 'list', 'alice');
    expect(table.stdout).toMatch(/^ID\s+NAME\s+SCOPES\s+STATUS\s+CREATED\s+EXPIRES\s+LAST USED/);
    expect(table.stdout).toContain('Thunderbird');

    const revoked = await cli('app-password', 'revoke', 'alice', String(json.id));
    expect(revoked.code).toBe(0);
    expect(revoked.stdout).toContain('revoked app password');
    await expectRefused(['app-password', 'revoke', 'alice', String(json.id)], 1, /already revoked/);

    const all = await cli('app-password', 'revoke', 'alice', '--all');
    expect(all.stdout).toBe('revoked 1 app password of alice\n');
    const after = JSON.parse((await cli('app-password', 'list', 'alice', '--json')).stdout);
    expect(after.map((r: { status: string }) => r.status)).toEqual(['revoked', 'revoked']);

    // Each change is in the audit trail, the single revoke naming the app password it revoked.
    expect(auditTrail()).toEqual([
      ['account-added', 'alice', null],
      ['created', 'alice', json.id],
      ['created', 'alice', rows[1].id],
      ['revoked', 'alice', json.id],
      ['revoked-all', 'alice', null],
    ]);
  });

  it('lists when, from which address and over which protocol an app password was last used', async () => {
    await cli('account', 'add', 'alice');
    const created = JSON.parse((await cli('app-password', 'create', 'alice', '--name', 'Phone', '--json')).stdout);
    const before = Date.now();
    // A login through the gateway: the same verification call, which records the use.
    const verdict = await withGatewayStore((store) =>
      store.verifier.verify('alice', created.password, { protocol: 'pop3', clientIp: '2001:db8::7', client: 'K-9 Mail/6.8' }),
    );
    expect(verdict.ok).toBe(true);
    const after = Date.now();

    const [row] = JSON.parse((await cli('app-password', 'list', 'alice', '--json')).stdout);
    expect(row.lastUsed).toEqual({ at: expect.any(String), ip: '2001:db8::7', protocol: 'pop3', client: 'K-9 Mail/6.8' });
    const at = Date.parse(row.lastUsed.at);
    expect(row.lastUsed.at).toBe(new Date(at).toISOString());
    expect(at).toBeGreaterThanOrEqual(before);
    expect(at).toBeLessThanOrEqual(after);

    const table = (await cli('app-password', 'list', 'alice')).stdout.split('\n');
    const minute = `${new Date(at).toISOString().slice(0, 16).replace('T', ' ')}Z`;
    expect(table[1]).toMatch(new RegExp(`^${created.id}\\s+Phone\\s.*\\s${minute} from 2001:db8::7 via pop3$`));
    expect(table.join('\n')).not.toContain(created.password);
  });

  it('enrols, confirms, reports and disables TOTP', async () => {
    await cli('account', 'add', 'alice');
    const enrol = await cli('totp', 'enroll', 'alice');
    expect(enrol.code).toBe(0);
    const secret = /secret: ([A-Z2-7]+)/.exec(enrol.stdout)![1]!;
    expect(enrol.stdout).toMatch(/uri:\s+otpauth:\/\/totp\/mailgate:alice\?/);
    expect(enrol.stdout).toMatch(/[▀▄█]{10}/); // the QR code, drawn with block characters
    expect(JSON.parse((await cli('totp', 'status', 'alice', '--json')).stdout)).toEqual({ username: 'alice', totp: 'pending' });

    const good = generateSync({ secret });
    const wrong = String((Number(good) + 1) % 1_000_000).padStart(6, '0');
    await expectRefused(['totp', 'confirm', 'alice', wrong], 1, /code is not valid/);

    const confirmed = await cli('totp', 'confirm', 'alice', good);
    expect(confirmed.code, confirmed.stderr).toBe(0);
    // The recovery codes, shown this once.
    expect(confirmed.stdout.match(/^ {4}[a-z2-7]{4}-[a-z2-7]{4}-[a-z2-7]{4}-[a-z2-7]{4}$/gm)).toHaveLength(10);
    expect(confirmed.stdout).toMatch(/shown only this once/);
    expect((await cli('totp', 'status', 'alice')).stdout).toBe('alice: enabled\n');
    await expectRefused(['totp', 'enroll', 'alice'], 1, /already on/);

    // Catches: `totp disable` letting the account password back into mail programs without a confirmation.
    await expectRefused(['totp', 'disable', 'alice'], 2, /^mailgate: .*mail programs may log in with the account password again; add --yes to confirm\n$/);
    expect((await cli('totp', 'status', 'alice')).stdout).toBe('alice: enabled\n');
    const disabled = await cli('totp', 'disable', 'alice', '--yes');
    expect(disabled.code).toBe(0);
    expect(disabled.stdout).toBe('two-step verification is off for alice; its recovery codes are deleted and its self-service page sessions ended\n');
    expect((await cli('totp', 'status', 'alice')).stdout).toBe('alice: none\n');
    expect(auditTrail().map(([event]) => event)).toEqual(['account-added', 'totp-enrolled', 'totp-enabled', 'recovery-codes-created', 'totp-disabled']);
    expect(auditTrail().at(-1)).toEqual(['totp-disabled', 'alice', null]);
    await expectRefused(['totp', 'disable', 'alice', '--yes'], 1, /not on/);

    const json = JSON.parse((await cli('totp', 'enroll', 'alice', '--json')).stdout);
    expect(json.secret).toMatch(/^[A-Z2-7]+$/);
    expect(json.uri).toContain(json.secret);
  });

  it('makes recovery codes (at confirm, and anew for a user who lost them), shown once; refused without two-step verification', async () => {
    await cli('account', 'add', 'alice');
    const { secret } = JSON.parse((await cli('totp', 'enroll', 'alice', '--json')).stdout) as { secret: string };
    // Catches: codes for an account that has no second factor to recover.
    await expectRefused(['totp', 'recovery-codes', 'alice'], 1, /^mailgate: two-step verification is not on for alice; recovery codes are only for accounts with it\n$/);
    await expectRefused(['totp', 'recovery-codes', 'nobody'], 1, /no account nobody/);

    const confirmed = await cli('totp', 'confirm', 'alice', generateSync({ secret }), '--json');
    expect(confirmed.code, confirmed.stderr).toBe(0);
    const first = JSON.parse(confirmed.stdout) as { username: string; totp: string; recoveryCodes: string[] };
    expect(Object.keys(first).sort()).toEqual(['recoveryCodes', 'totp', 'username']);
    expect(first).toMatchObject({ username: 'alice', totp: 'enabled' });
    expect(first.recoveryCodes).toHaveLength(10);
    for (const code of first.recoveryCodes) expect(code).toMatch(/^[a-z2-7]{4}-[a-z2-7]{4}-[a-z2-7]{4}-[a-z2-7]{4}$/);
    expect(await withGatewayStore((store) => store.recoveryCodes.consume('alice', first.recoveryCodes[0]!))).toBe(true);

    const again = await cli('totp', 'recovery-codes', 'ALICE');
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toMatch(/^New recovery codes for alice; the earlier ones no longer work:\n/);
    const shown = again.stdout.match(/^ {4}([a-z2-7]{4}-){3}[a-z2-7]{4}$/gm)!.map((line) => line.trim());
    expect(shown).toHaveLength(10);
    const json = JSON.parse((await cli('totp', 'recovery-codes', 'alice', '--json')).stdout) as { username: string; recoveryCodes: string[] };
    expect(json.username).toBe('alice');
    expect(json.recoveryCodes).toHaveLength(10);
    await withGatewayStore((store) => {
      // Only the newest codes work.
      for (const code of [...first.recoveryCodes, ...shown]) expect(store.recoveryCodes.consume('alice', code)).toBe(false);
      expect(store.recoveryCodes.consume('alice', json.recoveryCodes[3]!.toUpperCase().replace(/-/g, ' '))).toBe(true);
      expect(store.recoveryCodes.remaining('alice')).toBe(9);
    });
    expect(auditTrail().map(([event]) => event).filter((e) => e.startsWith('recovery'))).toEqual([
      'recovery-codes-created',
      'recovery-code-used',
      'recovery-codes-created',
      'recovery-codes-created',
      'recovery-code-used',
    ]);
  });

  it("lists an account's page sessions without ids, and ends them all with --revoke-all", async () => {
    await cli('account', 'add', 'alice');
    await cli('account', 'add', 'bob');
    expect((await cli('web', 'sessions', 'alice')).stdout).toBe('no page sessions for alice\n');
    expect(JSON.parse((await cli('web', 'sessions', 'alice', '--json')).stdout)).toEqual([]);
    // Within the page's timeouts (8 h from creation): expired sessions are not listed.
    const created = Math.floor((Date.now() - 2 * 3_600_000) / 60_000) * 60_000;
    const minute = (ms: number) => new Date(ms).toISOString().slice(0, 16).replace('T', ' ').replace(/[.*+?^${}()|[\]\\]/g, '\\$&') + 'Z';
    const hashes = ['a', 'b', 'c'].map((x) => x.repeat(64));
    await withGatewayStore((store) => {
      const [alice, bob] = [store.accounts.get('alice'), store.accounts.get('bob')];
      const base = { createdAt: created, lastSeenAt: Date.now(), passwordAt: null, ip: '192.0.2.1', data: '{}' };
      // A user agent is whatever the browser sent: an escape sequence must not reach the terminal.
      store.webSessions.save({ ...base, idHash: hashes[0]!, accountId: alice.id, userAgent: 'Mozilla/5.0 \u001b[2J evil' });
      store.webSessions.save({ ...base, idHash: hashes[1]!, accountId: alice.id, createdAt: created + 60_000, passwordAt: created + 60_000, ip: '2001:db8::5', userAgent: null });
      store.webSessions.save({ ...base, idHash: hashes[2]!, accountId: bob.id, userAgent: 'bob' });
    });
    const table = await cli('web', 'sessions', 'alice');
    expect(table.code, table.stderr).toBe(0);
    const lines = table.stdout.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^CREATED\s+LAST SEEN\s+PASSWORD CONFIRMED\s+ADDRESS\s+USER AGENT$/);
    expect(lines[1]).toMatch(new RegExp(`^${minute(created + 60_000)}\\s+\\S+ \\S+\\s+${minute(created + 60_000)}\\s+2001:db8::5\\s+-$`));
    expect(lines[2]).toMatch(new RegExp(`^${minute(created)}\\s+\\S+ \\S+\\s+-\\s+192\\.0\\.2\\.1\\s+Mozilla/5\\.0 \\?\\[2J evil$`));
    expect(lines).toHaveLength(3);
    expect(table.stdout).not.toContain('\u001b');
    const json = JSON.parse((await cli('web', 'sessions', 'alice', '--json')).stdout) as Array<Record<string, unknown>>;
    expect(json).toHaveLength(2);
    expect(Object.keys(json[0]!).sort()).toEqual(['createdAt', 'ip', 'lastSeenAt', 'passwordAt', 'userAgent']);
    expect(json[1]).toMatchObject({ createdAt: new Date(created).toISOString(), passwordAt: null, ip: '192.0.2.1', userAgent: 'Mozilla/5.0 \u001b[2J evil' });
    for (const hash of hashes) expect(JSON.stringify(json) + table.stdout).not.toContain(hash.slice(0, 16));

    const revoked = await cli('web', 'sessions', 'alice', '--revoke-all');
    expect(revoked.code, revoked.stderr).toBe(0);
    expect(revoked.stdout).toBe('ended 2 page sessions of alice\n');
    expect((await cli('web', 'sessions', 'alice')).stdout).toBe('no page sessions for alice\n');
    expect(JSON.parse((await cli('web', 'sessions', 'alice', '--revoke-all', '--json')).stdout)).toEqual({ username: 'alice', ended: 0 });
    expect(JSON.parse((await cli('web', 'sessions', 'bob', '--json')).stdout)).toHaveLength(1);
    expect(auditTrail().filter(([event]) => event === 'web-sessions-ended')).toEqual([['web-sessions-ended', 'alice', null]]);
    await expectRefused(['web', 'sessions', 'nobody'], 1, /^mailgate: no account nobody\n$/);
    await expectRefused(['web', 'sessions'], 2, /missing required argument/);
  });

  it('refuses bad input with one line and no change', async () => {
    await cli('account', 'add', 'alice');
    await cli('app-password', 'create', 'alice', '--name', 'a');
    await expectRefused(['app-password', 'create', 'nobody', '--name', 'x'], 1, /no account nobody/);
    await expectRefused(['app-password', 'create', 'alice', '--name', 'a'], 1, /already has an app password named "a"/);
    await expectRefused(['app-password', 'create', 'alice', '--name', 'x', '--scope', 'smtp'], 2, /unknown scope "smtp"/);
    await expectRefused(['app-password', 'create', 'alice', '--name', 'x', '--expires', '3 weeks'], 2, /bad duration/);
    await expectRefused(['app-password', 'create', 'alice', '--name', 'x', '--expires', '0d'], 2, /bad duration/);
    await expectRefused(['account', 'add', 'alice'], 1, /already exists/);
    await expectRefused(['account', 'add', 'bad\u0001name'], 2, /control character/);
    await expectRefused(['app-password', 'revoke', 'alice', '999'], 1, /has no app password 999/);
    await expectRefused(['totp', 'confirm', 'alice', '123456'], 1, /no pending enrolment/);
    await expectRefused(['app-password', 'create', 'alice'], 2, /--name/);
    await expectRefused(['nonsense'], 2, /unknown command/);

    await cli('app-password', 'create', 'alice', '--name', 'b');
    await cli('app-password', 'create', 'alice', '--name', 'c');
    await expectRefused(['app-password', 'create', 'alice', '--name', 'd'], 1, /already has 3 active app passwords/);
  });

  it('refuses usernames no mail server would accept, in one line with exit 2', async () => {
    // Catches: `account add 'bad user'` creating an account that can never log in.
    await cli('account', 'add', 'alice');
    await expectRefused(['account', 'add', 'bad user'], 2, /^mailgate: the username "bad user" contains white space\n$/);
    await expectRefused(['account', 'add', ' non\u00a0breaking '], 2, /contains white space/);
    await expectRefused(['account', 'add', 'alice*gwmaster'], 2, /^mailgate: the username "alice\*gwmaster" contains "\*", the master user separator \(upstream\.login\.separator\)\n$/);
    await expectRefused(['account', 'add', `${'a'.repeat(250)}@b.org`], 2, /^mailgate: the username is longer than 255 bytes\n$/);
    await expectRefused(['account', 'add', 'bad\u0001name'], 2, /control character/);
    // Stray spaces at the ends are trimmed, as they are at login; 255 bytes is still a name.
    expect((await cli('account', 'add', '  bob@example.org  ')).stdout).toBe('added account bob@example.org\n');
    expect((await cli('account', 'add', `${'a'.repeat(249)}@b.org`)).code).toBe(0);
  });

  it('refuses the master user separator the configuration names, not a fixed one', async () => {
    // Catches: a check for "*" only, when the upstream splits login names at upstream.login.separator.
    config = writeCliConfig(dir, '[upstream.login]\nseparator = "%"\n');
    await cli('account', 'add', 'alice');
    await expectRefused(['account', 'add', 'carol%gwmaster'], 2, /contains "%", the master user separator/);
    expect((await cli('account', 'add', 'dave*x')).code).toBe(0);
  });

  it('ends quietly when the reader closes the pipe early: `app-password list USER | head -n 1`', async () => {
    // Catches: "Error: write EPIPE" with a stack trace (and exit 1) when head stops reading.
    await cli('account', 'add', 'alice');
    await cli('app-password', 'create', 'alice', '--name', 'first');
    // Enough rows that the table (about 250 KB) cannot fit in the pipe: the CLI is
    // still writing when head exits. Copies of one row, so no argon2 per row.
    const db = new Database(dbFile);
    try {
      db.exec(`WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
        INSERT INTO app_passwords (account_id, name, selector, hash, scopes, created_at, revoked_at)
        SELECT account_id, printf('device %04d with a name long enough to make a wide table row', i), selector, hash, scopes, created_at, created_at
        FROM app_passwords, n`);
    } finally {
      db.close();
    }
    // A real shell pipe, as an operator types it; the CLI's exit status goes to stderr.
    const { stdout, stderr } = await new Promise<{ stdout: string; stderr: string }>((resolve, reject) => {
      const child = spawn('sh', ['-c', '{ "$@"; echo "exit=$?" >&2; } | head -n 1', 'sh', process.execPath, BIN, '--config', config, 'app-password', 'list', 'alice'], {
        cwd: ROOT,
        env: { ...process.env, MAILGATE_CONFIG: '' },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let out = '';
      let err = '';
      child.stdout.on('data', (d: Buffer) => (out += d.toString()));
      child.stderr.on('data', (d: Buffer) => (err += d.toString()));
      child.on('error', reject);
      child.on('close', () => resolve({ stdout: out, stderr: err }));
    });
    expect(stdout).toMatch(/^ID\s+NAME\s+SCOPES\s+STATUS\s+CREATED\s+EXPIRES\s+LAST USED\n$/);
    expect(stderr).toBe('exit=0\n');
  });

  it('`blocks clear` lifts one target, and everything only with --all --yes', async () => {
    const rules = { windowMs: 600_000, blockAfter: 1, blockMs: 900_000 };
    await withGatewayStore((store) => {
      store.penalties.recordFailure('ip', '198.51.100.9', rules);
      store.penalties.recordFailure('ip', '2001:db8:1:2::/64', rules);
      store.penalties.recordFailure('account', 'carol', rules);
      // A failure below the threshold: a counter, no block.
      store.penalties.recordFailure('ip', '203.0.113.5', { ...rules, blockAfter: 10 });
    });
    const listed = JSON.parse((await cli('blocks', 'list', '--json')).stdout) as Array<{ kind: string; key: string }>;
    expect(listed.map((b) => `${b.kind}:${b.key}`).sort()).toEqual(['account:carol', 'ip:198.51.100.9', 'ip:2001:db8:1:2::/64']);

    const one = await cli('blocks', 'clear', '198.51.100.9');
    expect(one.stdout).toBe('cleared 1 record for 198.51.100.9\n');
    expect(penaltyRows()).toBe(3);

    // Catches: a forgotten argument clearing every block (and every guesser's failure count) without a word.
    const usage = [
      [['blocks', 'clear'], /^mailgate: give the IP address or user to clear, or --all --yes .*\n$/],
      [['blocks', 'clear', '--yes'], /^mailgate: give the IP address or user to clear, or --all --yes .*\n$/],
      [['blocks', 'clear', '--all'], /^mailgate: clearing every block .*add --yes to confirm\n$/],
      [['blocks', 'clear', 'carol', '--all', '--yes'], /^mailgate: give an IP address or user, or --all, not both\n$/],
    ] as const;
    for (const [args, message] of usage) {
      const result = await cli(...args);
      expect(result.code, args.join(' ')).toBe(2);
      expect(result.stderr).toMatch(message);
      expect(result.stdout).toBe('');
      expect(penaltyRows()).toBe(3);
    }

    const everything = await cli('blocks', 'clear', '--all', '--yes');
    expect(everything.code, everything.stderr).toBe(0);
    expect(everything.stdout).toBe('cleared 3 records\n');
    expect((await cli('blocks', 'list')).stdout).toBe('no blocks in force\n');
    expect((await cli('blocks', 'list', '--all')).stdout).toBe('no failed logins on record\n');
    expect((await cli('blocks', 'clear', '--all', '--yes')).stdout).toBe('cleared 0 records\n');
  });

  it('refuses with one line when the database is locked', async () => {
    await cli('account', 'add', 'alice');
    const holder = new Database(dbFile);
    holder.exec('BEGIN EXCLUSIVE');
    try {
      const result = await cli('account', 'add', 'bob');
      expect(result.code).toBe(1);
      expect(result.stderr).toMatch(/locked|busy/i);
      expect(result.stderr.trim().split('\n')).toHaveLength(1);
    } finally {
      holder.exec('ROLLBACK');
      holder.close();
    }
    expect(JSON.parse((await cli('account', 'list', '--json')).stdout)).toHaveLength(1);
  });

  it('refuses with one line when the database is unreadable', async () => {
    await cli('account', 'add', 'alice');
    outsideWrite(dbFile, Buffer.alloc(4096, 0x42));
    const result = await cli('account', 'list');
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/^mailgate: .* exists but is not an SQLite database \(damaged\); restore it, or remove it to start with a new store\n$/);
  });

  it('names the file and key of a bad configuration, in one line, with a non-zero exit', async () => {
    const bad = path.join(dir, 'bad.toml');
    writeFileSync(bad, '[auth]\nargon2_iterations = "two"\n');
    const result = await runCli(['account', 'list', '--config', bad]);
    expect(result.code).not.toBe(0);
    expect(result.stderr).toMatch(new RegExp(`^mailgate: ${bad.replace(/[.]/g, '\\.')}: auth\\.argon2_iterations: .+\\n$`));
  });

  it('takes the configuration from MAILGATE_CONFIG', async () => {
    const result = await runCli(['account', 'add', 'carol'], { env: { MAILGATE_CONFIG: config } });
    expect(result.code).toBe(0);
    expect(JSON.parse((await cli('account', 'list', '--json')).stdout)[0].username).toBe('carol');
  });
});
