/**
 * `mailgate store backup` and `mailgate store check`, run as the built binary:
 * the supported ways to copy and check the store while the gateway runs.
 */
import { existsSync, linkSync, readdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { SCHEMA_VERSION } from '../../src/store/sqlite/migrations.js';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { runCli, writeCliConfig } from '../support/cli.js';
import { outsideCopy, outsideRead, outsideScribble } from '../support/outside.js';
import { pythonJson } from '../support/python.js';
import { sleep, waitUntil } from '../support/timing.js';
import { makeTempDir, removeTempDir } from '../support/tmp.js';

let dir: string;
let config: string;
let dbFile: string;

beforeEach(async () => {
  dir = await makeTempDir('cli-store');
  config = writeCliConfig(dir);
  dbFile = path.join(dir, 'data', 'mailgate.db');
});
afterEach(() => removeTempDir(dir));

const cli = (...args: string[]) => runCli(['--config', config, ...args]);

async function cliOk(...args: string[]): Promise<string> {
  const result = await cli(...args);
  expect(result.code, `mailgate ${args.join(' ')}: ${result.stderr}`).toBe(0);
  return result.stdout;
}

/** Refused: exit 1, one line on stderr matching `message`, nothing on stdout. */
async function expectRefused(args: string[], message: RegExp): Promise<void> {
  const result = await cli(...args);
  expect(result.code, result.stdout + result.stderr).toBe(1);
  expect(result.stderr).toMatch(/^mailgate: .*\n$/);
  expect(result.stderr.trimEnd()).toMatch(message);
  expect(result.stderr.trim().split('\n')).toHaveLength(1);
  expect(result.stdout).toBe('');
}

/** A CLI config whose store is `file` (a copy to check). */
function configFor(file: string): string {
  const out = `${file}.toml`;
  writeFileSync(out, `[store]\npath = ${JSON.stringify(file)}\nkey_file = ${JSON.stringify(path.join(dir, 'data', 'mailgate.key'))}\n`);
  return out;
}

/** Rows of `sql` in a database file, through SQLite (no gateway runs in this process). */
function rows<T>(file: string, sql: string): T[] {
  const db = new Database(file, { readonly: true, fileMustExist: true });
  try {
    return db.prepare(sql).all() as T[];
  } finally {
    db.close();
  }
}

describe('mailgate store backup', () => {
  it('copies the store online while another process writes: a consistent snapshot, mode 0600, that opens and has the rows', async () => {
    // Catches: a copy torn by concurrent commits (cp of a live WAL database), a backup that never
    // finishes while writes keep restarting it, and a copy others can read (app password hashes, TOTP secrets).
    await cliOk('account', 'add', 'alice');
    await cliOk('account', 'add', 'bob');
    // The writer commits two audit rows per transaction until told to stop: a consistent copy has an even number.
    const stop = path.join(dir, 'stop-writing');
    const writer = pythonJson(
      `
      import os, sqlite3, time
      con = sqlite3.connect(INPUT['db'], timeout=5, isolation_level=None)
      until = time.monotonic() + 20
      pairs = 0
      while time.monotonic() < until and not os.path.exists(INPUT['stop']):
          con.execute('BEGIN IMMEDIATE')
          for half in (1, 2):
              con.execute("INSERT INTO audit (at, event, detail) VALUES (?, 'writer', ?)", (int(time.time() * 1000), 'x' * 300))
          con.execute('COMMIT')
          pairs += 1
      con.close()
      emit({'pairs': pairs})
      `,
      { db: dbFile, stop },
      30_000,
    );
    const writerRows = () => rows<{ n: number }>(dbFile, "SELECT count(*) AS n FROM audit WHERE event = 'writer'")[0]!.n;
    await waitUntil(() => writerRows() > 100, 'the writer to be busy', 10_000);
    const copy = path.join(dir, 'backup.db');
    const out = JSON.parse(await cliOk('store', 'backup', copy, '--json')) as { file: string; bytes: number; pages: number; source: string };
    await sleep(200);
    writeFileSync(stop, '');
    const { pairs } = (await writer) as { pairs: number };
    // Nothing left beside it: no temporary file, no journal, no -wal or -shm.
    expect(readdirSync(dir).filter((n) => n.includes('backup'))).toEqual(['backup.db']);
    expect(out).toMatchObject({ file: copy, source: dbFile });
    expect(out.bytes).toBe(statSync(copy).size);
    expect(out.pages * 4096).toBe(out.bytes);
    expect(statSync(copy).mode & 0o777).toBe(0o600);
    expect(rows<{ username: string }>(copy, 'SELECT username FROM accounts ORDER BY username').map((r) => r.username)).toEqual(['alice', 'bob']);
    const copied = rows<{ n: number }>(copy, "SELECT count(*) AS n FROM audit WHERE event = 'writer'")[0]!.n;
    expect(copied % 2).toBe(0);
    expect(copied).toBeGreaterThan(0);
    expect(copied).toBeLessThan(pairs * 2);
    expect(rows<{ integrity_check: string }>(copy, 'PRAGMA integrity_check')).toEqual([{ integrity_check: 'ok' }]);
    // A file of its own (rollback journal, not WAL): it opens read-only anywhere, and leaves nothing beside it.
    expect(rows<{ journal_mode: string }>(copy, 'PRAGMA journal_mode')).toEqual([{ journal_mode: 'delete' }]);
    expect(readdirSync(dir).filter((n) => n.includes('backup'))).toEqual(['backup.db']);
  });

  it('says what it wrote, and reminds that the key file is not in it', async () => {
    await cliOk('account', 'add', 'alice');
    const copy = path.join(dir, 'plain.db');
    const out = await cliOk('store', 'backup', copy);
    expect(out).toBe(
      `wrote ${copy}: ${statSync(copy).size} bytes (${statSync(copy).size / 4096} pages), a consistent copy of ${dbFile}\n` +
        `the key file ${path.join(dir, 'data', 'mailgate.key')} is not in it: keep a copy of that too, or the TOTP secrets in the copy cannot be read\n`,
    );
  });

  it('refuses the live database and its -wal/-shm (by name, through a symlink, or a hard link), and an existing file without --force', async () => {
    // Catches: a backup written over the store it copies, or over SQLite's files beside it.
    await cliOk('account', 'add', 'alice');
    const before = outsideRead(dbFile);
    for (const target of [dbFile, `${dbFile}-wal`, `${dbFile}-shm`, path.join(dir, 'data', '..', 'data', 'mailgate.db')]) {
      await expectRefused(['store', 'backup', target, '--force'], /is the live database.*; write the backup to another file$/);
    }
    symlinkSync(dbFile, path.join(dir, 'link.db'));
    await expectRefused(['store', 'backup', path.join(dir, 'link.db'), '--force'], /link\.db is the live database/);
    linkSync(dbFile, path.join(dir, 'hard.db'));
    await expectRefused(['store', 'backup', path.join(dir, 'hard.db'), '--force'], /hard\.db is the live database/);
    expect(outsideRead(dbFile).equals(before)).toBe(true);

    const copy = path.join(dir, 'exists.db');
    writeFileSync(copy, 'keep me');
    await expectRefused(['store', 'backup', copy], /exists\.db exists; use --force to replace it$/);
    expect(readFileSync(copy, 'utf8')).toBe('keep me');
    await cliOk('store', 'backup', copy, '--force');
    expect(rows<{ username: string }>(copy, 'SELECT username FROM accounts')).toEqual([{ username: 'alice' }]);
    await expectRefused(['store', 'backup', path.join(dir, 'no', 'such', 'folder.db')], /the folder .* does not exist$/);
  });

  it('never creates a missing store', async () => {
    // Catches: a backup (or check) of a misconfigured path that quietly makes a new, empty store.
    await expectRefused(['store', 'backup', path.join(dir, 'copy.db')], new RegExp(`^mailgate: no store at ${dbFile} \\(store\\.path in `));
    await expectRefused(['store', 'check'], new RegExp(`^mailgate: no store at ${dbFile} \\(store\\.path in `));
    expect(existsSync(path.join(dir, 'data'))).toBe(false);
    expect(existsSync(path.join(dir, 'copy.db'))).toBe(false);
  });
});

describe('mailgate store check', () => {
  it('says ok, and exits 0, for a sound store', async () => {
    await cliOk('account', 'add', 'alice');
    expect(await cliOk('store', 'check')).toBe(`ok: ${dbFile}\n`);
    expect(JSON.parse(await cliOk('store', 'check', '--json'))).toEqual({ file: dbFile, ok: true, schemaVersion: SCHEMA_VERSION, integrity: ['ok'], foreignKeys: [] });
  });

  it('lists the problems of a damaged copy and exits 1: a scribbled page, a dangling foreign key, a file that is no database', async () => {
    // Catches: a check that reports ok on damage, or exits 0 with problems.
    await cliOk('account', 'add', 'alice');
    await cliOk('app-password', 'create', 'alice', '--name', 'phone');

    const scribbled = path.join(dir, 'scribbled.db');
    await cliOk('store', 'backup', scribbled);
    // Page 2 is the accounts table's root.
    outsideScribble(scribbled, 4096, 4096);
    const damaged = await runCli(['--config', configFor(scribbled), 'store', 'check']);
    expect(damaged.code).toBe(1);
    expect(damaged.stdout).toMatch(/^integrity: /);
    expect(damaged.stderr).toMatch(new RegExp(`^mailgate: ${scribbled} failed the check \\(\\d+ problems?\\)\\n$`));

    const dangling = path.join(dir, 'dangling.db');
    await cliOk('store', 'backup', dangling);
    await pythonJson(
      `
      import sqlite3
      con = sqlite3.connect(INPUT['db'])
      con.execute("UPDATE app_passwords SET account_id = 999")
      con.commit()
      con.close()
      emit({})
      `,
      { db: dangling },
    );
    const orphan = await runCli(['--config', configFor(dangling), 'store', 'check', '--json']);
    expect(orphan.code).toBe(1);
    expect(JSON.parse(orphan.stdout)).toMatchObject({ ok: false, integrity: ['ok'], foreignKeys: [{ table: 'app_passwords', parent: 'accounts' }] });
    const plain = await runCli(['--config', configFor(dangling), 'store', 'check']);
    expect(plain.stdout).toBe('foreign key: app_passwords row 1 refers to a missing row of accounts\n');

    const garbage = path.join(dir, 'garbage.db');
    outsideCopy(scribbled, garbage);
    outsideScribble(garbage, statSync(garbage).size);
    const notDb = await runCli(['--config', configFor(garbage), 'store', 'check']);
    expect(notDb.code).toBe(1);
    expect(notDb.stdout).toBe('integrity: file is not a database\n');
  });
});
