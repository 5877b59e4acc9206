/**
 * What only the PostgreSQL store does (the behaviour both engines share is in
 * the other store tests, run on both): nodes hearing each other's changes
 * (LISTEN/NOTIFY, and the change token when notifications do not come),
 * migrations under the advisory lock, a newer schema refused, failing closed
 * while the server is down and recovering by itself, and `store copy` from
 * SQLite. A real PostgreSQL (test/support/postgres.ts).
 */
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { generateSync } from 'otplib';
import pg from 'pg';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ErrorCodes } from '../../src/errors.js';
import { silentLogger } from '../../src/log/logger.js';
import { copySqliteToPostgres } from '../../src/store/copy.js';
import { checkPostgres, migratePostgres } from '../../src/store/postgres/maintenance.js';
import { SCHEMA_VERSION } from '../../src/store/postgres/migrations.js';
import { safeUrl } from '../../src/store/postgres/database.js';
import { PostgresStore } from '../../src/store/postgres/postgres-store.js';
import { loadOrCreateKey } from '../../src/store/secret-box.js';
import type { PgStoreOptions } from '../../src/store/postgres/repositories.js';
import type { Store, StoreChange } from '../../src/store/store.js';
import { runCli } from '../support/cli.js';
import { databaseOf, PG_PASSWORD, type PostgresHandle } from '../support/postgres.js';
import { enableTotpVia, FAST_ARGON2, makeEngineStore, postgresServer, useEngine, type EngineStore } from '../support/store.js';
import { sleep, waitUntil } from '../support/timing.js';
import { makeTempDir, removeTempDir } from '../support/tmp.js';

useEngine('postgres');

/** migrations.ts's advisory lock key ("mailgate" in ASCII). */
const MIGRATION_LOCK_KEY = (0x6d61696c67617465n).toString();

it('never shows a password of the URL, in the authority or in the query', () => {
  // Catches: postgres://u@h/db?password=... (which libpq and node-postgres honour) printed in logs and errors.
  expect(safeUrl('postgres://mailgate:s3cret@db:5432/mg?sslmode=verify-full')).toBe('postgres://mailgate:***@db:5432/mg?sslmode=verify-full');
  expect(safeUrl('postgres://mailgate@db/mg?password=s3cret&sslpassword=k3y')).not.toMatch(/s3cret|k3y/);
});

let server: PostgresHandle;
const cleanups: Array<() => Promise<unknown>> = [];

beforeAll(async () => {
  server = await postgresServer();
});
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function store(): Promise<EngineStore> {
  const t = await makeEngineStore('postgres');
  cleanups.push(() => t.cleanup());
  return t;
}

async function tempDir(): Promise<string> {
  const dir = await makeTempDir('pgtest');
  cleanups.push(() => removeTempDir(dir));
  return dir;
}

/** Options of a store on `url`, with its own key file unless given. */
async function optionsFor(url: string, keyFile?: string): Promise<PgStoreOptions> {
  return { url, poolSize: 2, keyFile: keyFile ?? path.join(await tempDir(), 'mailgate.key'), argon2: FAST_ARGON2, maxAppPasswords: 25 };
}

async function open(options: PgStoreOptions): Promise<PostgresStore> {
  const opened = await PostgresStore.open(options, { log: silentLogger(), listen: true });
  cleanups.push(() => opened.close());
  return opened;
}

function hear(node: Store): StoreChange[] {
  const heard: StoreChange[] = [];
  node.onChange((change) => heard.push(change));
  return heard;
}

describe('nodes on one PostgreSQL store', () => {
  it("hears every change another node commits within a second: revocations, removals, 2-step changes, blocks, ended page sessions", async () => {
    // Catches: a revocation made on one node that the other nodes' watchers only see at their next poll (or never).
    const t = await store();
    const a = t.api;
    const b = await t.open();
    await a.accounts.add('alice');
    const heardByB = hear(b);
    const heardByA = hear(a);
    const within = async (expected: StoreChange) => {
      const since = Date.now();
      await waitUntil(() => heardByB.some((c) => c.kind === expected.kind && c.username === expected.username), `node B to hear ${JSON.stringify(expected)}`, 1000);
      return Date.now() - since;
    };

    const { info } = await a.appPasswords.create('alice', { name: 'phone' });
    await a.appPasswords.revoke('alice', info.id);
    expect(await within({ kind: 'app-password', username: 'alice' })).toBeLessThan(1000);
    await enableTotpVia(a, 'alice');
    await within({ kind: 'totp', username: 'alice' });
    for (let i = 0; i < 2; i++) await a.penalties.recordFailure('account', 'mallory', { windowMs: 60_000, blockAfter: 2, blockMs: 60_000 });
    await within({ kind: 'block', username: 'mallory' });
    await a.penalties.clear('mallory');
    await within({ kind: 'penalties-cleared' });
    const idHash = 'ab'.repeat(32);
    const alice = await a.accounts.get('alice');
    await a.webSessions.save({ idHash, accountId: alice.id, createdAt: Date.now(), lastSeenAt: Date.now(), passwordAt: null, ip: null, userAgent: null, data: '{}' });
    await a.webSessions.endAll('alice');
    await within({ kind: 'web-sessions', username: 'alice' });
    await a.accounts.remove('alice');
    await within({ kind: 'account' });
    // A node hears its own changes once, at once, not again through the database.
    await sleep(200);
    expect(heardByA.map((c) => c.kind)).toEqual(['app-password', 'totp', 'block', 'penalties-cleared', 'web-sessions', 'account']);
    // Nothing that changes no session is sent: a login record, an audit row.
    const count = heardByB.length;
    await a.audit.record('login-ok', { username: 'bob' });
    await sleep(300);
    expect(heardByB).toHaveLength(count);
  });

  it('failures counted on two nodes at once add up, and start one block', async () => {
    // Catches: a read-then-write counter without a row lock, where concurrent failures overwrite each other.
    const t = await store();
    const b = await t.open();
    const rules = { windowMs: 600_000, blockAfter: 20, blockMs: 600_000 };
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => (i % 2 ? b : t.api).penalties.recordFailure('account', 'mallory', rules)));
    expect(results.filter((r) => r.blockStarted)).toHaveLength(1);
    expect(await t.api.penalties.get('account', 'mallory', rules.windowMs)).toMatchObject({ failures: 20 });
    expect((await b.penalties.activeBlocks()).map((s) => s.key)).toEqual(['mallory']);
  });

  it('first logins from one address on two nodes at once give one new-address; the repeat logins after them, none', async () => {
    // Catches: a repeat login's one-statement path deciding "seen" wrongly, or first logins that do not wait for each other.
    const t = await store();
    const b = await t.open();
    await t.api.accounts.add('alice');
    const { info } = await t.api.appPasswords.create('alice', { name: 'phone' });
    const account = await t.api.accounts.get('alice');
    const addresses = Array.from({ length: 8 }, (_, i) => `192.0.2.${i + 1}`);
    const login = (node: Store, clientIp: string) => node.logins.recordSuccess({ account, appPassword: info, username: 'alice', context: { protocol: 'imap', clientIp } });
    // Ten first logins at once from each address, on both nodes; then more.
    await Promise.all(addresses.flatMap((ip) => Array.from({ length: 10 }, (_, i) => login(i % 2 ? b : t.api, ip))));
    await Promise.all(addresses.map((ip, i) => login(i % 2 ? b : t.api, ip)));
    const trail = await t.api.audit.list({ username: 'alice', limit: 1000 });
    expect(trail.filter((r) => r.event === 'new-address').map((r) => r.ip).sort()).toEqual(addresses);
    expect(trail.filter((r) => r.event === 'login-ok')).toHaveLength(88);
  });

  it("a column added under a running node (a later version's migration) does not break the login path's prepared statements", async () => {
    // Catches: a prepared `SELECT *`, which PostgreSQL refuses to run once its table has changed ("cached plan must not change result type").
    const t = await store();
    const node = t.api;
    await node.accounts.add('alice');
    const { password } = await node.appPasswords.create('alice', { name: 'phone' });
    const rules = { windowMs: 60_000, blockAfter: 100, blockMs: 60_000 };
    const loginPath = async () => {
      await node.penalties.get('ip', '192.0.2.1', rules.windowMs);
      expect(await node.accounts.find('alice')).not.toBeNull();
      const checked = await node.logins.check('alice', password, 'imap');
      if (!checked.ok) throw new Error('the app password was refused');
      const { account, appPassword } = checked;
      const cached = { accountId: account.id, accountCreatedAt: account.createdAt, appPasswordId: appPassword.id, appPasswordCreatedAt: appPassword.createdAt, totpChangedAt: account.totpChangedAt };
      expect(await node.logins.recheck(cached, 'imap')).toMatchObject({ ok: true });
      await node.logins.recordSuccess({ account, appPassword, username: 'alice', context: { protocol: 'imap', clientIp: '192.0.2.1' } });
      await node.penalties.recordFailure('ip', '192.0.2.2', rules);
    };
    await loginPath();
    await loginPath();
    for (const table of ['accounts', 'app_passwords', 'penalties', 'audit']) await t.rows(`ALTER TABLE ${table} ADD COLUMN added_later TEXT`);
    await loginPath();
  });

  it('keeps its idle connections: a login after a quiet spell does not wait for a new one', async () => {
    // Catches: pg-pool's default, which closes a connection idle for 10 s: the next login paid 7-12 ms for a new one.
    const t = await store();
    await t.api.accounts.find('alice');
    const backends = async () =>
      (await t.rows<{ pid: number }>("SELECT pid FROM pg_stat_activity WHERE datname = ? AND application_name = 'mailgate' ORDER BY pid", [databaseOf(t.postgres!.url)])).map((r) => r.pid);
    const before = await backends();
    // The LISTEN connection, and at least one pooled connection.
    expect(before.length).toBeGreaterThanOrEqual(2);
    await sleep(11_000);
    expect(await backends()).toEqual(before);
  }, 20_000);

  it('a change that rolls back is not heard by anyone', async () => {
    const t = await store();
    const b = await t.open();
    const early = hear(b);
    await t.api.accounts.add('alice');
    await waitUntil(() => early.length > 0, 'node B to hear the new account', 1000);
    const heard = hear(t.api);
    const heardByB = hear(b);
    const restore = await t.failAuditOf('revoked-all');
    await expect(t.api.appPasswords.revokeAll('alice')).rejects.toThrow(/audit refused/);
    await restore();
    await sleep(300);
    expect(heard).toEqual([]);
    expect(heardByB).toEqual([]);
  });

  it('with its LISTEN connection ended, a node still sees other nodes\' changes through the change token, and listens again by itself', async () => {
    // Catches: a watcher that relies on notifications alone, which a dropped connection silences for good.
    const t = await store();
    const a = t.api;
    const b = (await t.open()) as PostgresStore;
    await a.accounts.add('alice');
    const pid = b.listenerPid();
    expect(pid).not.toBeNull();
    const heardByB = hear(b);
    const before = await b.foreignChangeToken();
    await server.admin(databaseOf(t.postgres!.url), 'SELECT pg_terminate_backend($1)', [pid]);
    // While it is down, the token moves for another node's change, and never for B's own.
    await waitUntil(() => b.listenerPid() !== pid, 'the ended connection to be noticed');
    const { info } = await a.appPasswords.create('alice', { name: 'phone' });
    await a.appPasswords.revoke('alice', info.id);
    const moved = await b.foreignChangeToken();
    expect(moved).not.toBe(before);
    await b.appPasswords.revokeAll('alice');
    expect(await b.foreignChangeToken()).toBe(moved);
    // A killed listening connection is not an outage: logins go on.
    await b.writable();
    // It listens again (a quarter second later), and hears the next change at once.
    await waitUntil(() => b.listenerPid() !== null && b.listenerPid() !== pid, 'node B to listen again', 5000);
    heardByB.length = 0;
    await a.accounts.remove('alice');
    await waitUntil(() => heardByB.some((c) => c.kind === 'account'), 'node B to hear the removal', 1000);
  });

  it('a node and the CLI (another process) count as other nodes: the token moves for each, not for the node itself', async () => {
    const t = await store();
    const before = await t.api.foreignChangeToken();
    await t.api.accounts.add('alice');
    expect(await t.api.foreignChangeToken()).toBe(before);
    const dir = await tempDir();
    const config = path.join(dir, 'mailgate.toml');
    writeFileSync(config, `[store]\nbackend = "postgres"\nurl = ${JSON.stringify(t.postgres!.url)}\nkey_file = ${JSON.stringify(t.keyFile)}\n`);
    const heard = hear(t.api);
    const result = await runCli(['--config', config, 'account', 'remove', 'alice', '--yes']);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    expect(await t.api.foreignChangeToken()).not.toBe(before);
    await waitUntil(() => heard.some((c) => c.kind === 'account'), 'the CLI\'s change to be heard', 1000);
  });

  it("the token still moves when housekeeping folds a stale node's count in the same poll as a new change", async () => {
    // Catches: a token of (sum, count of rows) that a pruned row and a new row of the same count leave
    // unchanged, so a node whose LISTEN is down never checks its sessions again.
    const t = await store();
    const a = t.api;
    const b = (await t.open()) as PostgresStore;
    const db = databaseOf(t.postgres!.url);
    // Yesterday's CLI run, one change.
    await server.admin(db, "INSERT INTO store_changes (node, n, at) VALUES ('cli/yesterday', 1, 0)");
    const before = await b.foreignChangeToken();
    await b.prune({ penaltiesOlderThanMs: 60_000, auditMaxAgeMs: 0 });
    expect(await b.foreignChangeToken()).toBe(before);
    // Today's CLI run, one change: the token must move although the number of rows did not.
    await server.admin(db, "INSERT INTO store_changes (node, n, at) VALUES ('cli/today', 1, $1)", [Date.now()]);
    expect(await b.foreignChangeToken()).not.toBe(before);
    const rows = await server.admin<{ node: string; n: number }>(db, 'SELECT node, n::int AS n FROM store_changes ORDER BY node');
    expect(rows.filter((r) => r.node.startsWith('cli/')).map((r) => r.node)).toEqual(['cli/today']);
    expect(rows.find((r) => r.node === '(pruned)')?.n).toBe(1);
    await a.writable();
  });
});

describe('migrations', () => {
  it('nodes starting at once on an empty database migrate once, under the advisory lock', async () => {
    // Catches: two nodes both creating the tables (one fails with "relation already exists") or applying a migration twice.
    const url = await server.createDatabase();
    const keyFile = path.join(await tempDir(), 'mailgate.key');
    const options = await optionsFor(url, keyFile);
    const nodes = await Promise.all([1, 2, 3, 4].map(() => open(options)));
    const applied = await server.admin<{ version: number }>(databaseOf(url), 'SELECT version FROM schema_migrations ORDER BY version');
    expect(applied.map((r) => r.version)).toEqual([1, 2, 3, 4]);
    expect(SCHEMA_VERSION).toBe(4);
    await nodes[0]!.accounts.add('alice');
    expect((await nodes[3]!.accounts.list()).map((a) => a.username)).toEqual(['alice']);
  });

  it('a node refuses a schema newer than it knows, in one line naming both versions', async () => {
    const t = await store();
    await server.admin(databaseOf(t.postgres!.url), "INSERT INTO schema_migrations (version, description, applied_at) VALUES (7, 'from the future', 0)");
    const refused = t.open();
    await expect(refused).rejects.toMatchObject({ code: ErrorCodes.DB_NEWER });
    await expect(refused).rejects.toThrow(/^postgres:\/\/mailgate:\*\*\*@127\.0\.0\.1:\d+\/\w+ has schema version 7, newer than this mailgate understands \(4\); upgrade mailgate$/);
  });

  it('an older schema is migrated by a gateway and by store migrate, and refused by any other open, which changes nothing', async () => {
    // Catches: a CLI of a new version changing the shared schema under nodes still running the old one.
    const t = await store();
    const db = databaseOf(t.postgres!.url);
    await server.admin(db, 'DELETE FROM schema_migrations WHERE version = 4');
    const options = { ...(await optionsFor(t.postgres!.url, t.keyFile)), mustExist: true };
    const cli = PostgresStore.open(options, { log: silentLogger(), listen: false });
    await expect(cli).rejects.toMatchObject({ code: ErrorCodes.DB_OLDER });
    await expect(cli).rejects.toThrow(/has schema version 3, older than this mailgate's \(4\): run "mailgate store migrate" or start a gateway of this version/);
    expect((await server.admin<{ v: number }>(db, 'SELECT max(version) AS v FROM schema_migrations'))[0]!.v).toBe(3);
    // Undo what version 4 made, so that store migrate can apply it again.
    await server.admin(db, 'DROP INDEX IF EXISTS audit_by_username; DROP INDEX IF EXISTS audit_by_app_password_ip; DROP TABLE IF EXISTS web_sessions; DROP TABLE IF EXISTS recovery_codes');
    expect(await migratePostgres(options)).toEqual({ from: 3, to: 4 });
    expect((await checkPostgres(options)).ok).toBe(true);
  });

  it('waits for another node\'s migration however long it holds the lock (beyond the statement timeout)', async () => {
    // Catches: the advisory lock taken under the store's 5 s statement timeout, so a node starting
    // while a long migration runs elsewhere fails to start.
    const url = await server.createDatabase();
    const holder = new pg.Client({ connectionString: url });
    holder.on('error', () => undefined);
    await holder.connect();
    cleanups.push(() => holder.end());
    await holder.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK_KEY]);
    const started = Date.now();
    const opening = open(await optionsFor(url));
    await sleep(6000);
    await holder.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK_KEY]);
    const node = await opening;
    expect(Date.now() - started).toBeGreaterThan(6000);
    await node.accounts.add('alice');
  }, 20_000);

  it('store migrate makes the schema in an empty database and records the key file; store check passes, and names a wrong key file', async () => {
    const url = await server.createDatabase();
    const options = await optionsFor(url);
    expect(await checkPostgres(options)).toMatchObject({ ok: false, schemaVersion: 0 });
    expect(await migratePostgres(options)).toEqual({ from: 0, to: 4 });
    expect(await migratePostgres(options)).toEqual({ from: 4, to: 4 });
    expect(await checkPostgres(options)).toEqual({ ok: true, schemaVersion: 4, integrity: ['ok'], foreignKeys: [] });
    const otherKey = path.join(await tempDir(), 'other.key');
    loadOrCreateKey(otherKey);
    const wrongKey = await checkPostgres({ ...options, keyFile: otherKey });
    expect(wrongKey.ok).toBe(false);
    expect(wrongKey.integrity.join('\n')).toMatch(/is not the one this store was made with/);
  });

  it('takes the password from password_file, or from PGPASSWORD, when the URL has none', async () => {
    const url = await server.createDatabase();
    const bare = server.urlWithoutPassword(databaseOf(url));
    const dir = await tempDir();
    const passwordFile = path.join(dir, 'pg-password');
    writeFileSync(passwordFile, `${PG_PASSWORD}\n`, { mode: 0o600 });
    const node = await open({ ...(await optionsFor(bare, path.join(dir, 'mailgate.key'))), passwordFile });
    await node.accounts.add('alice');
    const config = path.join(dir, 'mailgate.toml');
    writeFileSync(config, `[store]\nbackend = "postgres"\nurl = ${JSON.stringify(bare)}\nkey_file = ${JSON.stringify(path.join(dir, 'mailgate.key'))}\n`);
    // The CLI reads the password from the environment.
    const listed = await runCli(['--config', config, 'account', 'list', '--json'], { env: { PGPASSWORD: PG_PASSWORD } });
    expect(listed.stderr).toBe('');
    expect(listed.stdout).toContain('alice');
    const refused = await runCli(['--config', config, 'account', 'list'], { env: { PGPASSWORD: 'wrong' } });
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/password authentication failed/);
    expect(refused.stderr).not.toContain('wrong');
  });
});

describe('PostgreSQL down and back', () => {
  it('fails closed while the server is stopped, and recovers by itself when it starts again; nothing committed is lost', async () => {
    // Catches: logins checked while failures cannot be counted, a store that needs a restart after an outage, lost commits.
    const t = await store();
    const node = t.api;
    const other = await t.open();
    await node.accounts.add('alice');
    const { info, password } = await node.appPasswords.create('alice', { name: 'phone' });
    await node.writable();
    try {
      await server.stopServer();
      // The lost LISTEN connection makes the node look at once: it does not wait for a login to fail.
      await waitUntil(async () => (await node.writable().then(() => false, () => true)), 'writable() to refuse', 3000);
      await expect(node.writable()).rejects.toMatchObject({ code: ErrorCodes.DB_UNAVAILABLE, message: expect.stringMatching(/writes to database .* are failing/) });
      await expect(node.logins.check('alice', password, 'imap')).rejects.toThrow();
      await expect(node.logins.recordFailure('alice', 'wrong-password', { protocol: 'imap', clientIp: '192.0.2.1' })).rejects.toThrow();
      await expect(other.penalties.recordFailure('ip', '192.0.2.1', { windowMs: 60_000, blockAfter: 5, blockMs: 60_000 })).rejects.toThrow();
      await expect(other.writable()).rejects.toThrow(/are failing/);
    } finally {
      await server.startServer();
    }
    // No reopen, no restart: the next probe (once a second) finds it back.
    await waitUntil(async () => node.writable().then(() => true, () => false), 'writable() to work again', 5000);
    await waitUntil(async () => other.writable().then(() => true, () => false), 'the other node to work again', 5000);
    expect(await node.logins.check('alice', password, 'imap')).toMatchObject({ ok: true, appPassword: { id: info.id } });
    // And it hears the other node again, by notification (the listener came back by itself).
    const heard = hear(node);
    await waitUntil(async () => {
      await other.penalties.clear();
      return heard.length > 0;
    }, 'a notification after the restart', 10_000);
  });
});

describe('a connection lost or stuck under a write', () => {
  /**
   * A store with alice, whose account row another session (a DBA's, say)
   * holds locked in an open transaction: writes to alice wait on it.
   */
  async function aliceLockedElsewhere() {
    const t = await store();
    await t.api.accounts.add('alice');
    const db = databaseOf(t.postgres!.url);
    const holder = new pg.Client({ connectionString: t.postgres!.url });
    holder.on('error', () => undefined);
    await holder.connect();
    cleanups.push(() => holder.end().catch(() => undefined));
    await holder.query('BEGIN');
    await holder.query("SELECT * FROM accounts WHERE username = 'alice' FOR UPDATE");
    const waiting = () => server.admin<{ pid: number }>(db, "SELECT pid FROM pg_stat_activity WHERE application_name = 'mailgate' AND wait_event_type = 'Lock'");
    const release = async () => {
      await holder.query('ROLLBACK');
      await waitUntil(async () => t.api.writable().then(() => true, () => false), 'writes to work again', 5000);
    };
    return { node: t.api, db, waiting, release };
  }

  it('a write whose connection is ended mid-statement fails as a database failure; the process does not crash, and the next write works', async () => {
    // Catches: the pg client's 'error' event with no listener while the connection is checked out of
    // the pool (an uncaught exception: the CLI dies with a stack trace, the gateway logs a crash).
    const { node, db, waiting, release } = await aliceLockedElsewhere();
    const stuck = node.totp.enroll('alice');
    stuck.catch(() => undefined);
    await waitUntil(async () => (await waiting()).length === 1, 'the write to wait on the lock', 3000);
    await server.admin(db, 'SELECT pg_terminate_backend($1)', [(await waiting())[0]!.pid]);
    await expect(stuck).rejects.toThrow();
    await release();
    await node.totp.enroll('alice');
  });

  it('a write stuck behind a lock held elsewhere is cancelled by the server: no backend is left waiting', async () => {
    // Catches: a client-side timeout alone, which leaves the statement (and its backend) waiting on the
    // server, so every retry piles up one more backend until the server's connections run out.
    const { node, waiting, release } = await aliceLockedElsewhere();
    const results = await Promise.allSettled([node.totp.enroll('alice'), node.totp.enroll('alice'), node.totp.enroll('alice')]);
    expect(results.map((r) => r.status)).toEqual(['rejected', 'rejected', 'rejected']);
    expect(await waiting()).toEqual([]);
    await release();
  }, 30_000);
});

describe('store copy from SQLite', () => {
  it('copies every row (secrets sealed as they are, hashes, codes, penalties, page sessions, the trail) into an empty store, compared afterwards', async () => {
    // Catches: a copy that loses a table, changes a byte of a sealed secret, or reuses copied ids for new rows.
    const source = await makeEngineStore('sqlite');
    cleanups.push(() => source.cleanup());
    const s = source.api;
    await s.accounts.add('alice');
    await s.accounts.add('bob');
    // A code of the step before: the copy then accepts the current one.
    const secret = await enableTotpVia(s, 'alice', Date.now() - 30_000);
    const codes = await s.recoveryCodes.regenerate('alice');
    expect(await s.recoveryCodes.consume('alice', codes[0]!)).toBe(true);
    const phone = await s.appPasswords.create('alice', { name: 'phone', scopes: ['imap'] });
    const laptop = await s.appPasswords.create('bob', { name: 'laptop', expiresAt: Date.now() + 86_400_000 });
    await s.appPasswords.revoke('bob', laptop.info.id);
    const alice = await s.accounts.get('alice');
    await s.logins.recordSuccess({ account: alice, appPassword: phone.info, username: 'alice', context: { protocol: 'imap', clientIp: '192.0.2.7', client: 'Thunderbird/153.0' } });
    await s.penalties.recordFailure('ip', '198.51.100.1', { windowMs: 600_000, blockAfter: 1, blockMs: 600_000 });
    await s.webSessions.save({ idHash: 'cd'.repeat(32), accountId: alice.id, createdAt: Date.now(), lastSeenAt: Date.now(), passwordAt: Date.now(), ip: '192.0.2.7', userAgent: 'Firefox', data: '{"csrf":"x"}' });
    await s.webSessions.save({ idHash: 'ef'.repeat(32), accountId: null, createdAt: Date.now(), lastSeenAt: Date.now(), passwordAt: null, ip: null, userAgent: null, data: '{}' });

    const url = await server.createDatabase();
    const target = await optionsFor(url, source.keyFile);
    const result = await copySqliteToPostgres(path.join(source.dir, 'data', 'mailgate.db'), target);
    expect(result.ok).toBe(true);
    const counts = Object.fromEntries(result.tables.map((t) => [t.table, [t.source, t.target, t.same]]));
    expect(counts).toMatchObject({
      accounts: [2, 2, true],
      app_passwords: [2, 2, true],
      recovery_codes: [10, 10, true],
      web_sessions: [2, 2, true],
      penalties: [1, 1, true],
    });
    expect(counts.audit![0]).toBeGreaterThan(8);

    // The copy works as the store: the same app password, TOTP secret, recovery codes, block, trail.
    const copy = await open(target);
    expect((await copy.audit.list({ limit: 1000 })).length).toBe(counts.audit![0]);
    expect(await copy.logins.check('alice', phone.password, 'imap')).toMatchObject({ ok: true });
    expect(await copy.logins.check('bob', laptop.password, 'imap')).toMatchObject({ ok: false, reason: 'revoked' });
    expect(await copy.totp.verify('alice', generateSync({ secret }))).toBe(true);
    expect(await copy.recoveryCodes.consume('alice', codes[0]!)).toBe(false);
    expect(await copy.recoveryCodes.consume('alice', codes[1]!)).toBe(true);
    expect((await copy.penalties.activeBlocks()).map((b) => b.key)).toEqual(['198.51.100.1']);
    expect(await copy.webSessions.get('cd'.repeat(32), { idleMs: 3_600_000, maxMs: 3_600_000 })).toMatchObject({ accountId: alice.id, data: '{"csrf":"x"}' });
    // New rows get new ids after the copied ones.
    expect((await copy.accounts.add('carol')).id).toBeGreaterThan((await copy.accounts.get('bob')).id);
  });

  it('refuses a target that holds anything, through the CLI, changing nothing', async () => {
    const source = await makeEngineStore('sqlite');
    cleanups.push(() => source.cleanup());
    await source.api.accounts.add('alice');
    const t = await store();
    await t.api.accounts.add('someone-else');
    const config = path.join(source.dir, 'mailgate.toml');
    writeFileSync(config, `[store]\npath = ${JSON.stringify(path.join(source.dir, 'data', 'mailgate.db'))}\nkey_file = ${JSON.stringify(source.keyFile)}\n`);
    const refused = await runCli(['--config', config, 'store', 'copy', '--to', t.postgres!.url]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/is not empty: accounts \(1\), audit \(1\); a copy goes into an empty store only/);
    expect(refused.stderr).not.toContain(PG_PASSWORD);
    expect((await t.api.accounts.list()).map((a) => a.username)).toEqual(['someone-else']);
    // Into an empty one it goes, and says so table by table.
    const copied = await runCli(['--config', config, 'store', 'copy', '--to', await server.createDatabase()]);
    expect(copied.stderr).toBe('');
    expect(copied.code).toBe(0);
    expect(copied.stdout).toMatch(/accounts: 1 rows -> 1 rows, identical/);
    expect(copied.stdout).toMatch(/every table is identical/);
  });
});
