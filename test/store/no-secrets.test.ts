/**
 * No secret may reach the audit table or the logs: app passwords, TOTP secrets
 * and codes, recovery codes, page session ids, and whatever wrong passwords
 * users typed.
 */
import { createHash, randomBytes } from 'node:crypto';
import { Writable } from 'node:stream';
import { generateSync } from 'otplib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createLogger } from '../../src/log/logger.js';
import { outsideRead } from '../support/outside.js';
import { makeTestStore, type TestStore } from '../support/store.js';

let t: TestStore;
beforeEach(async () => {
  t = await makeTestStore();
  t.store.accounts.add('alice');
});
afterEach(() => t.cleanup());

describe('secrets stay out of the audit trail and logs', () => {
  it('the audit table holds no password, app password, TOTP secret or code', async () => {
    const created = await t.store.appPasswords.create('alice', { name: 'tb' });
    const enrolment = t.store.totp.enroll('alice');
    // A page session, as the web layer keeps it: the store gets the id's hash only.
    const sessionId = randomBytes(32).toString('base64url');
    const sessionHash = createHash('sha256').update(sessionId).digest('hex');
    const other = createHash('sha256').update('other').digest('hex');
    for (const idHash of [sessionHash, other]) {
      t.store.webSessions.save({ idHash, accountId: 1, createdAt: Date.now(), lastSeenAt: Date.now(), passwordAt: null, ip: '127.0.0.1', userAgent: 'test', data: '{}' });
    }
    const code = generateSync({ secret: enrolment.secret });
    const { recoveryCodes } = t.store.totp.confirm('alice', code, { keepWebSession: sessionHash });
    const typedWrong = 'my-old-main-password';
    await t.store.verifier.verify('alice', created.password, { protocol: 'imap', clientIp: '127.0.0.1' });
    await t.store.verifier.verify('alice', typedWrong, { protocol: 'pop3', clientIp: '127.0.0.1' });
    const second = await t.store.appPasswords.create('alice', { name: 'phone' });
    t.store.appPasswords.revoke('alice', second.info.id);
    expect(t.store.recoveryCodes.consume('alice', recoveryCodes[0]!)).toBe(true);
    expect(t.store.recoveryCodes.consume('alice', 'aaaa-bbbb-cccc-dddd')).toBe(false);
    const newCodes = t.store.recoveryCodes.regenerate('alice');
    const rawCodes = JSON.stringify(t.store.db.prepare('SELECT * FROM recovery_codes').all());
    t.store.totp.disable('alice');
    t.store.appPasswords.revokeAll('alice');

    const rows = JSON.stringify(t.store.db.prepare('SELECT * FROM audit').all());
    const events = t.store.db.prepare('SELECT event, username, app_password_id AS appPasswordId FROM audit ORDER BY id').all() as Array<{
      event: string;
      username: string;
      appPasswordId: number | null;
    }>;
    expect(events.map((r) => r.event)).toEqual([
      'account-added',
      'created',
      'totp-enrolled',
      'totp-enabled',
      'recovery-codes-created',
      'web-sessions-ended',
      'login-ok',
      'new-address',
      'login-failed',
      'created',
      'revoked',
      'recovery-code-used',
      'recovery-codes-created',
      'totp-disabled',
      'web-sessions-ended',
      'revoked-all',
    ]);
    // Every event names its account; a single revoke also names the app password.
    expect(events.every((r) => r.username === 'alice')).toBe(true);
    expect(events.find((r) => r.event === 'revoked')?.appPasswordId).toBe(second.info.id);
    const secret = created.password.replace(/ /g, '');
    const secondSecret = second.password.replace(/ /g, '');
    // Recovery codes in every form a user may type them, and the session id and its hash.
    const codeForms = [...recoveryCodes, ...newCodes].flatMap((c) => [c, c.replace(/-/g, ''), c.toUpperCase()]);
    const sessionForms = [sessionId, sessionHash, sessionHash.slice(0, 16)];
    for (const needle of [secret, secret.slice(4), created.password, secondSecret, secondSecret.slice(4), enrolment.secret, code, typedWrong, ...codeForms, ...sessionForms]) {
      expect(rows).not.toContain(needle);
    }
    // The codes table holds keyed hashes, not the codes.
    for (const needle of codeForms) expect(rawCodes).not.toContain(needle);
    t.store.db.pragma('wal_checkpoint(TRUNCATE)');
    // Read by another process: reading the live file from this one would drop its locks.
    const raw = outsideRead(t.options.path);
    for (const needle of [secret, secondSecret, enrolment.secret, typedWrong, sessionId, ...codeForms]) expect(raw.includes(Buffer.from(needle))).toBe(false);
  });

  it('the logger redacts secret-named fields even when code passes them by mistake', () => {
    const lines: string[] = [];
    const sink = new Writable({
      write(chunk, _enc, done) {
        lines.push(String(chunk));
        done();
      },
    });
    const log = createLogger({ destination: sink, level: 'info' });
    log.info({ password: 'hunter2', user: { pass: 'pw-nested' }, appPassword: 'abcd efgh', totpSecret: 'JBSWY3DP', payload: 'AGFsaWNl' }, 'oops');
    const text = lines.join('');
    expect(text).toContain('oops');
    for (const secret of ['hunter2', 'pw-nested', 'abcd efgh', 'JBSWY3DP', 'AGFsaWNl']) expect(text).not.toContain(secret);
  });
});
