/**
 * Where the CLI finds the store, and that it never starts a new one by
 * accident (issue 13): relative paths come from the config file's folder, not
 * the working directory; only `account add` (and `serve`) create a store;
 * every other command on a missing one says so in one line and exits 1.
 */
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ROOT, runCli } from '../support/cli.js';
import { makeTempDir, removeTempDir } from '../support/tmp.js';

let dir: string;
let config: string;
let dbFile: string;

/** A config in dir/etc/ whose store is given relative to it: ../state/mailgate.db. */
function writeRelativeConfig(): string {
  mkdirSync(path.join(dir, 'etc'));
  const file = path.join(dir, 'etc', 'mailgate.toml');
  writeFileSync(
    file,
    `[store]
path = "../state/mailgate.db"
key_file = "../state/mailgate.key"
busy_timeout_ms = 300

[auth]
argon2_memory_kib = 1024
argon2_iterations = 1

[web]
listen = ""
`,
  );
  return file;
}

beforeEach(async () => {
  dir = await makeTempDir('cli-where');
  config = writeRelativeConfig();
  dbFile = path.join(dir, 'state', 'mailgate.db');
});
afterEach(() => removeTempDir(dir));

/** Every command class but `account add` and `serve`: reads, writes, TOTP, app passwords, blocks, page sessions, the store's tools. */
const NEEDS_A_STORE: string[][] = [
  ['account', 'list'],
  ['account', 'show', 'alice'],
  ['account', 'remove', 'alice', '--yes'],
  ['totp', 'status', 'alice'],
  ['totp', 'enroll', 'alice'],
  ['totp', 'confirm', 'alice', '123456'],
  ['totp', 'recovery-codes', 'alice'],
  ['totp', 'disable', 'alice', '--yes'],
  ['app-password', 'create', 'alice', '--name', 'phone'],
  ['app-password', 'list', 'alice'],
  ['app-password', 'revoke', 'alice', '1'],
  ['blocks', 'list'],
  ['blocks', 'clear', '192.0.2.1'],
  ['web', 'sessions', 'alice'],
  ['store', 'check'],
  ['store', 'backup', 'copy.db'],
];

describe('a command on a store that does not exist', () => {
  it.each(NEEDS_A_STORE.map((args) => [args.slice(0, 2).join(' '), args]))('`%s` says so in one line, naming the database and the config file, exits 1, creates nothing', async (_name, args) => {
    // Catches: a command run with the wrong config (or from another folder) quietly starting an empty store.
    const result = await runCli(['--config', config, ...args], { cwd: dir });
    expect(result.code, result.stdout + result.stderr).toBe(1);
    expect(result.stdout).toBe('');
    expect(result.stderr).toBe(`mailgate: no store at ${dbFile} (store.path in ${config}); \`mailgate account add\` creates one, or name another config with --config\n`);
    expect(readdirSync(dir).sort()).toEqual(['etc']);
  });

  it('`account add` creates it, and then every command finds it', async () => {
    const added = await runCli(['--config', config, 'account', 'add', 'alice'], { cwd: dir });
    expect(added.code, added.stderr).toBe(0);
    expect(existsSync(dbFile)).toBe(true);
    const listed = await runCli(['--config', config, 'account', 'list', '--json'], { cwd: dir });
    expect(listed.code, listed.stderr).toBe(0);
    expect((JSON.parse(listed.stdout) as Array<{ username: string }>).map((a) => a.username)).toEqual(['alice']);
  });
});

describe('relative paths in the config', () => {
  it('are taken from the config file\'s folder: run from another folder, the CLI finds the same store', async () => {
    // Catches: store.path resolved from the working directory (issue 13: a second, empty store in whatever folder the CLI ran in).
    const elsewhere = path.join(dir, 'elsewhere');
    mkdirSync(elsewhere);
    expect((await runCli(['--config', config, 'account', 'add', 'alice'], { cwd: dir })).code).toBe(0);
    expect(existsSync(dbFile)).toBe(true);
    const listed = await runCli(['--config', path.relative(elsewhere, config), 'account', 'list', '--json'], { cwd: elsewhere });
    expect(listed.code, listed.stderr).toBe(0);
    expect((JSON.parse(listed.stdout) as Array<{ username: string }>).map((a) => a.username)).toEqual(['alice']);
    expect(readdirSync(elsewhere)).toEqual([]);
    const viaEnv = await runCli(['account', 'list', '--json'], { cwd: elsewhere, env: { MAILGATE_CONFIG: config } });
    expect(JSON.parse(viaEnv.stdout)).toHaveLength(1);
  });

  it('the default config of a checkout is its config/mailgate.toml, from any folder', async () => {
    // --help names the default the CLI would read; run from an unrelated folder.
    const help = await runCli(['--help'], { cwd: dir });
    expect(help.stdout.replace(/\s+/g, ' ')).toContain(`else ${path.join(ROOT, 'config', 'mailgate.toml')})`);
  });
});
