/**
 * The Store interface, on every engine: what the rest of mailgate may rely
 * on without knowing the engine. Failures are reported by the store itself,
 * changes this process makes are announced at once, other processes' (or
 * nodes') commits move the change token, and a login's record is one commit.
 */
import { createHash, randomBytes } from 'node:crypto';
import { generateSync } from 'otplib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ErrorCodes } from '../../src/errors.js';
import { createLogger } from '../../src/log/logger.js';
import type { Store, StoreChange } from '../../src/store/store.js';
import { ACTIVITY_EVENTS, type LoginContext, type WebSessionRecord } from '../../src/store/types.js';
import { enableTotpVia, ENGINES, makeEngineStore, useEngine, type EngineStore } from '../support/store.js';

describe.each(ENGINES)('the Store interface (%s)', (engine) => {
  useEngine(engine);
  let t: EngineStore;
  let store: Store;
  let lines: string[];

  beforeEach(async () => {
    lines = [];
    const log = createLogger({ level: 'info', destination: { write: (line: string) => void lines.push(line) } });
    t = await makeEngineStore(engine, { log });
    store = t.api;
    await store.accounts.add('alice');
  });
  afterEach(() => t.cleanup());

  const messages = () => lines.map((l) => (JSON.parse(l) as { msg: string }).msg);
  const waitRetry = () => new Promise((resolve) => setTimeout(resolve, 1100));
  const events = async (username: string) => (await store.audit.list({ username })).map((r) => r.event);
  const LIMITS = { idleMs: 3_600_000, maxMs: 3_600_000 };

  /** A signed-in page session of `username`, saved through the interface; its id hash. */
  async function pageSession(username: string): Promise<string> {
    const idHash = createHash('sha256').update(randomBytes(32)).digest('hex');
    const account = await store.accounts.get(username);
    const record: WebSessionRecord = { idHash, accountId: account.id, createdAt: Date.now(), lastSeenAt: Date.now(), passwordAt: Date.now(), ip: '192.0.2.9', userAgent: 'test', data: '{}' };
    await store.webSessions.save(record);
    return idHash;
  }

  const live = async (idHash: string) => (await store.webSessions.get(idHash, LIMITS)) !== null;

  it('reports its own write failures: logins are refused until a probe shows writes work again, with no caller involved', async () => {
    // Catches: callers that must remember to report a failed write (the login path forgot it once),
    // and a store that keeps letting logins in while their failures cannot be counted.
    await store.writable();
    const restore = await t.failAuditOf('login-failed');
    await expect(store.audit.record('login-failed', { username: 'alice' })).rejects.toThrow(/audit refused/);
    await expect(store.writable()).rejects.toThrow(/writes to database .* are failing/);
    // Reads still work: a failed write is not a broken database.
    expect((await store.accounts.get('alice')).username).toBe('alice');
    await restore();
    await waitRetry();
    await store.writable();
    expect(messages()).toContain('database writes are failing; logins are refused until they work again');
    expect(messages()).toContain('the database is usable again');
  });

  it('a refusal it decides (an unknown account) is not a database failure', async () => {
    await expect(store.accounts.get('nobody')).rejects.toThrow(/no account nobody/);
    await expect(store.appPasswords.revoke('alice', 999)).rejects.toThrow(/has no app password 999/);
    await store.writable();
    // A fresh PostgreSQL database is given its schema on open, which is said once; nothing else may be.
    expect(messages().filter((m) => m !== 'created the store schema in the database')).toEqual([]);
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
    await (await t.open()).accounts.add('erin');
    expect(await store.foreignChangeToken()).not.toBe(first);
  });

  it("records a login's last use and audit row in one commit, or neither", async () => {
    const { info } = await store.appPasswords.create('alice', { name: 'phone' });
    const account = await store.accounts.get('alice');
    const context = { protocol: 'imap' as const, clientIp: '192.0.2.1', client: 'Thunderbird/153.0' };
    await store.logins.recordSuccess({ account, appPassword: info, username: 'alice', context });
    expect((await store.appPasswords.list('alice'))[0]!.lastUsed).toMatchObject({ ip: '192.0.2.1', protocol: 'imap' });
    // A repeat login from the same address (one statement on PostgreSQL) is all or nothing too.
    const first = (await store.appPasswords.list('alice'))[0]!.lastUsed;
    const restoreRepeat = await t.failAuditOf('login-ok');
    await expect(store.logins.recordSuccess({ account, appPassword: info, username: 'alice', context: { ...context, client: 'K-9/6.8' } })).rejects.toThrow(/audit refused/);
    await restoreRepeat();
    expect((await store.appPasswords.list('alice'))[0]!.lastUsed).toEqual(first);
    await store.logins.recordSuccess({ account, appPassword: info, username: 'alice', context: { ...context, client: 'K-9/6.8' } });
    expect((await store.appPasswords.list('alice'))[0]!.lastUsed).toMatchObject({ ip: '192.0.2.1', client: 'K-9/6.8' });
    expect((await events('alice')).filter((e) => e === 'login-ok')).toHaveLength(2);
    await store.logins.recordSuccess({ account: null, appPassword: null, username: 'Nobody', context });
    expect(await store.audit.list({ username: 'Nobody' })).toEqual([expect.objectContaining({ event: 'login-ok', detail: 'upstream-password' })]);
    const before = (await store.appPasswords.list('alice'))[0]!.lastUsed;
    const restore = await t.failAuditOf(null);
    await expect(store.logins.recordSuccess({ account, appPassword: info, username: 'alice', context: { ...context, clientIp: '198.51.100.7' } })).rejects.toThrow(/audit refused/);
    await restore();
    expect((await store.appPasswords.list('alice'))[0]!.lastUsed).toEqual(before);
  });

  it('checks a password against the live app password when a revoked one shares its selector', async () => {
    // Catches: a candidate lookup that takes the revoked row first (the live password then fails as wrong).
    const old = (await store.appPasswords.create('alice', { name: 'old' })).info;
    await store.appPasswords.revoke('alice', old.id);
    const { info, password } = await store.appPasswords.create('alice', { name: 'new' });
    await t.rows('UPDATE app_passwords SET selector = (SELECT selector FROM app_passwords WHERE id = ?) WHERE id = ?', [info.id, old.id]);
    expect(await store.logins.check('alice', password, 'imap')).toMatchObject({ ok: true, appPassword: { id: info.id } });
  });

  it('tells how the credentials of open sessions stand, by id and by name', async () => {
    const { info } = await store.appPasswords.create('alice', { name: 'phone' });
    await store.accounts.add('frank');
    await enableTotpVia(store, 'frank');
    await store.penalties.recordFailure('account', 'gina', { windowMs: 60_000, blockAfter: 1, blockMs: 60_000 });
    const alice = await store.accounts.get('alice');
    const now = await store.credentialsNow({ accountIds: [alice.id, 999], appPasswordIds: [info.id], names: ['frank', 'gina', 'henry'] });
    expect([...now.accounts.keys()]).toEqual([alice.id]);
    expect(now.appPasswords.get(info.id)?.name).toBe('phone');
    expect(now.accountsByName.get('frank')?.totpState).toBe('enabled');
    expect([...now.blockedNames]).toEqual(['gina']);
  });

  it("records new-address with a login from an address the app password had no login from, in the login's commit", async () => {
    // Catches: no new-address event (the owner never hears of a stranger's login), one on every login, or one per
    // account instead of per app password.
    const phone = (await store.appPasswords.create('alice', { name: 'phone' })).info;
    const laptop = (await store.appPasswords.create('alice', { name: 'laptop' })).info;
    const account = await store.accounts.get('alice');
    const login = (appPassword: typeof phone | null, clientIp: string | null) =>
      store.logins.recordSuccess({ account, appPassword, username: 'alice', context: { protocol: 'imap', clientIp } });
    const newAddresses = async () =>
      (await store.audit.list({ username: 'alice' })).filter((r) => r.event === 'new-address').map((r) => `${r.appPasswordId}@${r.ip}/${r.protocol}`);

    await login(phone, '192.0.2.1');
    expect((await events('alice')).slice(0, 2)).toEqual(['new-address', 'login-ok']);
    await login(phone, '192.0.2.1');
    await login(phone, '2001:db8::1');
    await login(laptop, '192.0.2.1');
    await login(null, '198.51.100.1');
    await login(phone, null);
    expect(await newAddresses()).toEqual([`${laptop.id}@192.0.2.1/imap`, `${phone.id}@2001:db8::1/imap`, `${phone.id}@192.0.2.1/imap`]);

    // Both or neither: a login whose new-address row cannot be written records nothing, and the next one
    // from that address is still new.
    const before = (await store.appPasswords.list('alice')).find((p) => p.id === phone.id)!.lastUsed;
    const rows = (await store.audit.list({ limit: 1000 })).length;
    const restore = await t.failAuditOf('new-address');
    await expect(login(phone, '203.0.113.5')).rejects.toThrow(/audit refused/);
    await restore();
    expect((await store.appPasswords.list('alice')).find((p) => p.id === phone.id)!.lastUsed).toEqual(before);
    expect(await store.audit.list({ limit: 1000 })).toHaveLength(rows);
    await login(phone, '203.0.113.5');
    expect((await newAddresses())[0]).toBe(`${phone.id}@203.0.113.5/imap`);
  });

  it("lists an account's activity: the events worth showing, newest first, its own only, failed logins under any spelling", async () => {
    // Catches: failed logins recorded under the name as typed ("Alice"), which the owner would never see;
    // events of other accounts, or of an earlier account of the same name; every login-ok in the list.
    await store.logins.recordFailure('carol', 'unknown-account', { protocol: 'imap', clientIp: '198.51.100.3' });
    await new Promise((resolve) => setTimeout(resolve, 5));
    await store.accounts.add('carol');
    const phone = (await store.appPasswords.create('carol', { name: 'phone' })).info;
    const carol = await store.accounts.get('carol');
    const context: LoginContext = { protocol: 'pop3', clientIp: '192.0.2.44' };
    await store.logins.recordSuccess({ account: carol, appPassword: phone, username: 'carol', context });
    await store.logins.recordSuccess({ account: carol, appPassword: phone, username: 'carol', context });
    await store.logins.recordFailure('Carol', 'upstream-rejected', context);
    await store.logins.recordFailure('alice', 'wrong-password', context);
    await store.totp.enroll('carol');
    await store.appPasswords.revoke('carol', phone.id);

    const activity = await store.audit.activity('CAROL', 50);
    expect(activity.map((r) => r.event)).toEqual(['revoked', 'login-failed', 'new-address', 'created', 'account-added']);
    expect(activity.every((r) => r.username === 'carol' && ACTIVITY_EVENTS.includes(r.event))).toBe(true);
    expect(activity[1]).toMatchObject({ ip: '192.0.2.44', protocol: 'pop3', detail: 'upstream-rejected' });
    expect(activity[2]).toMatchObject({ appPasswordId: phone.id, ip: '192.0.2.44' });
    expect((await store.audit.activity('carol', 2)).map((r) => r.event)).toEqual(['revoked', 'login-failed']);
    expect(await store.audit.activity('carol', 0)).toEqual([]);
    await expect(store.audit.activity('nobody', 10)).rejects.toMatchObject({ code: ErrorCodes.UNKNOWN_ACCOUNT });
  });

  it('turning two-step verification on returns the recovery codes and ends the other page sessions, in one commit', async () => {
    const { secret } = await store.totp.enroll('alice');
    await store.accounts.add('bob');
    const kept = await pageSession('alice');
    const others = [await pageSession('alice'), await pageSession('alice')];
    const bobs = await pageSession('bob');
    const changes: StoreChange[] = [];
    store.onChange((change) => changes.push(change));
    const code = generateSync({ secret });

    // A wrong code changes nothing.
    const wrong = String((Number(code) + 1) % 1_000_000).padStart(6, '0');
    await expect(store.totp.confirm('alice', wrong, { keepWebSession: kept })).rejects.toMatchObject({ code: ErrorCodes.TOTP_CODE });
    // Nor does a failure after the code was accepted: the code is not spent, no code or session is touched.
    const restore = await t.failAuditOf('web-sessions-ended');
    await expect(store.totp.confirm('alice', code, { keepWebSession: kept })).rejects.toThrow(/audit refused/);
    await restore();
    expect(await store.totp.status('alice')).toBe('pending');
    expect(await store.recoveryCodes.remaining('alice')).toBe(0);
    for (const idHash of [kept, ...others, bobs]) expect(await live(idHash)).toBe(true);
    expect(await events('alice')).toEqual(['totp-enrolled', 'account-added']);
    expect(changes).toEqual([]);

    const { account, recoveryCodes } = await store.totp.confirm('alice', code, { keepWebSession: kept });
    expect(account).toMatchObject({ username: 'alice', totpState: 'enabled' });
    expect(recoveryCodes).toHaveLength(10);
    expect(await store.recoveryCodes.remaining('alice')).toBe(10);
    expect(await live(kept)).toBe(true);
    for (const idHash of others) expect(await live(idHash)).toBe(false);
    expect(await live(bobs)).toBe(true);
    expect((await events('alice')).slice(0, 3)).toEqual(['web-sessions-ended', 'recovery-codes-created', 'totp-enabled']);
    expect((await store.audit.list({ username: 'alice', limit: 1 }))[0]!.detail).toBe('2');
    expect(changes).toEqual([
      { kind: 'web-sessions', username: 'alice' },
      { kind: 'totp', username: 'alice' },
    ]);
  });

  it('turning two-step verification off deletes the recovery codes and ends the other page sessions, in one commit', async () => {
    const secret = (await store.totp.enroll('alice')).secret;
    const kept = await pageSession('alice');
    await store.totp.confirm('alice', generateSync({ secret }), { keepWebSession: kept });
    const other = await pageSession('alice');
    const changes: StoreChange[] = [];
    store.onChange((change) => changes.push(change));

    const restore = await t.failAuditOf('web-sessions-ended');
    await expect(store.totp.disable('alice', { keepWebSession: kept })).rejects.toThrow(/audit refused/);
    await restore();
    expect(await store.totp.status('alice')).toBe('enabled');
    expect(await store.recoveryCodes.remaining('alice')).toBe(10);
    expect(await live(other)).toBe(true);
    expect(changes).toEqual([]);

    expect((await store.totp.disable('alice', { keepWebSession: kept })).totpState).toBe('none');
    expect(await store.recoveryCodes.remaining('alice')).toBe(0);
    expect(await live(kept)).toBe(true);
    expect(await live(other)).toBe(false);
    expect((await events('alice')).slice(0, 2)).toEqual(['web-sessions-ended', 'totp-disabled']);
    expect(changes).toEqual([
      { kind: 'web-sessions', username: 'alice' },
      { kind: 'totp', username: 'alice' },
    ]);
    // Without a session to keep (the CLI), every one ends.
    await store.totp.confirm('alice', generateSync({ secret: (await store.totp.enroll('alice')).secret }), { keepWebSession: kept });
    expect(await live(kept)).toBe(true);
    await store.totp.disable('alice');
    expect(await live(kept)).toBe(false);
  });
});
