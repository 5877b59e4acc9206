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
import path from 'node:path';
import type { Store } from '../../src/store/store.js';
import type { LoginContext, Scope } from '../../src/store/types.js';
import { ENGINES, makeEngineStore, useEngine, type EngineStore } from '../support/store.js';

describe.each(ENGINES)('secrets stay out of the audit trail (%s)', (engine) => {
  useEngine(engine);
  let t: EngineStore;
  let store: Store;
  beforeEach(async () => {
    t = await makeEngineStore(engine);
    store = t.api;
    await store.accounts.add('alice');
  });
  afterEach(() => t.cleanup());

  /** Checks, then records the outcome, as the login service does. */
  async function verify(username: string, password: string, context: LoginContext & { protocol: Scope }): Promise<void> {
    const result = await store.logins.check(username, password, context.protocol);
    if (result.ok) await store.logins.recordSuccess({ account: result.account, appPassword: result.appPassword, username: result.account.username, context });
    else await store.logins.recordFailure(result.account?.username ?? username, result.reason, context);
  }

  it('the audit table holds no password, app password, TOTP secret or code', async () => {
    const created = await store.appPasswords.create('alice', { name: 'tb' });
    const enrolment = await store.totp.enroll('alice');
    // A page session, as the web layer keeps it: the store gets the id's hash only.
    const sessionId = randomBytes(32).toString('base64url');
    const sessionHash = createHash('sha256').update(sessionId).digest('hex');
    const other = createHash('sha256').update('other').digest('hex');
    for (const idHash of [sessionHash, other]) {
      await store.webSessions.save({ idHash, accountId: (await store.accounts.get('alice')).id, createdAt: Date.now(), lastSeenAt: Date.now(), passwordAt: null, ip: '127.0.0.1', userAgent: 'test', data: '{}' });
    }
    const code = generateSync({ secret: enrolment.secret });
    const { recoveryCodes } = await store.totp.confirm('alice', code, { keepWebSession: sessionHash });
    const typedWrong = 'my-old-main-password';
    await verify('alice', created.password, { protocol: 'imap', clientIp: '127.0.0.1' });
    await verify('alice', typedWrong, { protocol: 'pop3', clientIp: '127.0.0.1' });
    const second = await store.appPasswords.create('alice', { name: 'phone' });
    await store.appPasswords.revoke('alice', second.info.id);
    expect(await store.recoveryCodes.consume('alice', recoveryCodes[0]!)).toBe(true);
    expect(await store.recoveryCodes.consume('alice', 'aaaa-bbbb-cccc-dddd')).toBe(false);
    const newCodes = await store.recoveryCodes.regenerate('alice');
    const rawCodes = JSON.stringify(await t.rows('SELECT * FROM recovery_codes'));
    await store.totp.disable('alice');
    await store.appPasswords.revokeAll('alice');

    const rows = JSON.stringify(await t.rows('SELECT * FROM audit'));
    const events = (await t.rows('SELECT event, username, app_password_id AS "appPasswordId" FROM audit ORDER BY id')) as Array<{
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
    // Every table, as the database holds it.
    const tables = ['accounts', 'app_passwords', 'recovery_codes', 'web_sessions', 'penalties', 'audit'];
    const everything = JSON.stringify(await Promise.all(tables.map((table) => t.rows(`SELECT * FROM ${table}`))));
    for (const needle of [secret, secondSecret, enrolment.secret, typedWrong, sessionId, ...codeForms]) expect(everything).not.toContain(needle);
    if (engine === 'sqlite') {
      await t.rows('PRAGMA wal_checkpoint(TRUNCATE)');
      // Read by another process: reading the live file from this one would drop its locks.
      const raw = outsideRead(path.join(t.dir, 'data', 'mailgate.db'));
      for (const needle of [secret, secondSecret, enrolment.secret, typedWrong, sessionId, ...codeForms]) expect(raw.includes(Buffer.from(needle))).toBe(false);
    }
  });
});

describe('secrets stay out of the logs', () => {

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
