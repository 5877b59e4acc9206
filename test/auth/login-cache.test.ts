/**
 * The verified-login cache: warm logins skip argon2, but every hit still reads
 * the app password's row, so revocations (even from the CLI, another process)
 * apply to the very next login.
 */
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { LoginCache } from '../../src/auth/login-cache.js';
import { AuthPolicy } from '../../src/auth/policy.js';
import { parseConfig } from '../../src/config/load.js';
import { runCli } from '../support/cli.js';
import { loginAttempt } from '../support/auth.js';
import { enableTotp, makeTestStore, manualClock, type TestStore } from '../support/store.js';

const clock = manualClock();
let t: TestStore;
let policy: AuthPolicy;
let cache: LoginCache;
const lookups: string[] = [];

function makePolicy(options: Partial<ConstructorParameters<typeof LoginCache>[0]> = {}) {
  cache = new LoginCache({ ttlMs: 900_000, maxEntries: 100, negativeTtlMs: 300_000, negativeMaxEntries: 100, ...options }, clock.now);
  policy = new AuthPolicy(t.api, t.store.hasher, parseConfig({}, 'test'), Buffer.from('master'), { cache, onCacheLookup: (r) => lookups.push(r) });
}

/** argon2 verifications a login costs. */
async function cost(user: string, password: string, protocol: 'imap' | 'pop3' = 'imap') {
  const before = t.store.hasher.stats.verifications;
  const decision = await policy.decide(loginAttempt(user, password, protocol));
  return { decision, hashes: t.store.hasher.stats.verifications - before };
}

beforeEach(async () => {
  clock.set(Date.UTC(2026, 10, 25, 12, 0, 0));
  lookups.length = 0;
  t = await makeTestStore({ now: clock.now });
  for (const u of ['alice', 'bob', 'carol']) t.store.accounts.add(u);
  makePolicy();
});
afterEach(() => t.cleanup());

describe('verified-login cache', () => {
  it('skips argon2 on the second login with the same credentials', async () => {
    const { password } = await t.store.appPasswords.create('alice', { name: 'tb' });
    expect(await cost('alice', password)).toMatchObject({ hashes: 1, decision: { outcome: 'accept', mode: 'app-password' } });
    // Spaces and case do not matter: the canonical form is what is cached.
    expect(await cost('ALICE', password.replace(/ /g, '').toUpperCase())).toMatchObject({ hashes: 0, decision: { outcome: 'accept' } });
    expect(lookups).toEqual(['miss', 'hit']);
  });

  it('never holds the password itself', async () => {
    const { password } = await t.store.appPasswords.create('alice', { name: 'tb' });
    await cost('alice', password);
    const secret = password.replace(/ /g, '');
    const dump = JSON.stringify([...(cache as unknown as { verified: { map: Map<string, unknown> } }).verified.map.entries()]);
    expect(dump).not.toContain(secret);
    expect(dump).not.toContain(secret.slice(4));
  });

  it('refuses the next login after a revoke from the CLI, even with a warm cache', async () => {
    const { password, info } = await t.store.appPasswords.create('alice', { name: 'tb' });
    await cost('alice', password);
    const config = path.join(t.dir, 'cli.toml');
    writeFileSync(config, `[store]\npath = "${t.options.path}"\nkey_file = "${t.options.keyFile}"\n`);
    const revoked = await runCli(['--config', config, 'app-password', 'revoke', 'alice', String(info.id)]);
    expect(revoked.code, revoked.stderr).toBe(0);
    const next = await cost('alice', password);
    expect(next.decision).toMatchObject({ outcome: 'refuse', reason: 'revoked' });
    expect(lookups).toEqual(['miss', 'stale']);
  });

  it('does not take a new row that reused a deleted one\'s id for the row that was verified', async () => {
    // SQLite reuses the id of a deleted last row: remove the account, add it again and give it
    // a new app password, and both get the old ids. The old (deleted) password must not work.
    const old = await t.store.appPasswords.create('carol', { name: 'tb' });
    expect(await cost('carol', old.password)).toMatchObject({ decision: { outcome: 'accept' } });
    const oldAccountId = t.store.accounts.get('carol').id;
    t.store.accounts.remove('carol');
    clock.advance(1000);
    t.store.accounts.add('carol');
    const fresh = await t.store.appPasswords.create('carol', { name: 'tb' });
    expect(t.store.accounts.get('carol').id).toBe(oldAccountId);
    expect(fresh.info.id).toBe(old.info.id);
    const again = await cost('carol', old.password);
    expect(again.decision).toMatchObject({ outcome: 'accept', mode: 'upstream-password' }); // no 2FA: passed through, not an app-password login
    expect(again.hashes).toBe(1);
    expect(lookups.at(-1)).toBe('stale');
  });

  it('re-checks scope and expiry on a hit', async () => {
    const { password } = await t.store.appPasswords.create('alice', { name: 'tb', scopes: ['imap'], expiresAt: clock.now() + 60_000 });
    await cost('alice', password);
    expect((await cost('alice', password, 'pop3')).decision).toMatchObject({ outcome: 'refuse', reason: 'out-of-scope' });
    await cost('alice', password); // warm again
    clock.advance(60_000);
    expect((await cost('alice', password)).decision).toMatchObject({ outcome: 'refuse', reason: 'expired' });
  });

  it('drops an entry when the account turns TOTP on', async () => {
    const { password } = await t.store.appPasswords.create('alice', { name: 'tb' });
    await cost('alice', password);
    enableTotp(t.store, 'alice', clock.now());
    // The app password is still good, but the entry was made under another TOTP state: verify afresh.
    expect(await cost('alice', password)).toMatchObject({ hashes: 1, decision: { outcome: 'accept' } });
    expect(lookups).toEqual(['miss', 'stale']);
  });

  it('expires entries after the TTL', async () => {
    makePolicy({ ttlMs: 10_000 });
    const { password } = await t.store.appPasswords.create('alice', { name: 'tb' });
    await cost('alice', password);
    clock.advance(9_999);
    expect((await cost('alice', password)).hashes).toBe(0);
    clock.advance(10_001);
    expect((await cost('alice', password)).hashes).toBe(1);
  });

  it('is off with a TTL of 0', async () => {
    makePolicy({ ttlMs: 0 });
    const { password } = await t.store.appPasswords.create('alice', { name: 'tb' });
    await cost('alice', password);
    expect((await cost('alice', password)).hashes).toBe(1);
  });

  it('is bounded, and evicts the least recently used entry', async () => {
    makePolicy({ maxEntries: 2 });
    const a = await t.store.appPasswords.create('alice', { name: 'tb' });
    const b = await t.store.appPasswords.create('bob', { name: 'tb' });
    const c = await t.store.appPasswords.create('carol', { name: 'tb' });
    await cost('alice', a.password);
    await cost('bob', b.password);
    await cost('alice', a.password); // alice is now the most recently used
    await cost('carol', c.password); // evicts bob
    expect(cache.size.verified).toBe(2);
    expect((await cost('alice', a.password)).hashes).toBe(0);
    expect((await cost('bob', b.password)).hashes).toBe(1);
  });

  it('remembers a wrong guess so repeating it costs no hashing, and still refuses it', async () => {
    await t.store.appPasswords.create('alice', { name: 'tb' });
    // With 2FA on, a wrong app password is refused outright (without 2FA it would go upstream as a main password).
    enableTotp(t.store, 'alice', clock.now());
    const guess = 'qqqq wwww eeee rrrr';
    expect(await cost('alice', guess)).toMatchObject({ hashes: 1, decision: { outcome: 'refuse' } });
    expect(await cost('alice', guess)).toMatchObject({ hashes: 0, decision: { outcome: 'refuse' } });
    expect(await cost('nobody', guess)).toMatchObject({ hashes: 1, decision: { outcome: 'refuse', reason: 'unknown-account' } });
    expect(await cost('nobody', guess)).toMatchObject({ hashes: 0, decision: { outcome: 'refuse', reason: 'unknown-account' } });
  });
});
