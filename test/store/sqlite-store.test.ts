/**
 * The Store interface over SQLite: what the rest of mailgate may rely on
 * without knowing the engine. Failures are reported by the store itself,
 * changes this process makes are announced at once, other processes' commits
 * move the change token, and a login's record is one commit.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createLogger } from '../../src/log/logger.js';
import { SqliteStore } from '../../src/store/sqlite/sqlite-store.js';
import type { Store, StoreChange } from '../../src/store/store.js';
import { enableTotp, makeTestStore, type TestStore } from '../support/store.js';

let t: TestStore;
let store: Store;
let lines: string[];

beforeEach(async () => {
  t = await makeTestStore({ busyTimeoutMs: 50 });
  lines = [];
  const log = createLogger({ level: 'info', destination: { write: (line: string) => void lines.push(line) } });
  store = SqliteStore.over(t.store, t.options, log);
  t.store.accounts.add('alice');
});
afterEach(async () => {
  await store.close();
  await t.cleanup();
});

const messages = () => lines.map((l) => (JSON.parse(l) as { msg: string }).msg);
const waitRetry = () => new Promise((resolve) => setTimeout(resolve, 1100));

describe('SqliteStore', () => {
  it('reports its own write failures: logins are refused until a probe shows writes work again, with no caller involved', async () => {
    // Catches: callers that must remember to report a failed write (the login path forgot it once),
    // and a store that keeps letting logins in while their failures cannot be counted.
    await store.writable();
    const other = t.reopen();
    other.db.exec('BEGIN EXCLUSIVE');
    other.db.prepare("UPDATE accounts SET created_at = created_at WHERE username = 'alice'").run();
    try {
      await expect(store.audit.record('login-failed', { username: 'alice' })).rejects.toThrow(/locked/);
      await expect(store.writable()).rejects.toThrow(/writes to database .* are failing/);
      // Reads still work: a lock is not a broken database.
      expect((await store.accounts.get('alice')).username).toBe('alice');
    } finally {
      other.db.exec('ROLLBACK');
    }
    await waitRetry();
    await store.writable();
    expect(messages()).toContain('database writes are failing; logins are refused until they work again');
    expect(messages()).toContain('the database is usable again');
  });

  it('a refusal it decides (an unknown account) is not a database failure', async () => {
    await expect(store.accounts.get('nobody')).rejects.toThrow(/no account nobody/);
    await expect(store.appPasswords.revoke('alice', 999)).rejects.toThrow(/has no app password 999/);
    await store.writable();
    expect(messages()).toEqual([]);
  });

  it('announces the changes this process makes that may end sessions, at once; not the others', async () => {
    // Catches: a revocation made in the gateway's own process (the web page) that the revocation
    // watcher never hears of: SQLite's data_version does not move for a connection's own commits.
    const changes: StoreChange[] = [];
    const unsubscribe = store.onChange((change) => changes.push(change));
    const { info } = await store.appPasswords.create('alice', { name: 'phone' });
    await store.appPasswords.revoke('alice', info.id);
    await store.appPasswords.revokeAll('alice');
    await store.accounts.add('bob');
    const { secret } = await store.totp.enroll('bob');
    expect(secret).toMatch(/^[A-Z2-7]+$/);
    await store.accounts.remove('bob');
    for (let i = 0; i < 3; i++) await store.penalties.recordFailure('account', 'carol', { windowMs: 60_000, blockAfter: 3, blockMs: 60_000 });
    await store.audit.record('login-ok', { username: 'alice' });
    expect(changes.map((c) => c.kind)).toEqual(['app-password', 'app-password', 'account', 'account', 'block']);
    unsubscribe();
    await store.appPasswords.revokeAll('alice');
    expect(changes).toHaveLength(5);
  });

  it("moves its change token for another process's commits, not for its own", async () => {
    const first = await store.foreignChangeToken();
    await store.accounts.add('dave');
    expect(await store.foreignChangeToken()).toBe(first);
    t.reopen().accounts.add('erin');
    expect(await store.foreignChangeToken()).not.toBe(first);
  });

  it("records a login's last use and audit row in one commit, or neither", async () => {
    const { info } = await store.appPasswords.create('alice', { name: 'phone' });
    const account = await store.accounts.get('alice');
    const context = { protocol: 'imap' as const, clientIp: '192.0.2.1', client: 'Thunderbird/153.0' };
    await store.logins.recordSuccess({ account, appPassword: info, username: 'alice', context });
    expect((await store.appPasswords.list('alice'))[0]!.lastUsed).toMatchObject({ ip: '192.0.2.1', protocol: 'imap' });
    await store.logins.recordSuccess({ account: null, appPassword: null, username: 'Nobody', context });
    expect(await store.audit.list({ username: 'Nobody' })).toEqual([expect.objectContaining({ event: 'login-ok', detail: 'upstream-password' })]);
    const before = (await store.appPasswords.list('alice'))[0]!.lastUsed;
    t.store.db.exec("CREATE TEMP TRIGGER no_audit BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'audit refused'); END");
    await expect(store.logins.recordSuccess({ account, appPassword: info, username: 'alice', context: { ...context, clientIp: '198.51.100.7' } })).rejects.toThrow(/audit refused/);
    t.store.db.exec('DROP TRIGGER no_audit');
    expect((await store.appPasswords.list('alice'))[0]!.lastUsed).toEqual(before);
  });

  it('tells how the credentials of open sessions stand, by id and by name', async () => {
    const { info } = await store.appPasswords.create('alice', { name: 'phone' });
    await store.accounts.add('frank');
    enableTotp(t.store, 'frank');
    await store.penalties.recordFailure('account', 'gina', { windowMs: 60_000, blockAfter: 1, blockMs: 60_000 });
    const alice = await store.accounts.get('alice');
    const now = await store.credentialsNow({ accountIds: [alice.id, 999], appPasswordIds: [info.id], names: ['frank', 'gina', 'henry'] });
    expect([...now.accounts.keys()]).toEqual([alice.id]);
    expect(now.appPasswords.get(info.id)?.name).toBe('phone');
    expect(now.accountsByName.get('frank')?.totpState).toBe('enabled');
    expect([...now.blockedNames]).toEqual(['gina']);
  });
});
