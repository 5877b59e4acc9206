import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { LoginCache } from '../../src/auth/login-cache.js';
import { AuthPolicy } from '../../src/auth/policy.js';
import { parseConfig } from '../../src/config/load.js';
import { loginAttempt } from '../support/auth.js';
import { enableTotp, makeTestStore, type TestStore } from '../support/store.js';

let t: TestStore;

function policy(overrides: Record<string, unknown> = {}, master: Buffer | null = Buffer.from('master-secret')) {
  return new AuthPolicy(t.api, t.store.hasher, parseConfig({ policy: overrides }, 'test'), master);
}

beforeEach(async () => {
  t = await makeTestStore();
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

  it('reads the store once before argon2 for an app password: the account comes with its candidate', async () => {
    // Catches: the policy reading the account, then the credential check reading it again (a round
    // trip more on every cold login, where the store is another process).
    const created = await t.store.appPasswords.create('tfa', { name: 'tb' });
    const find = vi.spyOn(t.api.accounts, 'find');
    const lookup = vi.spyOn(t.api.logins, 'lookup');
    const check = vi.spyOn(t.api.logins, 'check');
    expect(await policy().decide(loginAttempt('tfa', created.password))).toMatchObject({ outcome: 'accept', mode: 'app-password' });
    expect(await policy().decide(loginAttempt('tfa', 'abcd efgh ijkl mnop'))).toMatchObject({ outcome: 'refuse', reason: 'wrong-password' });
    expect(await policy().decide(loginAttempt('nobody', 'abcd efgh ijkl mnop'))).toMatchObject({ outcome: 'refuse', reason: 'unknown-account' });
    expect(lookup).toHaveBeenCalledTimes(3);
    expect(find).not.toHaveBeenCalled();
    expect(check).not.toHaveBeenCalled();
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

  it('is temporary when no master password is configured', async () => {
    const created = await t.store.appPasswords.create('tfa', { name: 'tb' });
    expect(await policy({}, null).decide(loginAttempt('tfa', created.password))).toMatchObject({ outcome: 'temporary', reason: 'master-password-missing' });
  });
});

describe("AuthPolicy: Dovecot's master-user syntax and SASL authzid", () => {
  it('refuses any name with the separator, as typed or as authzid, whatever master_style is, counting it against the account it names', async () => {
    // Catches: "alice*alice" passed through as an unknown name (Dovecot logs alice in with her main
    // password although she has 2FA), or checked against a fresh per-name failure budget.
    for (const style of ['authzid', 'separator'] as const) {
      const p = new AuthPolicy(t.api, t.store.hasher, parseConfig({ policy: { unknown_users: 'passthrough' }, upstream: { login: { master_style: style } } }, 'test'), Buffer.from('m'));
      for (const [username, authzid] of [['tfa*tfa', ''], ['TFA*gwmaster', ''], ['bob*bob', ''], ['bob', 'bob*bob']] as const) {
        const before = t.store.hasher.stats.verifications;
        const decision = await p.decide({ ...loginAttempt(username, 'pw'), authzid });
        expect(decision, `${username} / ${authzid}`).toMatchObject({ outcome: 'refuse', reason: 'master-user-syntax' });
        // Timing: it costs its argon2 run like any local refusal.
        expect(t.store.hasher.stats.verifications - before).toBe(1);
      }
      expect(p.penaltyAccount('tfa*gwmaster')).toBe('tfa');
      expect(p.penaltyAccount('alice')).toBe('alice');
    }
    // Another separator: that one is refused, "*" is then an ordinary character of a name.
    const plus = new AuthPolicy(t.api, t.store.hasher, parseConfig({ policy: { unknown_users: 'passthrough' }, upstream: { login: { separator: '+' } } }, 'test'), Buffer.from('m'));
    expect(await plus.decide(loginAttempt('tfa+x', 'pw'))).toMatchObject({ outcome: 'refuse', reason: 'master-user-syntax' });
    expect(await plus.decide(loginAttempt('odd*name', 'pw'))).toMatchObject({ outcome: 'accept', mode: 'upstream-password' });
  });

  it('refuses an authzid naming someone else like any failure, and takes one naming the user (any case, spaces)', async () => {
    const created = await t.store.appPasswords.create('tfa', { name: 'tb' });
    expect(await policy().decide({ ...loginAttempt('tfa', created.password), authzid: 'alice' })).toMatchObject({ outcome: 'refuse', reason: 'authzid-mismatch', username: 'tfa' });
    expect(await policy().decide({ ...loginAttempt('tfa', created.password), authzid: ' TFA ' })).toMatchObject({ outcome: 'accept', mode: 'app-password' });
  });
});

describe('AuthPolicy: repeats and a busy hasher', () => {
  function cached(overrides: Record<string, unknown> = {}) {
    const cache = new LoginCache({ ttlMs: 60_000, maxEntries: 100, negativeTtlMs: 60_000, negativeMaxEntries: 100 });
    return new AuthPolicy(t.api, t.store.hasher, parseConfig({ policy: overrides }, 'test'), Buffer.from('master-secret'), { cache });
  }
  const verifications = () => t.store.hasher.stats.verifications;

  it('answers a repeated refusal again without a hash, whatever the password looks like', async () => {
    // Catches: every repeat of one wrong password running argon2 (a storm fills the hasher).
    const p = cached();
    for (const [user, password, reason] of [
      ['nobody', 'wrong', 'unknown-account'],
      ['tfa', 'main-password', 'two-factor-required'],
      ['tfa', 'abcd efgh ijkl mnop', 'wrong-password'],
      ['tfa*tfa', 'pw', 'master-user-syntax'],
      ['bad\u0000name', 'x', 'invalid-username'],
    ] as const) {
      expect(await p.decide(loginAttempt(user, password)), user).toMatchObject({ outcome: 'refuse', reason });
      const before = verifications();
      const again = await p.decide(loginAttempt(user, password));
      expect(again, user).toMatchObject({ outcome: 'refuse', reason, repeat: true });
      expect(verifications() - before, user).toBe(0);
      // Another protocol, another password: not the same attempt.
      expect(await p.decide(loginAttempt(user, password, 'pop3')), user).not.toHaveProperty('repeat');
    }
  });

  it('does not trust a remembered refusal once the account changed', async () => {
    // Catches: "unknown account" remembered after the account was added, or "two-factor required"
    // after 2FA was turned off: the user's right password refused for minutes.
    const p = cached();
    expect(await p.decide(loginAttempt('newbie', 'upstream-pw'))).toMatchObject({ outcome: 'refuse', reason: 'unknown-account' });
    t.store.accounts.add('newbie');
    expect(await p.decide(loginAttempt('newbie', 'upstream-pw'))).toMatchObject({ outcome: 'accept', mode: 'upstream-password' });
    expect(await p.decide(loginAttempt('tfa', 'tfa-main'))).toMatchObject({ outcome: 'refuse', reason: 'two-factor-required' });
    t.store.totp.disable('tfa');
    expect(await p.decide(loginAttempt('tfa', 'tfa-main'))).toMatchObject({ outcome: 'accept', mode: 'upstream-password' });
  });

  it('decides one attempt once when it arrives several times at once', async () => {
    const p = cached();
    const before = verifications();
    const decisions = await Promise.all([1, 2, 3, 4].map(() => p.decide(loginAttempt('ghost', 'same-guess'))));
    expect(verifications() - before).toBe(1);
    expect(decisions.filter((d) => d.outcome === 'refuse' && d.repeat)).toHaveLength(3);
  });

  it('while the hasher is full, turns every fresh attempt away before reading the account, but lets a verified login in', async () => {
    // Catches: "busy" answered only on the paths that hash (an instant NO [UNAVAILABLE] for 2FA and
    // unknown accounts, a slow refusal for the others: an enumeration oracle).
    const p = cached();
    const created = await t.store.appPasswords.create('tfa', { name: 'tb' });
    expect(await p.decide(loginAttempt('tfa', created.password))).toMatchObject({ outcome: 'accept' });
    const full = vi.spyOn(t.store.hasher, 'hasCapacity').mockReturnValue(false);
    const lookups = vi.spyOn(t.store.accounts, 'find');
    try {
      for (const [user, password] of [['nobody', 'x'], ['tfa', 'main'], ['alice', 'main'], ['tfa', 'zzzz yyyy xxxx wwww']] as const) {
        expect(await p.decide(loginAttempt(user, password)), user).toMatchObject({ outcome: 'temporary', reason: 'hash-busy' });
      }
      expect(lookups).not.toHaveBeenCalled();
      // The owner of a verified app password needs no hash, and gets in.
      expect(await p.decide(loginAttempt('tfa', created.password))).toMatchObject({ outcome: 'accept', mode: 'app-password' });
    } finally {
      full.mockRestore();
      lookups.mockRestore();
    }
  });
});
