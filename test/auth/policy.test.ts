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

  it('while the account is blocked (appPasswordsOnly), checks app passwords only: nothing is passed through', async () => {
    // Catches: a blocked account whose main password still reaches the upstream from a fresh
    // address, or an owner locked out of a working app password.
    const created = await t.store.appPasswords.create('alice', { name: 'phone' });
    const blocked = (user: string, password: string) => ({ ...loginAttempt(user, password), appPasswordsOnly: true });
    const verifications = () => t.store.hasher.stats.verifications;
    let before = verifications();
    // The main password: not checked at all (the guard refuses it first; the policy never checks one either).
    expect(await policy().decide(blocked('alice', 'main-password'))).toMatchObject({ outcome: 'temporary', reason: 'blocked' });
    expect(verifications()).toBe(before);
    // A main password shaped like an app password: checked against app passwords, refused, not passed through.
    before = verifications();
    expect(await policy().decide(blocked('alice', 'abcdefghijklmnop'))).toMatchObject({ outcome: 'refuse', reason: 'wrong-password' });
    expect(verifications() - before).toBe(1);
    // A user mailgate does not know is not passed through either, and costs the same one hash.
    before = verifications();
    expect(await policy({ unknown_users: 'passthrough' }).decide(blocked('nobody', 'abcdefghijklmnop'))).toMatchObject({ outcome: 'refuse', reason: 'unknown-account' });
    expect(verifications() - before).toBe(1);
    // The owner's app password still works.
    expect(await policy().decide(blocked('alice', created.password))).toMatchObject({ outcome: 'accept', mode: 'app-password' });
  });

  it('records a success in one commit, a passthrough user unknown to mailgate included, and throws when it cannot', async () => {
    // Catches: a login let in although its record was not written (the session turns this throw
    // into a temporary failure), and passthrough logins that write nothing, so a read-only or
    // locked store goes unnoticed.
    const created = await t.store.appPasswords.create('alice', { name: 'phone' });
    const p = policy({ unknown_users: 'passthrough' });
    const app = await p.decide(loginAttempt('alice', created.password));
    const pass = await p.decide(loginAttempt(' Nobody ', 'upstream-pw'));
    if (app.outcome !== 'accept' || pass.outcome !== 'accept') throw new Error('expected both to be accepted');
    p.recordSuccess(loginAttempt('alice', created.password), app);
    p.recordSuccess(loginAttempt(' Nobody ', 'upstream-pw'), pass);
    expect(t.store.appPasswords.list('alice')[0]!.lastUsed).toMatchObject({ ip: '192.0.2.1', protocol: 'imap' });
    expect(t.store.audit.list({ username: 'Nobody' })).toEqual([expect.objectContaining({ event: 'login-ok', detail: 'upstream-password', ip: '192.0.2.1' })]);

    const okEvents = () => t.store.audit.list().filter((e) => e.event === 'login-ok').length;
    const before = okEvents();
    t.store.db.pragma('query_only = ON');
    expect(() => p.recordSuccess(loginAttempt('alice', created.password), app)).toThrow(/readonly/);
    expect(() => p.recordSuccess(loginAttempt(' Nobody ', 'upstream-pw'), pass)).toThrow(/readonly/);
    t.store.db.pragma('query_only = OFF');
    expect(okEvents()).toBe(before);

    // One commit: when the audit row cannot be written, the last use is not written either.
    const lastUsed = t.store.appPasswords.list('alice')[0]!.lastUsed;
    t.store.db.exec("CREATE TEMP TRIGGER no_audit BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'audit refused'); END");
    expect(() => p.recordSuccess({ ...loginAttempt('alice', created.password), clientIp: '198.51.100.7' }, app)).toThrow(/audit refused/);
    t.store.db.exec('DROP TRIGGER no_audit');
    expect(t.store.appPasswords.list('alice')[0]!.lastUsed).toEqual(lastUsed);
  });

  it('is temporary when no master password is configured', async () => {
    const created = await t.store.appPasswords.create('tfa', { name: 'tb' });
    expect(await policy({}, null).decide(loginAttempt('tfa', created.password))).toMatchObject({ outcome: 'temporary', reason: 'master-password-missing' });
  });
});
