/**
 * The login path on PostgreSQL: the shared CredentialVerifier over this
 * database's rows, and the records a login leaves, all or nothing: one
 * statement for a repeat login, one transaction for a first one from its
 * address. Its statements are prepared (database.ts says why).
 */
import { createHash } from 'node:crypto';
import type { PasswordHasher } from '../hasher.js';
import type { LoginRecord } from '../store.js';
import type { Clock, LoginContext } from '../types.js';
import { tryNormaliseUsername } from '../username.js';
import { CredentialVerifier } from '../verifier.js';
import type { PgAccounts } from './accounts.js';
import type { PgAppPasswords } from './app-passwords.js';
import type { PgAudit } from './audit.js';
import { prepared, type PgDatabase, type Sql, type Tx } from './database.js';

/** Serialises the first-login look at the trail per app password and address (see recordFirst). */
const NEW_ADDRESS_LOCK = 'mailgate new-address';

/**
 * recordRepeat: whether the trail has a login-ok of the app password ($1)
 * from the address ($2), and when it has, last use (app_passwords.last_used_*)
 * and login-ok (an audit row, as audit.record writes it). The CTEs run on one snapshot, in
 * one atomic statement.
 */
const RECORD_REPEAT = prepared(`WITH seen AS (
    SELECT $2::text IS NULL OR EXISTS (SELECT 1 FROM audit WHERE app_password_id = $1 AND ip = $2 AND event = 'login-ok') AS yes
  ), used AS (
    UPDATE app_passwords SET last_used_at = $3, last_used_ip = $2, last_used_protocol = $4, last_used_client = $5
     WHERE id = $1 AND (SELECT yes FROM seen)
  ), logged AS (
    INSERT INTO audit (at, event, username, app_password_id, ip, protocol, detail)
    SELECT $3::bigint, 'login-ok', $6::text, $1::bigint, $2::text, $4::text, 'app-password' FROM seen WHERE yes
  )
  SELECT yes AS seen FROM seen`);

/**
 * recordFirst, under the lock: the same look at the trail, last use,
 * login-ok, and new-address when the look found nothing (one INSERT, so
 * new-address gets the later id, as the events happened).
 */
const RECORD_FIRST = prepared(`WITH seen AS (
    SELECT EXISTS (SELECT 1 FROM audit WHERE app_password_id = $1 AND ip = $2 AND event = 'login-ok') AS yes
  ), used AS (
    UPDATE app_passwords SET last_used_at = $3, last_used_ip = $2, last_used_protocol = $4, last_used_client = $5 WHERE id = $1
  ), logged AS (
    INSERT INTO audit (at, event, username, app_password_id, ip, protocol, detail)
    SELECT $3::bigint, e.event, $6::text, $1::bigint, $2::text, $4::text, e.detail
      FROM (VALUES (1, 'login-ok', 'app-password'), (2, 'new-address', NULL)) AS e (n, event, detail), seen
     WHERE e.n = 1 OR NOT seen.yes
     ORDER BY e.n
  )
  SELECT yes AS seen FROM seen`);

/**
 * recordRepeat for an app password never used (as the login read it): in one
 * statement, last use (only while there is none: under the row lock, so of
 * logins at once, on any nodes, only one finds it empty), login-ok and
 * new-address (no login of it can be in the trail, from anywhere). When
 * another login used it first, nothing is written and recordFirst decides.
 */
const RECORD_FIRST_USE = prepared(`WITH used AS (
    UPDATE app_passwords SET last_used_at = $3, last_used_ip = $2, last_used_protocol = $4, last_used_client = $5
     WHERE id = $1 AND last_used_at IS NULL
    RETURNING id
  ), logged AS (
    INSERT INTO audit (at, event, username, app_password_id, ip, protocol, detail)
    SELECT $3::bigint, e.event, $6::text, $1::bigint, $2::text, $4::text, e.detail
      FROM (VALUES (1, 'login-ok', 'app-password'), (2, 'new-address', NULL)) AS e (n, event, detail), used
     ORDER BY e.n
  )
  SELECT count(*)::int AS first FROM used`);

/** The shared credential check (check, lookup, verifyFound, recheck) over this database's rows, and the records a login leaves. */
export class PgLogins extends CredentialVerifier {
  constructor(
    db: PgDatabase,
    accounts: PgAccounts,
    appPasswords: PgAppPasswords,
    private readonly audit: PgAudit,
    hasher: PasswordHasher,
    now: Clock,
  ) {
    super(
      {
        findAccount: (name) => accounts.find(db.sql, name),
        findAccountById: (id) => accounts.findById(db.sql, id),
        findCandidate: (accountId, selector) => appPasswords.findCandidate(db.sql, accountId, selector),
        findAppPasswordById: (id) => appPasswords.findById(db.sql, id),
        findLogin: (accountId, appPasswordId) => appPasswords.findWithAccount(db.sql, accountId, appPasswordId),
        findAccountWithCandidate: (name, selector) => appPasswords.findAccountWithCandidate(db.sql, name, selector),
      },
      hasher,
      now,
    );
  }

  /**
   * The usual login, in one statement (one round trip, all or nothing by
   * itself, no transaction to open and commit): when the trail already has
   * a login with this app password from this address, no new-address can be
   * due, and last use and login-ok are written as recordSuccess writes them.
   * Otherwise (an app password, from an address) it writes nothing and
   * returns false, and recordFirst runs, under its lock. (A login-ok already committed is seen by every later
   * look; the lock is only for two first logins deciding at once.) The very
   * first login of an app password is one statement too (RECORD_FIRST_USE).
   * Each round trip costs a login time on a loaded host: this path has one
   * where the transaction has three.
   */
  async recordRepeat(sql: Sql, record: LoginRecord): Promise<boolean> {
    const { account, appPassword, context } = record;
    const username = account?.username ?? record.username;
    if (appPassword === null) {
      await this.audit.record(sql, 'login-ok', { username, appPasswordId: null, ip: context.clientIp, protocol: context.protocol, detail: 'upstream-password' });
      return true;
    }
    const values = [appPassword.id, context.clientIp, this.now(), context.protocol, context.client ?? null, username];
    if (appPassword.lastUsed === null && context.clientIp !== null) {
      // Never used (as the login just read it): its first login, unless another one got there first.
      const row = await sql.one<{ first: number }>(RECORD_FIRST_USE, values);
      return row?.first === 1;
    }
    const row = await sql.one<{ seen: boolean }>(RECORD_REPEAT, values);
    return row?.seen === true;
  }

  /**
   * A login recordRepeat did not write (the app password's first from the
   * address, as far as it saw): last use, login-ok, and new-address unless a
   * login-ok is there after all, in one transaction. A transaction-scoped
   * advisory lock on (app password, address) makes two first logins at once,
   * on any nodes, give one new-address (SQLite gets this from its IMMEDIATE
   * write lock); it is taken with the BEGIN, and the look at the trail is the
   * next statement, so that it sees a login the lock waited for. Three round
   * trips: BEGIN and the lock, the rows, COMMIT.
   */
  async recordFirst(db: PgDatabase, record: LoginRecord): Promise<void> {
    const { account, appPassword, context } = record;
    const clientIp = context.clientIp;
    if (appPassword === null || clientIp === null) throw new Error('recordFirst: recordRepeat records a login without an app password or an address');
    const values = [appPassword.id, clientIp, this.now(), context.protocol, context.client ?? null, account?.username ?? record.username];
    await db.transaction((tx) => tx.run(RECORD_FIRST, values), { lockKey: addressLockKey(appPassword.id, clientIp) });
  }

  /** login-failed, under the normalised name when there is one (sqlite/logins.ts says why). */
  recordFailure(tx: Tx, username: string, reason: string, context: LoginContext): Promise<void> {
    return this.audit.record(tx, 'login-failed', { username: tryNormaliseUsername(username) ?? username, ip: context.clientIp, protocol: context.protocol, detail: reason });
  }
}

/**
 * The advisory lock's key for an app password and an address: 64 bits of a
 * hash of both. (Before, the key was hashtext() of the same text, asked of
 * the server: during an upgrade from such a version, a first login on an old
 * node and one on a new node at the same moment could both add new-address.)
 */
export function addressLockKey(appPasswordId: number, clientIp: string): bigint {
  return createHash('sha256').update(`${NEW_ADDRESS_LOCK} ${appPasswordId} ${clientIp}`).digest().readBigInt64BE(0);
}
