import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { makeTestStore, manualClock, type TestStore } from '../support/store.js';

let t: TestStore;
const clock = manualClock();
const ctx = { protocol: 'imap' as const, clientIp: '192.0.2.7', client: 'Thunderbird/153.0' };

beforeEach(async () => {
  clock.set(Date.UTC(2026, 10, 25, 12, 0, 0));
  t = await makeTestStore({ now: clock.now });
  t.store.accounts.add('alice');
  t.store.accounts.add('bob');
});
afterEach(() => t.cleanup());

describe('credential verification', () => {
  it('accepts the right app password, with or without spaces, in any case', async () => {
    const created = await t.store.appPasswords.create('alice', { name: 'tb' });
    for (const typed of [created.password, created.password.replace(/ /g, ''), created.password.toUpperCase()]) {
      const result = await t.store.verifier.verify(' Alice ', typed, ctx);
      expect(result.ok).toBe(true);
      if (result.ok) {
        expect(result.account.username).toBe('alice');
        expect(result.appPassword.id).toBe(created.info.id);
      }
    }
  });

  it('records the last use on success: time, client IP, protocol', async () => {
    const created = await t.store.appPasswords.create('alice', { name: 'tb' });
    await t.store.verifier.verify('alice', created.password, ctx);
    const info = t.store.appPasswords.list('alice')[0]!;
    expect(info.lastUsed).toEqual({ at: clock.now(), ip: '192.0.2.7', protocol: 'imap', client: 'Thunderbird/153.0' });
  });

  it('refuses a wrong password', async () => {
    const created = await t.store.appPasswords.create('alice', { name: 'tb' });
    const secret = created.password.replace(/ /g, '');
    // Same selector, different secret part: reaches the real hash and fails there.
    const wrong = secret.slice(0, 4) + (secret[4] === 'a' ? 'b' : 'a') + secret.slice(5);
    expect(await t.store.verifier.check('alice', wrong, 'imap')).toMatchObject({ ok: false, reason: 'wrong-password' });
    expect(await t.store.verifier.check('alice', 'hunter2', 'imap')).toMatchObject({ ok: false, reason: 'wrong-password' });
    expect(await t.store.verifier.check('alice', 'zzzzyyyyxxxxwwww', 'imap')).toMatchObject({ ok: false, reason: 'wrong-password' });
  });

  it("refuses another account's app password", async () => {
    const bobs = await t.store.appPasswords.create('bob', { name: 'tb' });
    expect(await t.store.verifier.check('alice', bobs.password, 'imap')).toMatchObject({ ok: false, reason: 'wrong-password' });
  });

  it('reports an unknown account', async () => {
    expect(await t.store.verifier.check('mallory', 'abcd efgh ijkl mnop', 'imap')).toMatchObject({
      ok: false,
      reason: 'unknown-account',
      account: null,
    });
  });

  it('reports revoked, expired and out of scope only for the right secret', async () => {
    const revoked = await t.store.appPasswords.create('alice', { name: 'r' });
    t.store.appPasswords.revoke('alice', revoked.info.id);
    const expiring = await t.store.appPasswords.create('alice', { name: 'e', expiresAt: clock.now() + 60_000 });
    const popOnly = await t.store.appPasswords.create('alice', { name: 'p', scopes: ['pop3'] });

    expect(await t.store.verifier.check('alice', revoked.password, 'imap')).toMatchObject({ ok: false, reason: 'revoked' });
    expect((await t.store.verifier.check('alice', expiring.password, 'imap')).ok).toBe(true);
    clock.advance(60_000);
    expect(await t.store.verifier.check('alice', expiring.password, 'imap')).toMatchObject({ ok: false, reason: 'expired' });
    expect(await t.store.verifier.check('alice', popOnly.password, 'imap')).toMatchObject({ ok: false, reason: 'out-of-scope' });
    expect((await t.store.verifier.check('alice', popOnly.password, 'pop3')).ok).toBe(true);
  });

  it('runs exactly one argon2 verification per attempt, whatever the case', async () => {
    const created = await t.store.appPasswords.create('alice', { name: 'tb' });
    for (let i = 0; i < 10; i++) await t.store.appPasswords.create('alice', { name: `n${i}` }).catch(() => undefined);
    const cases: Array<[string, string]> = [
      ['alice', created.password],
      ['alice', 'wrong'],
      ['alice', 'qqqqwwwweeeerrrr'],
      ['nobody', 'qqqqwwwweeeerrrr'],
      ['nobody', 'x'],
    ];
    for (const [user, password] of cases) {
      const before = t.store.hasher.stats.verifications;
      await t.store.verifier.check(user, password, 'imap');
      // The dummy hash is created lazily with one hash(), not a verify(); only verifications count.
      expect(t.store.hasher.stats.verifications - before).toBe(1);
    }
  });

  it('writes login-ok and login-failed audit events without secrets', async () => {
    const created = await t.store.appPasswords.create('alice', { name: 'tb' });
    await t.store.verifier.verify('alice', created.password, ctx);
    await t.store.verifier.verify('alice', 'not-the-password', ctx);
    const events = t.store.audit.list({ username: 'alice' });
    expect(events.map((e) => e.event)).toEqual(['login-failed', 'new-address', 'login-ok', 'created', 'account-added']);
    expect(events[0]).toMatchObject({ ip: '192.0.2.7', protocol: 'imap', detail: 'wrong-password' });
    expect(events[2]).toMatchObject({ appPasswordId: created.info.id, ip: '192.0.2.7', protocol: 'imap' });
  });
});
