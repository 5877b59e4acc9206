/**
 * `mailgate store migrate` and `mailgate store check` on both engines, and
 * what does not apply to PostgreSQL (`store backup`: pg_dump's job), run as
 * the built binary against a real PostgreSQL.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { MIGRATIONS } from '../../src/store/sqlite/migrations.js';
import { loadOrCreateKey } from '../../src/store/secret-box.js';
import { runCli, writeCliConfig } from '../support/cli.js';
import { startPostgres, type PostgresHandle } from '../support/postgres.js';
import { makeTempDir, removeTempDir } from '../support/tmp.js';

let dir: string;
beforeEach(async () => {
  dir = await makeTempDir('cli-engines');
});
afterEach(() => removeTempDir(dir));

describe('mailgate store migrate on SQLite', () => {
  it('brings an older store to the current schema, says when there is nothing to do, and never creates a store', async () => {
    const config = writeCliConfig(dir);
    const missing = await runCli(['--config', config, 'store', 'migrate']);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/does not exist|missing/);
    const file = path.join(dir, 'data', 'mailgate.db');
    mkdirSync(path.dirname(file), { recursive: true });
    const db = new Database(file);
    for (const migration of MIGRATIONS.slice(0, 3)) db.exec(migration.sql);
    db.pragma('user_version = 3');
    db.close();
    loadOrCreateKey(path.join(dir, 'data', 'mailgate.key'));
    const migrated = await runCli(['--config', config, 'store', 'migrate']);
    expect(migrated.stderr).toBe('');
    const backup = /the store as it was is in (\S+)\n$/.exec(migrated.stdout)?.[1];
    expect(migrated.stdout).toBe(`${file}: schema version 3 -> 4; the store as it was is in ${backup}\n`);
    // Catches: an upgrade with no copy of the store from before it.
    const copy = new Database(backup!, { readonly: true });
    expect(copy.pragma('user_version', { simple: true })).toBe(3);
    copy.close();
    const again = await runCli(['--config', config, 'store', 'migrate', '--json']);
    expect(JSON.parse(again.stdout)).toEqual({ store: file, from: 4, to: 4 });
  });
});

it('a postgres backend without a postgres:// URL is a configuration error naming the key', async () => {
  const file = path.join(dir, 'mailgate.toml');
  writeFileSync(file, '[store]\nbackend = "postgres"\n');
  const result = await runCli(['--config', file, 'account', 'list']);
  expect(result.code).toBe(2);
  expect(result.stderr).toMatch(/store\.url: a postgres:\/\/ URL is needed when store\.backend is "postgres"/);
});

describe('store commands on PostgreSQL', () => {
  let pg: PostgresHandle;
  beforeAll(async () => {
    pg = await startPostgres();
  });
  afterAll(() => pg?.stop());

  function postgresConfig(url: string, keyFile = path.join(dir, 'mailgate.key')): string {
    const file = path.join(dir, `mailgate-${Math.random().toString(36).slice(2)}.toml`);
    writeFileSync(file, `[store]\nbackend = "postgres"\nurl = ${JSON.stringify(url)}\nkey_file = ${JSON.stringify(keyFile)}\n`);
    return file;
  }

  it('migrate makes the schema in an empty database; check then passes; check names a wrong key file', async () => {
    const url = await pg.createDatabase();
    const config = postgresConfig(url);
    const masked = url.replace(/:[^:@/]+@/, ':***@');
    const before = await runCli(['--config', config, 'store', 'check']);
    expect(before.code).toBe(1);
    expect(before.stdout).toContain('no mailgate schema in this database');
    const migrated = await runCli(['--config', config, 'store', 'migrate']);
    expect(migrated.stderr).toBe('');
    expect(migrated.stdout).toBe(`${masked}: schema version 0 -> 4\n`);
    expect((await runCli(['--config', config, 'store', 'migrate'])).stdout).toBe(`${masked} is at schema version 4; nothing to do\n`);
    const check = await runCli(['--config', config, 'store', 'check']);
    expect(check.stderr).toBe('');
    expect(check.stdout).toBe(`ok: ${masked}\n`);
    expect(check.code).toBe(0);
    const otherKey = path.join(dir, 'other.key');
    loadOrCreateKey(otherKey);
    const wrong = await runCli(['--config', postgresConfig(url, otherKey), 'store', 'check', '--json']);
    expect(wrong.code).toBe(1);
    expect(JSON.parse(wrong.stdout)).toMatchObject({ ok: false, schemaVersion: 4, integrity: [`the key file ${otherKey} is not the one this store was made with`] });
  });

  it('mailgate check looks at the PostgreSQL store (reached, schema, key file), read-only', async () => {
    const url = await pg.createDatabase();
    const config = postgresConfig(url);
    const storeFinding = async () => {
      const result = await runCli(['--config', config, 'check', '--json']);
      return (JSON.parse(result.stdout) as { checks: Array<{ check: string; ok: boolean; message: string; advice: string | null }> }).checks.find((c) => c.check === 'store.url')!;
    };
    expect(await storeFinding()).toMatchObject({ ok: false, advice: expect.stringMatching(/mailgate store migrate/) });
    // Read-only: the check made no schema.
    expect(await pg.admin(new URL(url).pathname.slice(1), "SELECT to_regclass('schema_migrations') AS t")).toEqual([{ t: null }]);
    await runCli(['--config', config, 'store', 'migrate']);
    expect(await storeFinding()).toMatchObject({ ok: true, message: expect.stringMatching(/schema version 4, tables and key file as this mailgate expects/) });
  });

  it('store backup is refused with the tool to use instead; the password never shows', async () => {
    const url = await pg.createDatabase();
    const backup = await runCli(['--config', postgresConfig(url), 'store', 'backup', path.join(dir, 'copy.db')]);
    expect(backup.code).toBe(2);
    expect(backup.stderr).toMatch(/pg_dump/);
    const unreachable = await runCli(['--config', postgresConfig(url.replace(/:\d+\//, ':1/')), 'account', 'list']);
    expect(unreachable.code).toBe(1);
    expect(unreachable.stderr).toMatch(/^mailgate: database postgres:\/\/mailgate:\*\*\*@127\.0\.0\.1:1\/\w+ is unavailable: /);
    expect(unreachable.stderr).not.toContain('mailgate-test-password');
  });
});
