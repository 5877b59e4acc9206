/**
 * Schema migrations, applied in order at open. `PRAGMA user_version` holds the
 * number of the last one applied. Append new migrations; never edit a released one.
 *
 * Times are Unix milliseconds. Usernames in the audit table are copied, not
 * referenced, so the trail survives an account's removal.
 */

export interface Migration {
  version: number;
  description: string;
  sql: string;
}

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    description: 'accounts, app passwords, audit',
    sql: `
      CREATE TABLE accounts (
        id               INTEGER PRIMARY KEY,
        username         TEXT NOT NULL UNIQUE,
        created_at       INTEGER NOT NULL,
        totp_state       TEXT NOT NULL DEFAULT 'none' CHECK (totp_state IN ('none', 'pending', 'enabled')),
        totp_secret      BLOB,
        totp_last_step   INTEGER,
        totp_changed_at  INTEGER
      );

      CREATE TABLE app_passwords (
        id                  INTEGER PRIMARY KEY,
        account_id          INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        name                TEXT NOT NULL,
        selector            TEXT NOT NULL,
        hash                TEXT NOT NULL,
        scopes              TEXT NOT NULL,
        created_at          INTEGER NOT NULL,
        expires_at          INTEGER,
        revoked_at          INTEGER,
        last_used_at        INTEGER,
        last_used_ip        TEXT,
        last_used_protocol  TEXT,
        last_used_client    TEXT
      );
      CREATE INDEX app_passwords_by_selector ON app_passwords(account_id, selector);

      CREATE TABLE audit (
        id               INTEGER PRIMARY KEY,
        at               INTEGER NOT NULL,
        event            TEXT NOT NULL,
        username         TEXT,
        app_password_id  INTEGER,
        ip               TEXT,
        protocol         TEXT,
        detail           TEXT
      );
      CREATE INDEX audit_by_time ON audit(at);
    `,
  },
  {
    version: 2,
    description: 'login failure counters and temporary blocks',
    sql: `
      CREATE TABLE penalties (
        kind           TEXT NOT NULL CHECK (kind IN ('ip', 'account')),
        key            TEXT NOT NULL,
        failures       INTEGER NOT NULL,
        window_start   INTEGER NOT NULL,
        last_failure   INTEGER NOT NULL,
        blocked_until  INTEGER,
        PRIMARY KEY (kind, key)
      ) WITHOUT ROWID;
    `,
  },
  {
    version: 3,
    description: 'repeats of an already counted wrong password, per client',
    sql: `
      ALTER TABLE penalties ADD COLUMN repeats INTEGER NOT NULL DEFAULT 0;
    `,
  },
  {
    version: 4,
    description: 'recovery codes, self-service page sessions, audit indexes for the activity list and new addresses',
    // recovery_codes.code_hash: HMAC-SHA-256 under a subkey of the key file (recovery-code-format.ts).
    // web_sessions: the SHA-256 of the session id, never the id. A session that
    // ends keeps its row (ended_at set, its data, address and user agent
    // cleared) until it would have expired anyway, so that a save still in
    // flight cannot bring it back; account_id is NULL for those of a removed
    // account, so a new account that gets the same id cannot inherit them.
    sql: `
      CREATE TABLE recovery_codes (
        id          INTEGER PRIMARY KEY,
        account_id  INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        code_hash   TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        used_at     INTEGER
      );
      CREATE UNIQUE INDEX recovery_codes_by_hash ON recovery_codes(account_id, code_hash);

      CREATE TABLE web_sessions (
        id_hash       TEXT PRIMARY KEY,
        account_id    INTEGER REFERENCES accounts(id) ON DELETE CASCADE,
        created_at    INTEGER NOT NULL,
        last_seen_at  INTEGER NOT NULL,
        password_at   INTEGER,
        ip            TEXT,
        user_agent    TEXT,
        data          TEXT NOT NULL,
        ended_at      INTEGER
      );
      CREATE INDEX web_sessions_by_account ON web_sessions(account_id);
      CREATE INDEX web_sessions_by_created ON web_sessions(created_at);

      CREATE INDEX audit_by_username ON audit(username, id);
      CREATE INDEX audit_by_app_password_ip ON audit(app_password_id, ip);
    `,
  },
];

export const SCHEMA_VERSION = MIGRATIONS[MIGRATIONS.length - 1]!.version;
