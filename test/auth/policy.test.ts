import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AuthPolicy } from '../../src/auth/policy.js';
import { parseConfig } from '../../src/config/load.js';
import { silentLogger } from '../../src/log/logger.js';
import { StoreHandle } from '../../src/store/store-handle.js';
import { loginAttempt } from '../support/auth.js';
import { enableTotp, makeTestStore, type TestStore } from '../support/store.js';

let t: TestStore;
let handle: StoreHandle;

function policy(overrides: Record<string, unknown> = {}, master: Buffer | null = Buffer.from('master-secret')) {
  return new AuthPolicy(handle, parseConfig({ policy: overrides }, 'test'), master);
}

beforeEach(async () => {
  t = await makeTestStore();
  handle = new StoreHandle(t.options, silentLogger(), t.store);
  t.store.accounts.add('alice');
  t.store.accounts.add('tfa');
  enableTotp(t.store, 'tfa');
});
afterEach(() => t.cleanup());

describe('AuthPolicy', () => {
  it('logs an app password in as the master user on the account', async () => {
    const created = await t.store.appPasswords.create('tfa', { name: 'tb' });
    const decision = await policy().decide(loginAttempt(' TFA ', created.password));
    expect(decision).toMatchObject({ outcome: 'accept', mode: 'app-password', upstream: { kind: 'master', user: 'tfa', masterUser: 'gwmaster', style: 'authzid' } });
  });

  it('refuses the main password of an account with 2FA, and any wrong app password', async () => {
    expect(await policy().decide(loginAttempt('tfa', 'main-password'))).toMatchObject({ outcome: 'refuse', reason: 'two-factor-required' });
    expect(await policy().decide(loginAttempt('tfa', 'abcd efgh ijkl mnop'))).toMatchObject({ outcome: 'refuse', reason: 'wrong-password' });
  });

  it('passes the main password of an account without 2FA through, unless told not to', async () => {
    expect(await policy().decide(loginAttempt('Alice', 'main-password'))).toMatchObject({
      outcome: 'accept',
      mode: 'upstream-password',
      upstream: { kind: 'passthrough', user: 'Alice' },
    });
    // A main password that happens to look like an app password is still passed through.
    expect(await policy().decide(loginAttempt('alice', 'abcdefghijklmnop'))).toMatchObject({ outcome: 'accept', mode: 'upstream-password' });
    expect(await policy({ main_password_without_2fa: 'reject' }).decide(loginAttempt('alice', 'main-password'))).toMatchObject({
      outcome: 'refuse',
      reason: 'main-password-disabled',
    });
  });

  it('refuses or passes through unknown users per policy', async () => {
    expect(await policy().decide(loginAttempt('nobody', 'pw'))).toMatchObject({ outcome: 'refuse', reason: 'unknown-account' });
    expect(await policy({ unknown_users: 'passthrough' }).decide(loginAttempt('nobody', 'pw'))).toMatchObject({
      outcome: 'accept',
      mode: 'upstream-password',
      account: null,
    });
  });

  it('refuses revoked, expired and out-of-scope app passwords with the reason', async () => {
    const revoked = await t.store.appPasswords.create('tfa', { name: 'r' });
    t.store.appPasswords.revoke('tfa', revoked.info.id);
    const imapOnly = await t.store.appPasswords.create('tfa', { name: 'i', scopes: ['imap'] });
    expect(await policy().decide(loginAttempt('tfa', revoked.password))).toMatchObject({ outcome: 'refuse', reason: 'revoked' });
    expect(await policy().decide(loginAttempt('tfa', imapOnly.password, 'pop3'))).toMatchObject({ outcome: 'refuse', reason: 'out-of-scope' });
  });

  it('costs one argon2 verification on every local refusal', async () => {
    for (const [user, pw] of [
      ['nobody', 'x'],
      ['tfa', 'main'],
      ['tfa', 'abcdefghijklmnop'],
      ['bad\u0000name', 'x'],
    ] as const) {
      const before = t.store.hasher.stats.verifications;
      await policy().decide(loginAttempt(user, pw));
      expect(t.store.hasher.stats.verifications - before, `${user}`).toBe(1);
    }
  });

  it('fails closed, as temporary, when the store cannot be read', async () => {
    t.store.db.exec('DROP TABLE app_passwords');
    const decision = await policy().decide(loginAttempt('tfa', 'abcd efgh ijkl mnop'));
    expect(decision).toMatchObject({ outcome: 'temporary', reason: 'store-unavailable' });
  });

  it('is temporary when no master password is configured', async () => {
    const created = await t.store.appPasswords.create('tfa', { name: 'tb' });
    expect(await policy({}, null).decide(loginAttempt('tfa', created.password))).toMatchObject({ outcome: 'temporary', reason: 'master-password-missing' });
  });
});
