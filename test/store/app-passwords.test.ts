import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ErrorCodes, isMailgateError } from '../../src/errors.js';
import { parseScopes } from '../../src/store/app-password-format.js';
import { makeTestStore, manualClock, type TestStore } from '../support/store.js';

let t: TestStore;
const clock = manualClock();

beforeEach(async () => {
  clock.set(Date.UTC(2026, 10, 25, 12, 0, 0));
  t = await makeTestStore({ now: clock.now, maxAppPasswords: 3 });
  t.store.accounts.add('alice');
  t.store.accounts.add('bob');
});
afterEach(() => t.cleanup());

function expectCode(fn: () => unknown, code: string) {
  try {
    fn();
  } catch (err) {
    expect(isMailgateError(err)).toBe(true);
    expect((err as { code: string }).code).toBe(code);
    return;
  }
  throw new Error(`expected ${code}`);
}

async function expectCodeAsync(promise: Promise<unknown>, code: string) {
  await expect(promise).rejects.toMatchObject({ code });
}

describe('app passwords', () => {
  it('creates one with defaults, shown once and stored only as an argon2id hash', async () => {
    const created = await t.store.appPasswords.create('alice', { name: 'Thunderbird' });
    expect(created.password).toMatch(/^[a-z]{4} [a-z]{4} [a-z]{4} [a-z]{4}$/);
    expect(created.info).toMatchObject({ name: 'Thunderbird', scopes: ['imap', 'pop3'], expiresAt: null, revokedAt: null, lastUsed: null });
    const row = t.store.db.prepare('SELECT * FROM app_passwords WHERE id = ?').get(created.info.id) as Record<string, unknown>;
    expect(String(row.hash)).toMatch(/^\$argon2id\$/);
    const secret = created.password.replace(/ /g, '');
    expect(JSON.stringify(row)).not.toContain(secret);
    expect(JSON.stringify(row)).not.toContain(secret.slice(4));
    expect(row.selector).toBe(secret.slice(0, 4));
  });

  it('uses the configured argon2 parameters', async () => {
    const created = await t.store.appPasswords.create('alice', { name: 'x' });
    const row = t.store.db.prepare('SELECT hash FROM app_passwords WHERE id = ?').get(created.info.id) as { hash: string };
    expect(row.hash).toContain('m=1024,p=1,t=1');
  });

  it('keeps scopes and expiry', async () => {
    const created = await t.store.appPasswords.create('alice', { name: 'Phone', scopes: ['pop3'], expiresAt: clock.now() + 1000 });
    expect(created.info.scopes).toEqual(['pop3']);
    expect(created.info.expiresAt).toBe(clock.now() + 1000);
  });

  it('parses scopes and refuses unknown ones', () => {
    expect(parseScopes('pop3, IMAP')).toEqual(['imap', 'pop3']);
    expect(parseScopes('imap')).toEqual(['imap']);
    expectCode(() => parseScopes('smtp'), ErrorCodes.UNKNOWN_SCOPE);
    expectCode(() => parseScopes(''), ErrorCodes.UNKNOWN_SCOPE);
  });

  it('requires a name, unique among active app passwords of the account', async () => {
    await t.store.appPasswords.create('alice', { name: 'Phone' });
    await expectCodeAsync(t.store.appPasswords.create('alice', { name: 'Phone' }), ErrorCodes.DUPLICATE_NAME);
    await expectCodeAsync(t.store.appPasswords.create('alice', { name: '  ' }), ErrorCodes.INVALID_NAME);
    // Another account may use the same name.
    await t.store.appPasswords.create('bob', { name: 'Phone' });
  });

  it('frees a name once its app password is revoked or expired', async () => {
    const first = await t.store.appPasswords.create('alice', { name: 'Phone' });
    t.store.appPasswords.revoke('alice', first.info.id);
    await t.store.appPasswords.create('alice', { name: 'Phone', expiresAt: clock.now() + 1000 });
    clock.advance(1000);
    await t.store.appPasswords.create('alice', { name: 'Phone' });
    expect(t.store.appPasswords.list('alice').map((p) => p.name)).toEqual(['Phone', 'Phone', 'Phone']);
  });

  it('limits active app passwords per account', async () => {
    for (const name of ['a', 'b', 'c']) await t.store.appPasswords.create('alice', { name });
    await expectCodeAsync(t.store.appPasswords.create('alice', { name: 'd' }), ErrorCodes.TOO_MANY_APP_PASSWORDS);
    expect(t.store.appPasswords.list('alice')).toHaveLength(3);
    const first = t.store.appPasswords.list('alice')[0]!;
    t.store.appPasswords.revoke('alice', first.id);
    await t.store.appPasswords.create('alice', { name: 'd' });
  });

  it('refuses an unknown account', async () => {
    await expectCodeAsync(t.store.appPasswords.create('nobody', { name: 'x' }), ErrorCodes.UNKNOWN_ACCOUNT);
  });

  it('revokes one, refuses a second revoke and ids of other accounts', async () => {
    const mine = await t.store.appPasswords.create('alice', { name: 'a' });
    const bobs = await t.store.appPasswords.create('bob', { name: 'b' });
    const revoked = t.store.appPasswords.revoke('alice', mine.info.id);
    expect(revoked.revokedAt).toBe(clock.now());
    expectCode(() => t.store.appPasswords.revoke('alice', mine.info.id), ErrorCodes.UNKNOWN_APP_PASSWORD);
    expectCode(() => t.store.appPasswords.revoke('alice', bobs.info.id), ErrorCodes.UNKNOWN_APP_PASSWORD);
    expect(t.store.appPasswords.list('bob')[0]!.revokedAt).toBeNull();
  });

  it('revokes all of an account and only that account', async () => {
    await t.store.appPasswords.create('alice', { name: 'a' });
    await t.store.appPasswords.create('alice', { name: 'b' });
    await t.store.appPasswords.create('bob', { name: 'b' });
    expect(t.store.appPasswords.revokeAll('alice')).toBe(2);
    expect(t.store.appPasswords.list('alice').every((p) => p.revokedAt !== null)).toBe(true);
    expect(t.store.appPasswords.list('bob')[0]!.revokedAt).toBeNull();
  });

  it('removing an account removes its app passwords', async () => {
    await t.store.appPasswords.create('alice', { name: 'a' });
    t.store.accounts.remove('alice');
    const count = t.store.db.prepare('SELECT COUNT(*) AS n FROM app_passwords').get() as { n: number };
    expect(count.n).toBe(0);
  });
});
