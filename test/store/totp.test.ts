/** Two-step verification through the Store interface, on every engine. */
import path from 'node:path';
import { generateSync } from 'otplib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ErrorCodes } from '../../src/errors.js';
import { loadOrCreateKey } from '../../src/store/secret-box.js';
import type { Store } from '../../src/store/store.js';
import { outsideRead } from '../support/outside.js';
import { ENGINES, makeEngineStore, manualClock, useEngine, type EngineStore } from '../support/store.js';

function codeAt(secret: string, ms: number): string {
  return generateSync({ secret, epoch: Math.floor(ms / 1000) });
}

describe.each(ENGINES)('TOTP (%s)', (engine) => {
  useEngine(engine);
  let t: EngineStore;
  let store: Store;
  const clock = manualClock();

  beforeEach(async () => {
    // Start on a step boundary so "one step earlier/later" is exact.
    clock.set(Date.UTC(2026, 10, 25, 12, 0, 0));
    t = await makeEngineStore(engine, { now: clock.now });
    store = t.api;
    await store.accounts.add('alice');
  });
  afterEach(() => t.cleanup());

  it('enrols with a base32 secret and an otpauth URI, state pending', async () => {
    const e = await store.totp.enroll('alice');
    expect(e.secret).toMatch(/^[A-Z2-7]{32}$/);
    expect(e.uri).toMatch(/^otpauth:\/\/totp\/mailgate:alice\?/);
    expect(e.uri).toContain(`secret=${e.secret}`);
    expect(await store.totp.status('alice')).toBe('pending');
    expect(await store.totp.pending('alice')).toEqual(e);
  });

  it('turns on only with a valid code', async () => {
    const e = await store.totp.enroll('alice');
    await expect(store.totp.confirm('alice', '000000')).rejects.toMatchObject({ code: ErrorCodes.TOTP_CODE });
    expect(await store.totp.status('alice')).toBe('pending');
    await store.totp.confirm('alice', codeAt(e.secret, clock.now()));
    expect(await store.totp.status('alice')).toBe('enabled');
    expect((await store.accounts.get('alice')).totpChangedAt).toBe(clock.now());
    expect(await store.totp.pending('alice')).toBeNull();
  });

  it('accepts codes one step either side and refuses two steps away', async () => {
    const e = await store.totp.enroll('alice');
    await store.totp.confirm('alice', codeAt(e.secret, clock.now()));
    clock.advance(5 * 30_000);
    const now = clock.now();
    expect(await store.totp.verify('alice', codeAt(e.secret, now - 60_000))).toBe(false);
    expect(await store.totp.verify('alice', codeAt(e.secret, now + 60_000))).toBe(false);
    expect(await store.totp.verify('alice', codeAt(e.secret, now - 30_000))).toBe(true);
    expect(await store.totp.verify('alice', codeAt(e.secret, now))).toBe(true);
    expect(await store.totp.verify('alice', codeAt(e.secret, now + 30_000))).toBe(true);
  });

  it('refuses a code that was already accepted (replay), and older codes after it, in every process (or node)', async () => {
    const e = await store.totp.enroll('alice');
    const confirmCode = codeAt(e.secret, clock.now());
    await store.totp.confirm('alice', confirmCode);
    expect(await store.totp.verify('alice', confirmCode)).toBe(false);
    clock.advance(30_000);
    const code = codeAt(e.secret, clock.now());
    expect(await store.totp.verify('alice', code)).toBe(true);
    expect(await store.totp.verify('alice', code)).toBe(false);
    // The replay guard is in the database, so another process (node) refuses it too.
    const other = await t.open({ now: clock.now });
    expect(await other.totp.verify('alice', code)).toBe(false);
    // Many at once, on both: exactly one accepts the next code.
    clock.advance(30_000);
    const next = codeAt(e.secret, clock.now());
    const all = await Promise.all(Array.from({ length: 12 }, (_, i) => (i % 2 ? other : store).totp.verify('alice', next)));
    expect(all.filter(Boolean)).toHaveLength(1);
  });

  it('refuses wrong codes and non-codes', async () => {
    const e = await store.totp.enroll('alice');
    await store.totp.confirm('alice', codeAt(e.secret, clock.now()));
    clock.advance(30_000);
    const good = codeAt(e.secret, clock.now());
    const wrong = String((Number(good) + 1) % 1_000_000).padStart(6, '0');
    for (const bad of [wrong, '12345', '1234567', 'abcdef', '']) expect(await store.totp.verify('alice', bad)).toBe(false);
    expect(await store.totp.verify('alice', good)).toBe(true);
  });

  it('refuses state changes that make no sense', async () => {
    await expect(store.totp.confirm('alice', '123456')).rejects.toMatchObject({ code: ErrorCodes.TOTP_STATE });
    await expect(store.totp.disable('alice')).rejects.toMatchObject({ code: ErrorCodes.TOTP_STATE });
    const e = await store.totp.enroll('alice');
    await store.totp.confirm('alice', codeAt(e.secret, clock.now()));
    await expect(store.totp.enroll('alice')).rejects.toMatchObject({ code: ErrorCodes.TOTP_STATE });
    await store.totp.disable('alice');
    expect(await store.totp.status('alice')).toBe('none');
    expect(await t.rows('SELECT totp_secret FROM accounts')).toEqual([{ totp_secret: null }]);
  });

  it('keeps the secret encrypted at rest: the stored bytes never contain it', async () => {
    const e = await store.totp.enroll('alice');
    await store.totp.confirm('alice', codeAt(e.secret, clock.now()));
    const [row] = await t.rows<{ totp_secret: Buffer }>('SELECT totp_secret FROM accounts');
    expect(Buffer.isBuffer(row!.totp_secret)).toBe(true);
    expect(row!.totp_secret.includes(Buffer.from(e.secret))).toBe(false);
    expect(row!.totp_secret.includes(Buffer.from(e.secret.slice(0, 12)))).toBe(false);
  });

  it('cannot use the secret with another key file', async () => {
    const e = await store.totp.enroll('alice');
    const otherKey = path.join(t.dir, 'other.key');
    loadOrCreateKey(otherKey);
    if (engine === 'sqlite') {
      const other = await t.open({ keyFile: otherKey, now: clock.now });
      await expect(other.totp.confirm('alice', codeAt(e.secret, clock.now()))).rejects.toThrow(/does not decrypt/);
    } else {
      // PostgreSQL keeps a check value of its key file: a node with another one is refused at start.
      await expect(t.open({ keyFile: otherKey, now: clock.now })).rejects.toMatchObject({
        code: ErrorCodes.KEY_FILE,
        message: expect.stringMatching(/is not the one this store was made with/),
      });
    }
  });

  it('refuses to make a new key for an existing store (its secrets would be lost)', async () => {
    await store.totp.enroll('alice');
    await expect(t.open({ keyFile: path.join(t.dir, 'missing.key'), now: clock.now })).rejects.toMatchObject({ code: ErrorCodes.KEY_FILE });
  });
});

describe('TOTP on SQLite, at rest', () => {
  it('the raw database files never contain the secret', async () => {
    const t = await makeEngineStore('sqlite');
    try {
      await t.api.accounts.add('alice');
      const e = await t.api.totp.enroll('alice');
      await t.api.totp.confirm('alice', codeAt(e.secret, Date.now()));
      await t.rows('PRAGMA wal_checkpoint(TRUNCATE)');
      // Read by another process: reading the live file from this one would drop its locks.
      const raw = outsideRead(path.join(t.dir, 'data', 'mailgate.db'));
      expect(raw.includes(Buffer.from(e.secret))).toBe(false);
      expect(raw.includes(Buffer.from(e.secret.slice(0, 12)))).toBe(false);
      expect(raw.includes(Buffer.from('alice'))).toBe(true); // the file is readable, the secret is not
    } finally {
      await t.cleanup();
    }
  });
});
