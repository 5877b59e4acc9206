import path from 'node:path';
import { generateSync } from 'otplib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ErrorCodes } from '../../src/errors.js';
import { loadOrCreateKey } from '../../src/store/secret-box.js';
import { outsideRead } from '../support/outside.js';
import { makeTestStore, manualClock, type TestStore } from '../support/store.js';

let t: TestStore;
const clock = manualClock();

function codeAt(secret: string, ms: number): string {
  return generateSync({ secret, epoch: Math.floor(ms / 1000) });
}

beforeEach(async () => {
  // Start on a step boundary so "one step earlier/later" is exact.
  clock.set(Date.UTC(2026, 10, 25, 12, 0, 0));
  t = await makeTestStore({ now: clock.now });
  t.store.accounts.add('alice');
});
afterEach(() => t.cleanup());

describe('TOTP', () => {
  it('enrols with a base32 secret and an otpauth URI, state pending', () => {
    const e = t.store.totp.enroll('alice');
    expect(e.secret).toMatch(/^[A-Z2-7]{32}$/);
    expect(e.uri).toMatch(/^otpauth:\/\/totp\/mailgate:alice\?/);
    expect(e.uri).toContain(`secret=${e.secret}`);
    expect(t.store.totp.status('alice')).toBe('pending');
  });

  it('turns on only with a valid code', () => {
    const e = t.store.totp.enroll('alice');
    expect(() => t.store.totp.confirm('alice', '000000')).toThrow(expect.objectContaining({ code: ErrorCodes.TOTP_CODE }));
    expect(t.store.totp.status('alice')).toBe('pending');
    t.store.totp.confirm('alice', codeAt(e.secret, clock.now()));
    expect(t.store.totp.status('alice')).toBe('enabled');
    expect(t.store.accounts.get('alice').totpChangedAt).toBe(clock.now());
  });

  it('accepts codes one step either side and refuses two steps away', () => {
    const e = t.store.totp.enroll('alice');
    t.store.totp.confirm('alice', codeAt(e.secret, clock.now()));
    clock.advance(5 * 30_000);
    const now = clock.now();
    expect(t.store.totp.verify('alice', codeAt(e.secret, now - 60_000))).toBe(false);
    expect(t.store.totp.verify('alice', codeAt(e.secret, now + 60_000))).toBe(false);
    expect(t.store.totp.verify('alice', codeAt(e.secret, now - 30_000))).toBe(true);
    expect(t.store.totp.verify('alice', codeAt(e.secret, now))).toBe(true);
    expect(t.store.totp.verify('alice', codeAt(e.secret, now + 30_000))).toBe(true);
  });

  it('refuses a code that was already accepted (replay), and older codes after it', () => {
    const e = t.store.totp.enroll('alice');
    const confirmCode = codeAt(e.secret, clock.now());
    t.store.totp.confirm('alice', confirmCode);
    expect(t.store.totp.verify('alice', confirmCode)).toBe(false);
    clock.advance(30_000);
    const code = codeAt(e.secret, clock.now());
    expect(t.store.totp.verify('alice', code)).toBe(true);
    expect(t.store.totp.verify('alice', code)).toBe(false);
    // The replay guard is in the database, so another process refuses it too.
    const other = t.reopen({ now: clock.now });
    expect(other.totp.verify('alice', code)).toBe(false);
  });

  it('refuses wrong codes and non-codes', () => {
    const e = t.store.totp.enroll('alice');
    t.store.totp.confirm('alice', codeAt(e.secret, clock.now()));
    clock.advance(30_000);
    const good = codeAt(e.secret, clock.now());
    const wrong = String((Number(good) + 1) % 1_000_000).padStart(6, '0');
    for (const bad of [wrong, '12345', '1234567', 'abcdef', '']) expect(t.store.totp.verify('alice', bad)).toBe(false);
    expect(t.store.totp.verify('alice', good)).toBe(true);
  });

  it('refuses state changes that make no sense', () => {
    expect(() => t.store.totp.confirm('alice', '123456')).toThrow(expect.objectContaining({ code: ErrorCodes.TOTP_STATE }));
    expect(() => t.store.totp.disable('alice')).toThrow(expect.objectContaining({ code: ErrorCodes.TOTP_STATE }));
    const e = t.store.totp.enroll('alice');
    t.store.totp.confirm('alice', codeAt(e.secret, clock.now()));
    expect(() => t.store.totp.enroll('alice')).toThrow(expect.objectContaining({ code: ErrorCodes.TOTP_STATE }));
    t.store.totp.disable('alice');
    expect(t.store.totp.status('alice')).toBe('none');
    const row = t.store.db.prepare('SELECT totp_secret FROM accounts').get() as { totp_secret: unknown };
    expect(row.totp_secret).toBeNull();
  });

  it('keeps the secret encrypted at rest: the raw database files never contain it', () => {
    const e = t.store.totp.enroll('alice');
    t.store.totp.confirm('alice', codeAt(e.secret, clock.now()));
    t.store.db.pragma('wal_checkpoint(TRUNCATE)');
    // Read by another process: reading the live file from this one would drop its locks.
    const raw = outsideRead(t.options.path);
    expect(raw.includes(Buffer.from(e.secret))).toBe(false);
    expect(raw.includes(Buffer.from(e.secret.slice(0, 12)))).toBe(false);
    expect(raw.includes(Buffer.from('alice'))).toBe(true); // the file is readable, the secret is not
  });

  it('cannot decrypt the secret with another key file', async () => {
    const e = t.store.totp.enroll('alice');
    t.store.close();
    const otherKey = path.join(t.dir, 'other.key');
    loadOrCreateKey(otherKey);
    const other = t.reopen({ keyFile: otherKey, now: clock.now });
    expect(() => other.totp.confirm('alice', codeAt(e.secret, clock.now()))).toThrow(/does not decrypt/);
  });

  it('refuses to make a new key for an existing database (its secrets would be lost)', () => {
    t.store.totp.enroll('alice');
    t.store.close();
    expect(() => t.reopen({ keyFile: path.join(t.dir, 'missing.key'), now: clock.now })).toThrow(
      expect.objectContaining({ code: ErrorCodes.KEY_FILE, message: expect.stringMatching(/is missing but the database .* exists/) }),
    );
  });
});
