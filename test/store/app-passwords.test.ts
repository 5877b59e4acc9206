/** App passwords through the Store interface, on every engine. */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ErrorCodes, isMailgateError } from '../../src/errors.js';
import { parseScopes } from '../../src/store/app-password-format.js';
import type { Store } from '../../src/store/store.js';
import { ENGINES, makeEngineStore, manualClock, useEngine, type EngineStore } from '../support/store.js';

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

it('parses scopes and refuses unknown ones', () => {
  expect(parseScopes('pop3, IMAP')).toEqual(['imap', 'pop3']);
  expect(parseScopes('imap')).toEqual(['imap']);
  expectCode(() => parseScopes('smtp'), ErrorCodes.UNKNOWN_SCOPE);
  expectCode(() => parseScopes(''), ErrorCodes.UNKNOWN_SCOPE);
});

describe.each(ENGINES)('app passwords (%s)', (engine) => {
  useEngine(engine);
  let t: EngineStore;
  let store: Store;
  const clock = manualClock();

  beforeEach(async () => {
    clock.set(Date.UTC(2026, 10, 25, 12, 0, 0));
    t = await makeEngineStore(engine, { now: clock.now, maxAppPasswords: 3 });
    store = t.api;
    await store.accounts.add('alice');
    await store.accounts.add('bob');
  });
  afterEach(() => t.cleanup());

  const row = async (id: number) => (await t.rows<Record<string, unknown>>('SELECT * FROM app_passwords WHERE id = ?', [id]))[0]!;

  it('creates one with defaults, shown once and stored only as an argon2id hash', async () => {
    const created = await store.appPasswords.create('alice', { name: 'Thunderbird' });
    expect(created.password).toMatch(/^[a-z]{4} [a-z]{4} [a-z]{4} [a-z]{4}$/);
    expect(created.info).toMatchObject({ name: 'Thunderbird', scopes: ['imap', 'pop3'], expiresAt: null, revokedAt: null, lastUsed: null });
    const stored = await row(created.info.id);
    expect(String(stored.hash)).toMatch(/^\$argon2id\$/);
    const secret = created.password.replace(/ /g, '');
    expect(JSON.stringify(stored)).not.toContain(secret);
    expect(JSON.stringify(stored)).not.toContain(secret.slice(4));
    expect(stored.selector).toBe(secret.slice(0, 4));
  });

  it('uses the configured argon2 parameters', async () => {
    const created = await store.appPasswords.create('alice', { name: 'x' });
    expect(String((await row(created.info.id)).hash)).toContain('m=1024,p=1,t=1');
  });

  it('keeps scopes and expiry', async () => {
    const created = await store.appPasswords.create('alice', { name: 'Phone', scopes: ['pop3'], expiresAt: clock.now() + 1000 });
    expect(created.info.scopes).toEqual(['pop3']);
    expect(created.info.expiresAt).toBe(clock.now() + 1000);
  });

  it('requires a name, unique among active app passwords of the account', async () => {
    await store.appPasswords.create('alice', { name: 'Phone' });
    await expectCodeAsync(store.appPasswords.create('alice', { name: 'Phone' }), ErrorCodes.DUPLICATE_NAME);
    await expectCodeAsync(store.appPasswords.create('alice', { name: '  ' }), ErrorCodes.INVALID_NAME);
    // Another account may use the same name.
    await store.appPasswords.create('bob', { name: 'Phone' });
  });

  it('frees a name once its app password is revoked or expired', async () => {
    const first = await store.appPasswords.create('alice', { name: 'Phone' });
    await store.appPasswords.revoke('alice', first.info.id);
    await store.appPasswords.create('alice', { name: 'Phone', expiresAt: clock.now() + 1000 });
    clock.advance(1000);
    await store.appPasswords.create('alice', { name: 'Phone' });
    expect((await store.appPasswords.list('alice')).map((p) => p.name)).toEqual(['Phone', 'Phone', 'Phone']);
  });

  it('limits active app passwords per account', async () => {
    for (const name of ['a', 'b', 'c']) await store.appPasswords.create('alice', { name });
    await expectCodeAsync(store.appPasswords.create('alice', { name: 'd' }), ErrorCodes.TOO_MANY_APP_PASSWORDS);
    expect(await store.appPasswords.list('alice')).toHaveLength(3);
    const first = (await store.appPasswords.list('alice'))[0]!;
    await store.appPasswords.revoke('alice', first.id);
    await store.appPasswords.create('alice', { name: 'd' });
  });

  it('keeps the limit when two processes (or nodes) create at once', async () => {
    // Catches: a check outside the write's lock, which lets concurrent creates pass the limit together.
    const other = await t.open({ now: clock.now, maxAppPasswords: 3 });
    const results = await Promise.allSettled(['a', 'b', 'c', 'd', 'e', 'f'].map((name, i) => (i % 2 ? other : store).appPasswords.create('alice', { name })));
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(3);
    for (const r of results) if (r.status === 'rejected') expect(r.reason).toMatchObject({ code: ErrorCodes.TOO_MANY_APP_PASSWORDS });
    expect(await store.appPasswords.list('alice')).toHaveLength(3);
  });

  it('refuses an unknown account', async () => {
    await expectCodeAsync(store.appPasswords.create('nobody', { name: 'x' }), ErrorCodes.UNKNOWN_ACCOUNT);
  });

  it('revokes one, refuses a second revoke and ids of other accounts', async () => {
    const mine = await store.appPasswords.create('alice', { name: 'a' });
    const bobs = await store.appPasswords.create('bob', { name: 'b' });
    const revoked = await store.appPasswords.revoke('alice', mine.info.id);
    expect(revoked.revokedAt).toBe(clock.now());
    await expectCodeAsync(store.appPasswords.revoke('alice', mine.info.id), ErrorCodes.UNKNOWN_APP_PASSWORD);
    await expectCodeAsync(store.appPasswords.revoke('alice', bobs.info.id), ErrorCodes.UNKNOWN_APP_PASSWORD);
    expect((await store.appPasswords.list('bob'))[0]!.revokedAt).toBeNull();
  });

  it('revokes all of an account and only that account', async () => {
    await store.appPasswords.create('alice', { name: 'a' });
    await store.appPasswords.create('alice', { name: 'b' });
    await store.appPasswords.create('bob', { name: 'b' });
    expect(await store.appPasswords.revokeAll('alice')).toBe(2);
    expect((await store.appPasswords.list('alice')).every((p) => p.revokedAt !== null)).toBe(true);
    expect((await store.appPasswords.list('bob'))[0]!.revokedAt).toBeNull();
  });

  it('removing an account removes its app passwords', async () => {
    await store.appPasswords.create('alice', { name: 'a' });
    await store.accounts.remove('alice');
    expect(await t.rows('SELECT id FROM app_passwords')).toEqual([]);
  });
});
