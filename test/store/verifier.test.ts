/** The app-password check through the Store interface (store/verifier.ts over each engine's rows). */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { PasswordHasher } from '../../src/store/hasher.js';
import type { Store } from '../../src/store/store.js';
import type { LoginContext, Scope, VerifyResult } from '../../src/store/types.js';
import { ENGINES, FAST_ARGON2, makeEngineStore, manualClock, useEngine, type EngineStore } from '../support/store.js';

const clock = manualClock();
const ctx = { protocol: 'imap' as const, clientIp: '192.0.2.7', client: 'Thunderbird/153.0' };

describe.each(ENGINES)('credential verification (%s)', (engine) => {
  useEngine(engine);
  let t: EngineStore;
  let store: Store;
  let hasher: PasswordHasher;

  beforeEach(async () => {
    clock.set(Date.UTC(2026, 10, 25, 12, 0, 0));
    hasher = new PasswordHasher(FAST_ARGON2);
    t = await makeEngineStore(engine, { now: clock.now, hasher });
    store = t.api;
    await store.accounts.add('alice');
    await store.accounts.add('bob');
  });
  afterEach(() => t.cleanup());

  /** Checks, then records the outcome, as the login service does. */
  async function verify(username: string, password: string, context: LoginContext & { protocol: Scope }): Promise<VerifyResult> {
    const result = await store.logins.check(username, password, context.protocol);
    if (result.ok) await store.logins.recordSuccess({ account: result.account, appPassword: result.appPassword, username: result.account.username, context });
    else await store.logins.recordFailure(result.account?.username ?? username, result.reason, context);
    return result;
  }

  it('accepts the right app password, with or without spaces, in any case', async () => {
    const created = await store.appPasswords.create('alice', { name: 'tb' });
    for (const typed of [created.password, created.password.replace(/ /g, ''), created.password.toUpperCase()]) {
      const result = await verify(' Alice ', typed, ctx);
      expect(result.ok).toBe(true);
      if (result.ok) {
        expect(result.account.username).toBe('alice');
        expect(result.appPassword.id).toBe(created.info.id);
      }
    }
  });

  it('records the last use on success: time, client IP, protocol', async () => {
    const created = await store.appPasswords.create('alice', { name: 'tb' });
    await verify('alice', created.password, ctx);
    const info = (await store.appPasswords.list('alice'))[0]!;
    expect(info.lastUsed).toEqual({ at: clock.now(), ip: '192.0.2.7', protocol: 'imap', client: 'Thunderbird/153.0' });
  });

  it('refuses a wrong password', async () => {
    const created = await store.appPasswords.create('alice', { name: 'tb' });
    const secret = created.password.replace(/ /g, '');
    // Same selector, different secret part: reaches the real hash and fails there.
    const wrong = secret.slice(0, 4) + (secret[4] === 'a' ? 'b' : 'a') + secret.slice(5);
    expect(await store.logins.check('alice', wrong, 'imap')).toMatchObject({ ok: false, reason: 'wrong-password' });
    expect(await store.logins.check('alice', 'hunter2', 'imap')).toMatchObject({ ok: false, reason: 'wrong-password' });
    expect(await store.logins.check('alice', 'zzzzyyyyxxxxwwww', 'imap')).toMatchObject({ ok: false, reason: 'wrong-password' });
  });

  it("refuses another account's app password", async () => {
    const bobs = await store.appPasswords.create('bob', { name: 'tb' });
    expect(await store.logins.check('alice', bobs.password, 'imap')).toMatchObject({ ok: false, reason: 'wrong-password' });
  });

  it('reports an unknown account', async () => {
    expect(await store.logins.check('mallory', 'abcd efgh ijkl mnop', 'imap')).toMatchObject({
      ok: false,
      reason: 'unknown-account',
      account: null,
    });
  });

  it('reports revoked, expired and out of scope only for the right secret', async () => {
    const revoked = await store.appPasswords.create('alice', { name: 'r' });
    await store.appPasswords.revoke('alice', revoked.info.id);
    const expiring = await store.appPasswords.create('alice', { name: 'e', expiresAt: clock.now() + 60_000 });
    const popOnly = await store.appPasswords.create('alice', { name: 'p', scopes: ['pop3'] });

    expect(await store.logins.check('alice', revoked.password, 'imap')).toMatchObject({ ok: false, reason: 'revoked' });
    expect((await store.logins.check('alice', expiring.password, 'imap')).ok).toBe(true);
    clock.advance(60_000);
    expect(await store.logins.check('alice', expiring.password, 'imap')).toMatchObject({ ok: false, reason: 'expired' });
    expect(await store.logins.check('alice', popOnly.password, 'imap')).toMatchObject({ ok: false, reason: 'out-of-scope' });
    expect((await store.logins.check('alice', popOnly.password, 'pop3')).ok).toBe(true);
  });

  it('runs exactly one argon2 verification per attempt, whatever the case', async () => {
    const created = await store.appPasswords.create('alice', { name: 'tb' });
    for (let i = 0; i < 10; i++) await store.appPasswords.create('alice', { name: `n${i}` }).catch(() => undefined);
    const cases: Array<[string, string]> = [
      ['alice', created.password],
      ['alice', 'wrong'],
      ['alice', 'qqqqwwwweeeerrrr'],
      ['nobody', 'qqqqwwwweeeerrrr'],
      ['nobody', 'x'],
    ];
    for (const [user, password] of cases) {
      const before = hasher.stats.verifications;
      await store.logins.check(user, password, 'imap');
      // The dummy hash is created lazily with one hash(), not a verify(); only verifications count.
      expect(hasher.stats.verifications - before).toBe(1);
    }
  });

  it('writes login-ok and login-failed audit events without secrets', async () => {
    const created = await store.appPasswords.create('alice', { name: 'tb' });
    await verify('alice', created.password, ctx);
    await verify('alice', 'not-the-password', ctx);
    const events = await store.audit.list({ username: 'alice' });
    expect(events.map((e) => e.event)).toEqual(['login-failed', 'new-address', 'login-ok', 'created', 'account-added']);
    expect(events[0]).toMatchObject({ ip: '192.0.2.7', protocol: 'imap', detail: 'wrong-password' });
    expect(events[2]).toMatchObject({ appPasswordId: created.info.id, ip: '192.0.2.7', protocol: 'imap' });
  });
});
