/**
 * The database going bad under a running gateway (real mailgate, real
 * Dovecot): moved away, overwritten with garbage, truncated, locked by
 * another process, read-only.
 * Logins must fail closed, as temporarily unavailable (nobody gets in: not
 * with a correct app password, not via passthrough), the gateway must say why
 * in its log and keep running, and once the file is back logins must work
 * again without a restart.
 */
import { renameSync, statSync } from 'node:fs';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { logLines, startGateway, type GatewayHandle } from '../support/gateway.js';
import { imapsLogin } from '../support/attack.js';
import { imaps, taggedLine } from '../support/imap-client.js';
import { outsideCopy, outsideScribble, outsideTruncate } from '../support/outside.js';
import { pop3s } from '../support/pop3-client.js';
import { enableTotp } from '../support/store.js';
import { sleep, waitUntil } from '../support/timing.js';
import { hasLevel, isErrorLevel } from '../support/log-levels.js';

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

/** Guesses (carol has two-step verification: each would cost an argon2 run) are refused unchecked. */
async function expectGuessesUnchecked(guesses: string[]): Promise<void> {
  const before = gw.hasher.stats.verifications;
  for (const guess of guesses) {
    const { c, answer } = await imapsLogin(gw, 'carol', guess);
    expect(taggedLine(answer, 'L1')).toBe(UNAVAILABLE);
    c.destroy();
  }
  expect(gw.hasher.stats.verifications).toBe(before);
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
    // Damage comes from other processes (cp, dd): this one runs the gateway, and opening and
    // closing the live file here would drop the gateway's locks on it.
    gw.store.db.pragma('wal_checkpoint(TRUNCATE)');
    outsideCopy(dbPath, `${dbPath}.bak`);
    outsideScribble(dbPath, statSync(dbPath).size);
    try {
      await expectFailClosed();
      expect(gw.logs().some((l) => hasLevel(l, 'error') && /database/.test(String(l.msg)))).toBe(true);
    } finally {
      outsideCopy(`${dbPath}.bak`, dbPath);
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
    outsideCopy(dbPath, `${dbPath}.bak`);
    outsideTruncate(dbPath);
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
      outsideCopy(`${dbPath}.bak`, dbPath);
    }
    await expectRecovered();
    const restored = await imapsLogin(gw, 'carol', 'carol-upstream-pw');
    expect(taggedLine(restored.answer, 'L1')).toMatch(/^L1 NO \[AUTHENTICATIONFAILED\]/);
    restored.c.destroy();
  });

  it('locked by another process (BEGIN EXCLUSIVE): nobody gets in, no password is checked, and logins work again on unlock', async () => {
    // Catches: logins going on while the lock stops every write (WAL readers are not blocked, so
    // the checks would pass) with failure counters, last use and audit silently skipped; a login
    // answered OK before its record is committed; guesses checked while they cannot be counted; a
    // SQLITE_BUSY that escapes as an exception; and a lock taken for a broken file.
    await expectRecovered();
    const loginsOk = logLines(gw, 'login ok').length;
    const recoveries = logLines(gw, 'the database is usable again').length;
    const other = new Database(dbPath, { timeout: 100 });
    other.exec('BEGIN EXCLUSIVE');
    other.prepare('UPDATE accounts SET created_at = created_at WHERE username = ?').run('alice');
    try {
      // The first login finds out: alice's correct main password, which the upstream accepts
      // (passthrough), cannot be recorded, so it is not let in.
      const started = Date.now();
      const first = await imapsLogin(gw, 'alice', 'alice-upstream-pw');
      expect(taggedLine(first.answer, 'L1')).toBe(UNAVAILABLE);
      expect(Date.now() - started).toBeLessThan(3_000);
      first.c.destroy();
      expect(logLines(gw, 'database writes are failing; logins are refused until they work again').at(-1)?.err).toMatch(/locked/);
      // From then on nothing is checked: an app password, passthrough, POP3...
      await expectFailClosed();
      // ...nor a guess (no argon2 run, nothing to count it with).
      await expectGuessesUnchecked(['qwer tyui opas dfgh', 'zxcv bnma sdfg hjkl']);
      // Still locked after the retry interval: the write probe fails, logins stay refused.
      await sleep(1_100);
      await expectGuessesUnchecked(['poiu ytre wqlk jhgf']);
      await expectFailClosed();
      expect(logLines(gw, 'login ok').length).toBe(loginsOk);
    } finally {
      other.exec('ROLLBACK');
      other.close();
    }
    await expectRecovered();
    // A lock is not a broken database: the store was never dropped for it.
    expect(logLines(gw, 'the database is unusable; logins fail until it recovers').filter((l) => /locked|busy/i.test(String(l.err)))).toEqual([]);
    expect(logLines(gw, 'the database is usable again').length).toBe(recoveries + 1);
    assertNoInternalErrorsExceptDatabase();
  });

  it('read-only (SQLite refuses every write): nobody gets in, and logins work again once writes do', async () => {
    // Catches: SQLITE_READONLY treated as a passing problem or ignored: logins let in on a store
    // that cannot record them or count failures, and a connection opened read-only kept for good.
    // How the database is made read-only: PRAGMA query_only on the gateway's own connection, so
    // SQLite answers every write with SQLITE_READONLY, the error a database opened without write
    // access gives. File modes cannot do it when the tests run as root (root writes anyway), and
    // chattr +i or a read-only mount need privileges and filesystems that CI may not have. The
    // gateway drops a read-only connection and opens a fresh one; the test makes that one
    // read-only too, as a file that is still read-only would be, before letting it recover.
    await expectRecovered();
    const loginsOk = logLines(gw, 'login ok').length;
    gw.gatewayConnection().db.pragma('query_only = ON');
    // The first login finds out: a user mailgate does not know, with the correct upstream
    // password (passthrough): its audit record cannot be written, so it is not let in.
    const first = await imapsLogin(gw, 'bob', 'bob-upstream-pw');
    expect(taggedLine(first.answer, 'L1')).toBe(UNAVAILABLE);
    first.c.destroy();
    expect(logLines(gw, 'database writes are failing; logins are refused until they work again').at(-1)?.err).toMatch(/readonly/);
    // The connection that failed is gone; the fresh one is read-only as well.
    gw.gatewayConnection().db.pragma('query_only = ON');
    await expectFailClosed();
    await sleep(1_100);
    await expectFailClosed();
    expect(logLines(gw, 'login ok').length).toBe(loginsOk);
    // The probe dropped that read-only connection; the next one is writable.
    await expectRecovered();

    // A wrong password that is the first to find out gets the same answer: refused as a wrong
    // password (while a right one is refused as unavailable), the answer would tell them apart.
    gw.gatewayConnection().db.pragma('query_only = ON');
    const guess = await imapsLogin(gw, 'carol', 'mnbv cxzl kjhg fdsa');
    expect(taggedLine(guess.answer, 'L1')).toBe(UNAVAILABLE);
    guess.c.destroy();
    expect(logLines(gw, 'login failed', { user: 'carol' }).at(-1)).toMatchObject({ reason: 'wrong-password' });
    await expectRecovered();
    assertNoInternalErrorsExceptDatabase();
  });
});

/** Errors about the database are expected in this file; anything else is not. */
function assertNoInternalErrorsExceptDatabase(): void {
  const unexpected = gw.logs().filter((l) => isErrorLevel(l) && !/database/.test(String(l.msg)));
  expect(unexpected).toEqual([]);
  expect(gw.logs().filter((l) => /uncaught|unhandled|internal error/i.test(String(l.msg)))).toEqual([]);
}
