/**
 * Upgrades (issue 13): a newer mailgate finds a store an older one left.
 *
 * The older store is built for real: the current CLI makes the accounts and
 * app passwords (real argon2 hashes), then their rows are carried into a
 * database made by the first SCHEMA_VERSION - 1 migrations only, as an older
 * release would have left it. A real `mailgate serve` in front of a real
 * Dovecot then upgrades it at start, after a backup beside it, and the app
 * passwords log in; the CLI refuses an older store instead of changing the
 * schema under a gateway of the old version; a store newer than this
 * mailgate is refused by both in one line.
 */
import { existsSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { applyMigrations } from '../../src/store/sqlite/database.js';
import { SCHEMA_VERSION } from '../../src/store/sqlite/migrations.js';
import { runCli, writeCliConfig } from '../support/cli.js';
import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { ImapClient, imapQuote, taggedLine } from '../support/imap-client.js';
import { dovecotServeToml, startServe, type ServeProcess } from '../support/serve.js';
import { makeTempDir, removeTempDir } from '../support/tmp.js';

const OLD_VERSION = SCHEMA_VERSION - 1;

let dc: DovecotHandle;
let dir = '';
let config = '';
let dbFile = '';
let gateway: ServeProcess | null = null;

beforeAll(async () => {
  dc = await startDovecot();
});
afterAll(async () => {
  await dc?.stop();
});
afterEach(async () => {
  await gateway?.stop('SIGKILL');
  gateway = null;
  if (dir) await removeTempDir(dir);
  dir = '';
});

async function setUp(): Promise<void> {
  dir = await makeTempDir('upgrade');
  config = writeCliConfig(dir, dovecotServeToml(dc));
  dbFile = path.join(dir, 'data', 'mailgate.db');
}

const cli = (...args: string[]) => runCli(['--config', config, ...args]);

async function cliOk(...args: string[]): Promise<string> {
  const result = await cli(...args);
  expect(result.code, `mailgate ${args.join(' ')}: ${result.stderr}`).toBe(0);
  return result.stdout;
}

/** Exit 1 and exactly `message` as the one line on stderr. */
function expectOneLine(result: { code: number; stderr: string }, message: string): void {
  expect(result.code, result.stderr).toBe(1);
  expect(result.stderr).toBe(`mailgate: ${message}\n`);
}

/**
 * Turns the current store into the one an older mailgate would have left:
 * a database made by the migrations up to `version` only, holding the rows
 * of every table both schemas have (the columns both have).
 */
function downgradeStore(file: string, version: number): void {
  const current = `${file}.current`;
  renameSync(file, current);
  rmSync(`${file}-wal`, { force: true });
  rmSync(`${file}-shm`, { force: true });
  const old = new Database(file);
  try {
    old.pragma('journal_mode = WAL');
    old.transaction(() => applyMigrations(old, version))();
    old.prepare('ATTACH DATABASE ? AS current').run(current);
    const tables = old.prepare("SELECT name FROM main.sqlite_schema WHERE type = 'table'").pluck().all() as string[];
    old.transaction(() => {
      for (const table of tables) {
        const columns = (old.prepare(`SELECT name FROM pragma_table_info('${table}', 'main')`).pluck().all() as string[]).filter((c) =>
          (old.prepare(`SELECT name FROM pragma_table_info('${table}', 'current')`).pluck().all() as string[]).includes(c),
        );
        const list = columns.join(', ');
        old.exec(`INSERT INTO main.${table} (${list}) SELECT ${list} FROM current.${table}`);
      }
    })();
    old.exec('DETACH DATABASE current');
  } finally {
    old.close();
  }
  rmSync(current);
}

function versionOf(file: string): number {
  const db = new Database(file, { readonly: true, fileMustExist: true });
  try {
    return db.pragma('user_version', { simple: true }) as number;
  } finally {
    db.close();
  }
}

async function imapLogin(port: number, user: string, password: string): Promise<string> {
  const { client } = await ImapClient.open({ port, tls: true, ca: dc.caCert, timeoutMs: 10_000 });
  try {
    return taggedLine(await client.command('L1', `LOGIN ${user} ${imapQuote(password)}`), 'L1');
  } finally {
    client.destroy();
  }
}

describe('upgrading the store', () => {
  it('serve upgrades an older store at start after a 0600 backup beside it (logged), and its app passwords log in', async () => {
    // Catches: an upgrade without a backup (or a backup taken after migrating), a backup others can
    // read, a start that refuses (or silently empties) an older store, and data lost on the way.
    await setUp();
    await cliOk('account', 'add', 'alice');
    await cliOk('account', 'add', 'bob');
    const alice = JSON.parse(await cliOk('app-password', 'create', 'alice', '--name', 'laptop', '--json')) as { password: string };
    const bob = JSON.parse(await cliOk('app-password', 'create', 'bob', '--name', 'phone', '--json')) as { password: string };
    downgradeStore(dbFile, OLD_VERSION);
    expect(versionOf(dbFile)).toBe(OLD_VERSION);

    // The CLI of the new version leaves the schema alone and says what to do.
    expectOneLine(
      await cli('app-password', 'list', 'alice'),
      `${dbFile} has schema version ${OLD_VERSION}, older than this mailgate's (${SCHEMA_VERSION}): restart the gateway (mailgate serve) with this version, which upgrades it after writing a backup beside it, then run this again`,
    );
    expect(versionOf(dbFile)).toBe(OLD_VERSION);

    gateway = await startServe(config, { MAILGATE_MASTER_PASSWORD: dc.master.password });
    // The store is opened before the listeners: the line is there once serve listens.
    const upgraded = gateway.logs().find((l) => String(l.msg).startsWith('upgraded the store'));
    expect(upgraded).toMatchObject({ level: 'info', path: dbFile, from: OLD_VERSION, to: SCHEMA_VERSION });
    const backup = upgraded!.backup as string;
    expect(upgraded!.msg).toBe(`upgraded the store from schema version ${OLD_VERSION} to ${SCHEMA_VERSION}; the store as it was is in ${backup}`);
    expect(path.dirname(backup)).toBe(path.dirname(dbFile));
    expect(path.basename(backup)).toMatch(new RegExp(`^mailgate\\.db\\.bak-v${OLD_VERSION}-\\d{8}T\\d{6}Z$`));
    expect(statSync(backup).mode & 0o777).toBe(0o600);

    // Both accounts' app passwords log in through the upgraded store.
    const port = gateway.port('imap');
    expect(await imapLogin(port, 'alice', alice.password)).toMatch(/^L1 OK /);
    expect(await imapLogin(port, 'bob', bob.password)).toMatch(/^L1 OK /);
    expect(versionOf(dbFile)).toBe(SCHEMA_VERSION);
    const listed = JSON.parse(await cliOk('app-password', 'list', 'alice', '--json')) as Array<{ name: string }>;
    expect(listed.map((p) => p.name)).toEqual(['laptop']);

    // The backup is the store as it was: the old version, with its accounts and app passwords.
    const old = new Database(backup, { readonly: true, fileMustExist: true });
    try {
      expect(old.pragma('user_version', { simple: true })).toBe(OLD_VERSION);
      expect(old.prepare('SELECT username FROM accounts ORDER BY username').pluck().all()).toEqual(['alice', 'bob']);
      expect(old.prepare('SELECT name FROM app_passwords ORDER BY name').pluck().all()).toEqual(['laptop', 'phone']);
    } finally {
      old.close();
    }

    // A second start has nothing to upgrade and writes no second copy.
    expect(await gateway.stop()).toBe(0);
    gateway = await startServe(config, { MAILGATE_MASTER_PASSWORD: dc.master.password });
    expect(gateway.logs().some((l) => String(l.msg).startsWith('upgraded the store'))).toBe(false);
    expect(readdirSync(path.dirname(dbFile)).filter((n) => n.includes('.bak-'))).toEqual([path.basename(backup)]);
  }, 60_000);

  it('a store newer than this mailgate: the CLI and serve exit 1 with one line, and leave it as it is', async () => {
    // Catches: an older mailgate that opens (and writes to) a schema it does not know, or a refusal
    // that does not say which file, which versions, and what to do.
    await setUp();
    await cliOk('account', 'add', 'alice');
    const db = new Database(dbFile);
    db.pragma(`user_version = ${SCHEMA_VERSION + 1}`);
    db.close();
    const message = `${dbFile} has schema version ${SCHEMA_VERSION + 1}, newer than this mailgate understands (${SCHEMA_VERSION}): a newer mailgate upgraded it; run that version again`;
    expectOneLine(await cli('account', 'list'), message);
    expectOneLine(await cli('app-password', 'create', 'alice', '--name', 'x'), message);
    const serve = await runCli(['--config', config, 'serve'], { env: { MAILGATE_MASTER_PASSWORD: dc.master.password } });
    expectOneLine(serve, message);
    expect(versionOf(dbFile)).toBe(SCHEMA_VERSION + 1);
    expect(existsSync(dbFile)).toBe(true);
  });
});
