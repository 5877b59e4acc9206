/**
 * The database going bad under a running gateway (real mailgate, real
 * Dovecot): moved away, overwritten with garbage, locked by another process.
 * Logins must fail closed, as temporarily unavailable (nobody gets in: not
 * with a correct app password, not via passthrough), the gateway must say why
 * in its log and keep running, and once the file is back logins must work
 * again without a restart.
 */
import { closeSync, copyFileSync, openSync, renameSync, statSync, truncateSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { logLines, startGateway, type GatewayHandle } from '../support/gateway.js';
import { imapsLogin } from '../support/attack.js';
import { imaps, taggedLine } from '../support/imap-client.js';
import { pop3s } from '../support/pop3-client.js';
import { enableTotp } from '../support/store.js';
import { sleep, waitUntil } from '../support/timing.js';

const UNAVAILABLE = 'L1 NO [UNAVAILABLE] The mail service is temporarily unavailable; try again in a few minutes.';

let dc: DovecotHandle;
let gw: GatewayHandle;
let appPassword: string;
let dbPath: string;

beforeAll(async () => {
  dc = await startDovecot();
  gw = await startGateway(dc, {
    config: {
      policy: { unknown_users: 'passthrough' },
      store: { busy_timeout_ms: 200 },
    },
  });
  gw.store.accounts.add('alice');
  gw.store.accounts.add('carol');
  enableTotp(gw.store, 'carol');
  appPassword = (await gw.store.appPasswords.create('alice', { name: 'phone' })).password;
  dbPath = gw.config.store.path;
});

afterAll(async () => {
  await gw?.stop();
  await dc?.stop();
});

/** Every way in is refused as temporarily unavailable. */
async function expectFailClosed(): Promise<void> {
  // A correct app password (the gateway would log in as master)...
  const app = await imapsLogin(gw, 'alice', appPassword);
  expect(taggedLine(app.answer, 'L1')).toBe(UNAVAILABLE);
  app.c.destroy();
  // ...a correct upstream password for a user mailgate does not know (passthrough)...
  const pass = await imapsLogin(gw, 'bob', 'bob-upstream-pw');
  expect(taggedLine(pass.answer, 'L1')).toBe(UNAVAILABLE);
  pass.c.destroy();
  // ...and POP3.
  const p = await pop3s(gw);
  expect(await p.command('USER alice')).toBe('+OK Send PASS\r\n');
  expect(await p.command(`PASS ${appPassword}`)).toBe('-ERR [SYS/TEMP] The mail service is temporarily unavailable; try again in a few minutes.\r\n');
  p.destroy();
}

/** Logins work again (the handle retries at most once a second). */
async function expectRecovered(): Promise<void> {
  await waitUntil(async () => {
    const { c, answer } = await imapsLogin(gw, 'alice', appPassword);
    c.destroy();
    return /^L1 OK /.test(taggedLine(answer, 'L1'));
  }, 'logins to work again', 5_000);
  const pass = await imapsLogin(gw, 'bob', 'bob-upstream-pw');
  expect(taggedLine(pass.answer, 'L1')).toMatch(/^L1 OK /);
  pass.c.destroy();
}

describe('a database that goes bad under the gateway', () => {
  it('moved away: logins fail closed, the log says why, and it recovers when the file is back', async () => {
    // Catches: a gateway that keeps using a database it no longer has (or creates an empty one,
    // which would fail every app password or, worse, let passthrough decide).
    await expectRecovered();
    renameSync(dbPath, `${dbPath}.moved`);
    try {
      await expectFailClosed();
      expect(logLines(gw, 'the database file was removed or replaced; logins fail until it is back')).not.toHaveLength(0);
      // The gateway is up: it still greets, and nothing was created in place of the missing file.
      const c = await imaps(gw);
      expect(await c.command('n', 'NOOP')).toBe('n OK NOOP completed\r\n');
      c.destroy();
      expect(() => statSync(dbPath)).toThrow();
    } finally {
      renameSync(`${dbPath}.moved`, dbPath);
    }
    await expectRecovered();
    expect(logLines(gw, 'the database is usable again')).not.toHaveLength(0);
  });

  it('overwritten in place with garbage: logins fail closed, and it recovers when the copy is restored', async () => {
    // Catches: a gateway that goes on serving logins from its page cache while the file on disk
    // is garbage (it would also write its WAL back over whatever is there).
    await expectRecovered();
    gw.store.db.pragma('wal_checkpoint(TRUNCATE)');
    copyFileSync(dbPath, `${dbPath}.bak`);
    const size = statSync(dbPath).size;
    const fd = openSync(dbPath, 'r+');
    writeSync(fd, randomBytes(size), 0, size, 0);
    closeSync(fd);
    try {
      await expectFailClosed();
      expect(gw.logs().some((l) => l.level === 50 && /database/.test(String(l.msg)))).toBe(true);
    } finally {
      copyFileSync(`${dbPath}.bak`, dbPath);
    }
    await expectRecovered();
  });

  it('truncated to zero bytes: refused, not re-created as an empty store that would let passthrough decide', async () => {
    // Catches: SQLite taking the empty file for a new database: migrated into an empty store,
    // every account becomes "unknown" and passthrough lets carol in with her main password,
    // two-step verification or not.
    await expectRecovered();
    const carol = await imapsLogin(gw, 'carol', 'carol-upstream-pw');
    expect(taggedLine(carol.answer, 'L1')).toMatch(/^L1 NO \[AUTHENTICATIONFAILED\]/);
    carol.c.destroy();
    gw.store.db.pragma('wal_checkpoint(TRUNCATE)');
    copyFileSync(dbPath, `${dbPath}.bak`);
    truncateSync(dbPath, 0);
    try {
      await expectFailClosed();
      const again = await imapsLogin(gw, 'carol', 'carol-upstream-pw');
      expect(taggedLine(again.answer, 'L1')).toBe(UNAVAILABLE);
      again.c.destroy();
      // Still refused after the one-second retry: the empty file is never taken for a database.
      await sleep(1_100);
      const later = await imapsLogin(gw, 'carol', 'carol-upstream-pw');
      expect(taggedLine(later.answer, 'L1')).toBe(UNAVAILABLE);
      later.c.destroy();
      expect(statSync(dbPath).size).toBe(0);
    } finally {
      copyFileSync(`${dbPath}.bak`, dbPath);
    }
    await expectRecovered();
    const restored = await imapsLogin(gw, 'carol', 'carol-upstream-pw');
    expect(taggedLine(restored.answer, 'L1')).toMatch(/^L1 NO \[AUTHENTICATIONFAILED\]/);
    restored.c.destroy();
  });

  it('locked by another process (BEGIN EXCLUSIVE) with a small busy timeout: a temporary failure at worst, never a crash', async () => {
    // Catches: a SQLITE_BUSY that escapes as an exception (a dropped session or process), or a
    // lock that is mistaken for a broken file and closes the store for good.
    await expectRecovered();
    const other = new Database(dbPath, { timeout: 100 });
    other.pragma('journal_mode = WAL');
    other.exec('BEGIN EXCLUSIVE');
    other.prepare('UPDATE accounts SET created_at = created_at WHERE username = ?').run('alice');
    try {
      for (const [user, password] of [['alice', appPassword], ['bob', 'bob-upstream-pw'], ['alice', 'wrong-password']] as const) {
        const started = Date.now();
        const { c, answer } = await imapsLogin(gw, user, password);
        const line = taggedLine(answer, 'L1');
        // WAL readers are not blocked by the writer: the check can still succeed, and what the
        // gateway cannot write (last use, audit, penalties) it skips. A refusal must be the
        // temporary one or the ordinary credential failure, and quick.
        expect(line).toMatch(/^L1 (OK |NO \[UNAVAILABLE\]|NO \[AUTHENTICATIONFAILED\])/);
        if (password === 'wrong-password') expect(line).toMatch(/AUTHENTICATIONFAILED|UNAVAILABLE/);
        expect(Date.now() - started).toBeLessThan(3_000);
        c.destroy();
      }
    } finally {
      other.exec('ROLLBACK');
      other.close();
    }
    await expectRecovered();
    // A lock is not a broken database: the store was never dropped for it.
    expect(logLines(gw, 'the database is unusable; logins fail until it recovers').filter((l) => /locked|busy/i.test(String(l.err)))).toEqual([]);
    assertNoInternalErrorsExceptDatabase();
  });
});

/** Errors about the database are expected in this file; anything else is not. */
function assertNoInternalErrorsExceptDatabase(): void {
  const unexpected = gw.logs().filter((l) => typeof l.level === 'number' && l.level >= 50 && !/database/.test(String(l.msg)));
  expect(unexpected).toEqual([]);
  expect(gw.logs().filter((l) => /uncaught|unhandled|internal error/i.test(String(l.msg)))).toEqual([]);
}
