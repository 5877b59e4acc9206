/**
 * Moving a deployment from SQLite to PostgreSQL: `mailgate store copy`.
 *
 * Every row of every table (accounts with their sealed TOTP secrets as they
 * are, app-password hashes, recovery codes, penalties, page sessions, the
 * audit trail) is copied, ids included, in one transaction into an EMPTY
 * PostgreSQL store: a target that holds any row is refused, so a copy never
 * merges two stores. The secrets stay sealed under the same key file, which
 * the target records as its own. Afterwards both sides are read back, table
 * by table, and compared row for row.
 */
import { createHash } from 'node:crypto';
import { ErrorCodes, MailgateError } from '../errors.js';
import { checkedKey, type PgStoreOptions } from './postgres/repositories.js';
import { PgDatabase, safeUrl, type Sql } from './postgres/database.js';
import { migrate } from './postgres/migrations.js';
import { openExistingReadOnly, type Db } from './sqlite/database.js';
import { SCHEMA_VERSION as SQLITE_SCHEMA_VERSION } from './sqlite/migrations.js';

/**
 * The tables that hold the store's data, parents first, each with the
 * columns that order its rows (on PostgreSQL, text in byte order, as SQLite
 * orders it, whatever the database's collation).
 */
const TABLES: ReadonlyArray<{ name: string; order: string; pgOrder: string; identity: boolean }> = [
  { name: 'accounts', order: 'id', pgOrder: 'id', identity: true },
  { name: 'app_passwords', order: 'id', pgOrder: 'id', identity: true },
  { name: 'recovery_codes', order: 'id', pgOrder: 'id', identity: true },
  { name: 'web_sessions', order: 'id_hash', pgOrder: 'id_hash COLLATE "C"', identity: false },
  { name: 'penalties', order: 'kind, key', pgOrder: 'kind COLLATE "C", key COLLATE "C"', identity: false },
  { name: 'audit', order: 'id', pgOrder: 'id', identity: true },
];

/** Rows per INSERT: well under PostgreSQL's 65535 parameters for the widest table (13 columns). */
const BATCH_ROWS = 500;

type Row = Record<string, unknown>;

export interface TableComparison {
  table: string;
  source: number;
  target: number;
  /** Every row the same, column by column. */
  same: boolean;
}

export interface CopyResult {
  source: string;
  target: string;
  tables: TableComparison[];
  ok: boolean;
}

/** Copies the SQLite store at `sourcePath` into the empty PostgreSQL store of `target`, then compares them. */
export async function copySqliteToPostgres(sourcePath: string, target: PgStoreOptions): Promise<CopyResult> {
  const source = openExistingReadOnly(sourcePath);
  const db = new PgDatabase({ ...target, unboundedStatements: true }, 'store copy', () => undefined);
  try {
    const version = source.pragma('user_version', { simple: true }) as number;
    if (version !== SQLITE_SCHEMA_VERSION) {
      throw new MailgateError(ErrorCodes.DB_CHECK_FAILED, `${sourcePath} has schema version ${version}, not ${SQLITE_SCHEMA_VERSION}; run "mailgate store migrate" on it first`);
    }
    await migrate({ url: target.url, ...(target.passwordFile ? { passwordFile: target.passwordFile } : {}), upgrade: true });
    await refuseNonEmpty(db.sql, target.url);
    await checkedKey(db.sql, target);
    // One read snapshot of the source for the copy and the comparison: a
    // gateway still writing to it cannot make the tables disagree.
    source.exec('BEGIN');
    await db.transaction(async (tx) => {
      for (const table of TABLES) await copyTable(source, tx, table);
    });
    const tables: TableComparison[] = [];
    for (const table of TABLES) tables.push(await compareTable(source, db.sql, table));
    return { source: sourcePath, target: safeUrl(target.url), tables, ok: tables.every((t) => t.same && t.source === t.target) };
  } finally {
    if (source.inTransaction) source.exec('COMMIT');
    source.close();
    await db.close();
  }
}

async function refuseNonEmpty(sql: Sql, url: string): Promise<void> {
  const held: string[] = [];
  for (const table of TABLES) {
    const row = await sql.one<{ n: number }>(`SELECT count(*) AS n FROM ${table.name}`);
    if ((row?.n ?? 0) > 0) held.push(`${table.name} (${row!.n})`);
  }
  if (held.length > 0) {
    throw new MailgateError(ErrorCodes.COPY_TARGET, `${safeUrl(url)} is not empty: ${held.join(', ')}; a copy goes into an empty store only`);
  }
}

async function copyTable(source: Db, sql: Sql, table: (typeof TABLES)[number]): Promise<void> {
  const rows = source.prepare(`SELECT * FROM ${table.name} ORDER BY ${table.order}`).all() as Row[];
  if (rows.length > 0) {
    const columns = Object.keys(rows[0]!);
    for (let i = 0; i < rows.length; i += BATCH_ROWS) {
      const batch = rows.slice(i, i + BATCH_ROWS);
      const values = batch.map((_, r) => `(${columns.map((__, c) => `$${r * columns.length + c + 1}`).join(', ')})`);
      const params = batch.flatMap((row) => columns.map((column) => row[column]));
      await sql.run(`INSERT INTO ${table.name} (${columns.join(', ')}) VALUES ${values.join(', ')}`, params);
    }
  }
  // New rows get ids after the copied ones.
  if (table.identity) {
    await sql.run(`SELECT setval(pg_get_serial_sequence('${table.name}', 'id'), coalesce((SELECT max(id) FROM ${table.name}), 0) + 1, false)`);
  }
}

async function compareTable(source: Db, target: Sql, table: (typeof TABLES)[number]): Promise<TableComparison> {
  const from = source.prepare(`SELECT * FROM ${table.name} ORDER BY ${table.order}`).all() as Row[];
  const to = await target.rows<Row>(`SELECT * FROM ${table.name} ORDER BY ${table.pgOrder}`);
  return { table: table.name, source: from.length, target: to.length, same: digest(from) === digest(to) };
}

/** One hash of the rows, column by column in name order, bytes as hex: equal digests, equal content. */
function digest(rows: Row[]): string {
  const hash = createHash('sha256');
  for (const row of rows) {
    const columns = Object.keys(row).sort();
    hash.update(JSON.stringify(columns.map((column) => [column, canonical(row[column])])));
    hash.update('\n');
  }
  return hash.digest('hex');
}

function canonical(value: unknown): unknown {
  if (Buffer.isBuffer(value)) return `bytes:${value.toString('hex')}`;
  if (typeof value === 'bigint') return value.toString();
  return value;
}
