/**
 * Recovery codes, through the Store interface: made when two-step
 * verification is turned on (and on demand), each good once in any spacing
 * and case, kept as keyed hashes, gone when it is turned off.
 */
import { createHash } from 'node:crypto';
import path from 'node:path';
import { generateSync } from 'otplib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ErrorCodes } from '../../src/errors.js';
import {
  canonicalRecoveryCode,
  formatRecoveryCode,
  generateRecoveryCodes,
  RECOVERY_CODE_COUNT,
  recoveryCodeDigest,
} from '../../src/store/recovery-code-format.js';
import { deriveKey, loadOrCreateKey } from '../../src/store/secret-box.js';
import { ENGINES, makeEngineStore, manualClock, useEngine, type EngineStore } from '../support/store.js';

const CODE_SHAPE = /^[a-z2-7]{4}-[a-z2-7]{4}-[a-z2-7]{4}-[a-z2-7]{4}$/;

describe('recovery code format', () => {
  it('generates distinct 80-bit codes over the lower-case base32 alphabet, shown in four groups', () => {
    const seen = new Set<string>();
    const chars = new Set<string>();
    for (let i = 0; i < 100; i++) {
      const codes = generateRecoveryCodes();
      expect(codes).toHaveLength(RECOVERY_CODE_COUNT);
      for (const code of codes) {
        expect(code.canonical).toMatch(/^[a-z2-7]{16}$/);
        expect(code.display).toBe(formatRecoveryCode(code.canonical));
        expect(code.display).toMatch(CODE_SHAPE);
        seen.add(code.canonical);
        for (const c of code.canonical) chars.add(c);
      }
    }
    expect(seen.size).toBe(100 * RECOVERY_CODE_COUNT);
    expect(chars.size).toBe(32);
  });

  it('accepts what users type: dashes or spaces or neither, any case; refuses anything else', () => {
    for (const typed of ['abcd-efgh-ijkl-mn23', 'abcdefghijklmn23', ' ABCD EFGH ijkl-MN23 ', 'abcd\tefgh-ijkl-mn23']) {
      expect(canonicalRecoveryCode(typed)).toBe('abcdefghijklmn23');
    }
    for (const typed of ['', 'abcd-efgh-ijkl-mn2', 'abcd-efgh-ijkl-mn234', 'abcd-efgh-ijkl-mn01', 'abcd-efgh-ijkl-mn2_', 'äbcd-efgh-ijkl-mn23']) {
      expect(canonicalRecoveryCode(typed)).toBeNull();
    }
  });
});

describe.each(ENGINES)('RecoveryCodeStore (%s)', (engine) => {
  useEngine(engine);
  let t: EngineStore;
  const clock = manualClock();

  beforeEach(async () => {
    clock.set(Date.UTC(2026, 10, 25, 12, 0, 0));
    t = await makeEngineStore(engine, { now: clock.now });
    await t.api.accounts.add('alice');
    await t.api.accounts.add('bob');
  });
  afterEach(() => t.cleanup());

  /** Turns two-step verification on through the interface; the recovery codes it made. */
  async function turnOn(user: string): Promise<string[]> {
    const { secret } = await t.api.totp.enroll(user);
    const { account, recoveryCodes } = await t.api.totp.confirm(user, generateSync({ secret, epoch: clock.now() / 1000 }));
    expect(account.totpState).toBe('enabled');
    return recoveryCodes;
  }

  const rows = () => t.rows<{ account_id: number; code_hash: string; used_at: number | null }>('SELECT account_id, code_hash, used_at FROM recovery_codes ORDER BY id');

  it('turning two-step verification on makes ten codes, shown once, audited', async () => {
    const codes = await turnOn('alice');
    expect(codes).toHaveLength(RECOVERY_CODE_COUNT);
    expect(new Set(codes).size).toBe(RECOVERY_CODE_COUNT);
    for (const code of codes) expect(code).toMatch(CODE_SHAPE);
    expect(await t.api.recoveryCodes.remaining('alice')).toBe(10);
    expect(await t.api.recoveryCodes.remaining('bob')).toBe(0);
    const [latest] = await t.api.audit.list({ username: 'alice', limit: 1 });
    expect(latest).toMatchObject({ event: 'recovery-codes-created', detail: '10' });
  });

  it('spends each code once, in any spacing and case; wrong, used or foreign codes are refused', async () => {
    const codes = await turnOn('alice');
    const bobCodes = await turnOn('bob');
    const [first, second, third] = codes as [string, string, string];
    expect(await t.api.recoveryCodes.consume('alice', first)).toBe(true);
    expect(await t.api.recoveryCodes.consume('alice', first)).toBe(false);
    expect(await t.api.recoveryCodes.consume('ALICE', ` ${second.replace(/-/g, ' ').toUpperCase()} `)).toBe(true);
    expect(await t.api.recoveryCodes.consume('alice', second)).toBe(false);
    // Another account's code, a near miss, garbage, an unknown account.
    expect(await t.api.recoveryCodes.consume('alice', bobCodes[0]!)).toBe(false);
    const nearMiss = third.slice(0, -1) + (third.endsWith('a') ? 'b' : 'a');
    expect(await t.api.recoveryCodes.consume('alice', nearMiss)).toBe(false);
    expect(await t.api.recoveryCodes.consume('alice', 'not a code')).toBe(false);
    expect(await t.api.recoveryCodes.consume('nobody', third)).toBe(false);
    expect(await t.api.recoveryCodes.consume('alice', third.replace(/-/g, ''))).toBe(true);
    expect(await t.api.recoveryCodes.remaining('alice')).toBe(7);
    expect(await t.api.recoveryCodes.remaining('bob')).toBe(10);
    const used = (await t.api.audit.list({ username: 'alice' })).filter((r) => r.event === 'recovery-code-used');
    expect(used.map((r) => r.detail)).toEqual(['7', '8', '9']);
    expect((await rows()).filter((r) => r.used_at !== null)).toHaveLength(3);
  });

  it('a code spent through one connection is refused through another (the guard is in the database)', async () => {
    const codes = await turnOn('alice');
    const code = codes[0];
    const other = await t.open({ now: clock.now });
    expect(await other.recoveryCodes.consume('alice', code!)).toBe(true);
    expect(await t.api.recoveryCodes.consume('alice', code!)).toBe(false);
    expect(await other.recoveryCodes.consume('alice', code!)).toBe(false);
    // Many at once, on both: exactly one spends it.
    const next = codes[1]!;
    const all = await Promise.all(Array.from({ length: 12 }, (_, i) => (i % 2 ? other : t.api).recoveryCodes.consume('alice', next)));
    expect(all.filter(Boolean)).toHaveLength(1);
  });

  it('regenerate replaces every code (the old ones stop working), audited; refused without two-step verification', async () => {
    await expect(t.api.recoveryCodes.regenerate('alice')).rejects.toMatchObject({ code: ErrorCodes.TOTP_STATE });
    await expect(t.api.recoveryCodes.regenerate('nobody')).rejects.toMatchObject({ code: ErrorCodes.UNKNOWN_ACCOUNT });
    const old = await turnOn('alice');
    await t.api.recoveryCodes.consume('alice', old[0]!);
    const fresh = await t.api.recoveryCodes.regenerate('alice');
    expect(fresh).toHaveLength(10);
    expect(fresh.filter((c) => old.includes(c))).toEqual([]);
    expect(await t.api.recoveryCodes.remaining('alice')).toBe(10);
    expect(await rows()).toHaveLength(10);
    for (const code of old) expect(await t.api.recoveryCodes.consume('alice', code)).toBe(false);
    expect(await t.api.recoveryCodes.consume('alice', fresh[9]!)).toBe(true);
    const events = (await t.api.audit.list({ username: 'alice' })).map((r) => r.event).filter((e) => e.startsWith('recovery'));
    expect(events).toEqual(['recovery-code-used', 'recovery-codes-created', 'recovery-code-used', 'recovery-codes-created']);
  });

  it('turning two-step verification off deletes the codes; turning it on again makes new ones', async () => {
    const codes = await turnOn('alice');
    await t.api.totp.disable('alice');
    expect(await rows()).toEqual([]);
    expect(await t.api.recoveryCodes.remaining('alice')).toBe(0);
    expect(await t.api.recoveryCodes.consume('alice', codes[0]!)).toBe(false);
    clock.advance(60_000);
    const again = await turnOn('alice');
    expect(again.filter((c) => codes.includes(c))).toEqual([]);
    expect(await t.api.recoveryCodes.consume('alice', codes[1]!)).toBe(false);
    expect(await t.api.recoveryCodes.consume('alice', again[0]!)).toBe(true);
  });

  it('removing the account removes its codes', async () => {
    await turnOn('alice');
    await t.api.accounts.remove('alice');
    expect(await rows()).toEqual([]);
  });

  it('keeps HMAC-SHA-256 under a subkey of the key file, bound to the account: not the code, not a plain hash', async () => {
    const codes = await turnOn('alice');
    const canonical = codes.map((c) => canonicalRecoveryCode(c)!);
    const stored = (await rows()).map((r) => r.code_hash);
    const key = loadOrCreateKey(t.keyFile);
    const subkey = deriveKey(key, 'mailgate recovery codes');
    expect(subkey.equals(key)).toBe(false);
    expect(stored.sort()).toEqual(canonical.map((c) => recoveryCodeDigest(subkey, 'alice', c)).sort());
    for (const c of canonical) {
      expect(stored).not.toContain(createHash('sha256').update(c).digest('hex'));
      expect(stored).not.toContain(recoveryCodeDigest(key, 'alice', c));
      expect(stored).not.toContain(recoveryCodeDigest(subkey, 'bob', c));
    }
  });

  it('a database opened with another key file checks no code (the hash is keyed)', async () => {
    const codes = await turnOn('alice');
    const otherKey = path.join(t.dir, 'other.key');
    loadOrCreateKey(otherKey);
    if (engine === 'postgres') {
      // A PostgreSQL node with another key file is refused before it checks anything.
      await expect(t.open({ keyFile: otherKey, now: clock.now })).rejects.toMatchObject({ code: ErrorCodes.KEY_FILE });
    } else {
      const other = await t.open({ keyFile: otherKey, now: clock.now });
      for (const code of codes) expect(await other.recoveryCodes.consume('alice', code)).toBe(false);
    }
    expect(await t.api.recoveryCodes.remaining('alice')).toBe(10);
  });
});
