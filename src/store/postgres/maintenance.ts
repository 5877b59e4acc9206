/**
 * The administrator's look at a PostgreSQL store: `mailgate store check`
 * (read-only: nothing is created, migrated or written) and `store migrate`.
 * PostgreSQL keeps its own pages consistent (and its foreign keys enforced);
 * what is checked here is mailgate's: the schema version, every table
 * readable, and the key file the one the store was made with.
 */
import { errorMessage } from '../../errors.js';
import { loadKey } from '../secret-box.js';
import type { CheckResult } from '../types.js';
import { PgDatabase, type PostgresOptions } from './database.js';
import { migrate, schemaVersion, SCHEMA_VERSION } from './migrations.js';
import { checkedKey, keyCheck, type PgStoreOptions } from './repositories.js';

const TABLES = ['accounts', 'app_passwords', 'audit', 'penalties', 'recovery_codes', 'web_sessions', 'store_changes', 'store_meta'];

export async function checkPostgres(options: PostgresOptions & { keyFile: string }): Promise<CheckResult> {
  const db = new PgDatabase(options, 'store check', () => undefined);
  try {
    const client = await db.pool.connect();
    let version: number;
    try {
      version = await schemaVersion(client);
    } finally {
      client.release();
    }
    if (version === 0) return { ok: false, schemaVersion: 0, integrity: ['no mailgate schema in this database'], foreignKeys: [] };
    const problems: string[] = [];
    if (version !== SCHEMA_VERSION) problems.push(`schema version ${version}, this mailgate's is ${SCHEMA_VERSION}${version < SCHEMA_VERSION ? ' (run "mailgate store migrate")' : ''}`);
    for (const table of TABLES) {
      try {
        await db.sql.one(`SELECT count(*) FROM ${table}`);
      } catch (err) {
        problems.push(`table ${table}: ${errorMessage(err)}`);
      }
    }
    problems.push(...(await keyProblems(db, options.keyFile)));
    return { ok: problems.length === 0, schemaVersion: version, integrity: problems.length === 0 ? ['ok'] : problems, foreignKeys: [] };
  } finally {
    await db.close();
  }
}

async function keyProblems(db: PgDatabase, keyFile: string): Promise<string[]> {
  const recorded = await db.sql.one<{ value: string }>("SELECT value FROM store_meta WHERE name = 'key_check'").catch(() => undefined);
  if (!recorded) return ['the store has no record of its key file'];
  try {
    if (keyCheck(loadKey(keyFile)) !== recorded.value) return [`the key file ${keyFile} is not the one this store was made with`];
  } catch (err) {
    return [errorMessage(err)];
  }
  return [];
}

/** Applies pending migrations (creating the schema in an empty database, and recording the key file). */
export async function migratePostgres(options: PgStoreOptions): Promise<{ from: number; to: number }> {
  const db = new PgDatabase(options, 'store migrate', () => undefined);
  try {
    const result = await migrate({ url: options.url, ...(options.passwordFile ? { passwordFile: options.passwordFile } : {}), upgrade: true });
    await checkedKey(db.sql, options);
    return result;
  } finally {
    await db.close();
  }
}
