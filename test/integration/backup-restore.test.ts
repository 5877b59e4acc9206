/**
 * A backup taken under load, and a restore by the documented procedure
 * (docs/operations.md, "Restoring a backup"), for real (issue 13).
 *
 * A real `mailgate serve` in front of a real Dovecot; three accounts with
 * app passwords; three clients logging in over and over while
 * `mailgate store backup` runs. Then changes made after the backup, the
 * gateway stopped with SIGTERM, the -wal and -shm removed, the backup
 * installed over the database, `mailgate store check`, a start: every
 * account's app password logs in, the audit rows and app passwords of the
 * backup are there, and the changes made after it are not.
 */
import { execFile } from 'node:child_process';
import { existsSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { runCli, writeCliConfig } from '../support/cli.js';
import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { ImapClient, imapQuote, taggedLine } from '../support/imap-client.js';
import { dovecotServeToml, startServe, type ServeProcess } from '../support/serve.js';
import { sleep, waitUntil } from '../support/timing.js';
import { makeTempDir, removeTempDir } from '../support/tmp.js';

const execFileP = promisify(execFile);
const USERS = ['alice', 'bob', 'carol'] as const;
/** Old audit rows, so that the copy takes a while (about 10 MB) and the trail has something to lose. */
const OLD_AUDIT_ROWS = 60_000;

let dc: DovecotHandle;
let dir = '';
let config = '';
let dbFile = '';
let gateway: ServeProcess | null = null;

beforeAll(async () => {
  dc = await startDovecot();
  dir = await makeTempDir('restore');
  config = writeCliConfig(dir, dovecotServeToml(dc, '\n[timeouts]\nshutdown_grace_seconds = 2\nrevocation_check_seconds = 1\n'));
  dbFile = path.join(dir, 'data', 'mailgate.db');
});

afterAll(async () => {
  await gateway?.stop('SIGKILL');
  await dc?.stop();
  if (dir) await removeTempDir(dir);
});

async function cliOk(...args: string[]): Promise<string> {
  const result = await runCli(['--config', config, ...args]);
  expect(result.code, `mailgate ${args.join(' ')}: ${result.stderr}`).toBe(0);
  return result.stdout;
}

async function createAppPassword(user: string, name: string): Promise<{ id: number; password: string }> {
  return JSON.parse(await cliOk('app-password', 'create', user, '--name', name, '--json')) as { id: number; password: string };
}

/** One IMAPS login and logout; the tagged answer to LOGIN. */
async function login(user: string, password: string): Promise<string> {
  const { client } = await ImapClient.open({ port: gateway!.port('imap'), tls: true, ca: dc.caCert, timeoutMs: 15_000 });
  try {
    const answer = taggedLine(await client.command('L', `LOGIN ${user} ${imapQuote(password)}`), 'L');
    if (answer.startsWith('L OK')) await client.command('Z', 'LOGOUT');
    return answer;
  } finally {
    client.destroy();
  }
}

/** A mail program logging in again and again until told to stop: how many logins went through, and every other answer. */
async function loginLoop(user: string, password: string, running: () => boolean): Promise<{ ok: number; failed: string[] }> {
  const result = { ok: 0, failed: [] as string[] };
  while (running()) {
    const answer = await login(user, password).catch((err: Error) => `error: ${err.message}`);
    if (answer.startsWith('L OK')) result.ok += 1;
    else result.failed.push(answer);
  }
  return result;
}

function rowsOf<T>(file: string, sql: string): T[] {
  const db = new Database(file, { readonly: true, fileMustExist: true });
  try {
    return db.prepare(sql).all() as T[];
  } finally {
    db.close();
  }
}

it('a backup taken while three clients log in restores by the documented steps: every app password logs in, the audit trail is back', async () => {
  // Catches: a backup that stalls or fails logins while it runs, a torn or partial copy, a restore
  // procedure that leaves a stale -wal to be replayed over the copy (or a file the gateway cannot
  // open), and a restored gateway that does not see the copy's app passwords and audit rows.
  for (const user of USERS) await cliOk('account', 'add', user);
  const passwords = new Map<string, { id: number; password: string }>();
  for (const user of USERS) passwords.set(user, await createAppPassword(user, `${user}-laptop`));
  // Old audit rows, as months of logins leave them.
  const db = new Database(dbFile);
  db.transaction(() => {
    const insert = db.prepare("INSERT INTO audit (at, event, username, ip, protocol, detail) VALUES (?, 'login-failed', ?, '192.0.2.1', 'imap', ?)");
    for (let i = 0; i < OLD_AUDIT_ROWS; i++) insert.run(Date.now() - 86_400_000 + i, USERS[i % 3], `wrong-password ${'x'.repeat(100)}`);
  })();
  db.close();

  gateway = await startServe(config, { MAILGATE_MASTER_PASSWORD: dc.master.password });
  let running = true;
  const loops = USERS.map((user) => loginLoop(user, passwords.get(user)!.password, () => running));
  const logins = () => rowsOf<{ n: number }>(dbFile, "SELECT count(*) AS n FROM audit WHERE event = 'login-ok'")[0]!.n;
  await waitUntil(() => logins() >= 15, 'the three clients to be logging in', 20_000);

  const backup = path.join(dir, 'backup.db');
  const before = logins();
  const written = JSON.parse(await cliOk('store', 'backup', backup, '--json')) as { file: string; bytes: number };
  await sleep(300);
  const after = logins();
  running = false;
  const results = await Promise.all(loops);
  // The logins went on while the copy was made, and not one failed.
  expect(after).toBeGreaterThan(before);
  for (const [i, result] of results.entries()) {
    expect(result.failed, USERS[i]).toEqual([]);
    expect(result.ok, USERS[i]).toBeGreaterThan(3);
  }
  expect(written.file).toBe(backup);
  expect(statSync(backup).mode & 0o777).toBe(0o600);
  const backedUpLogins = rowsOf<{ username: string; n: number }>(backup, "SELECT username, count(*) AS n FROM audit WHERE event = 'login-ok' GROUP BY username ORDER BY username");
  expect(backedUpLogins.map((r) => r.username)).toEqual([...USERS]);
  for (const row of backedUpLogins) expect(row.n).toBeGreaterThan(0);
  const backedUpAudit = rowsOf<{ n: number }>(backup, 'SELECT count(*) AS n FROM audit')[0]!.n;
  expect(backedUpAudit).toBeGreaterThan(OLD_AUDIT_ROWS);

  // After the backup: a new app password, and carol's revoked. The restore takes both back.
  const late = await createAppPassword('alice', 'after-backup');
  expect(await login('alice', late.password)).toMatch(/^L OK/);
  await cliOk('app-password', 'revoke', 'carol', String(passwords.get('carol')!.id));
  await waitUntil(async () => /^L NO/.test(await login('carol', passwords.get('carol')!.password)), 'carol refused after the revocation');

  // The restore, step by step as docs/operations.md says.
  // 1. Stop the gateway.
  expect(await gateway.stop('SIGTERM')).toBe(0);
  gateway = null;
  // 2. Remove the -wal and -shm of the old database: a -wal left beside the copy would be replayed into it.
  rmSync(`${dbFile}-wal`, { force: true });
  rmSync(`${dbFile}-shm`, { force: true });
  // 3. Install the copy in its place, mode 0600 (owned by the gateway's user: here, us).
  await execFileP('install', ['-m', '0600', backup, dbFile]);
  // 4. Check it.
  expect(await cliOk('store', 'check')).toBe(`ok: ${dbFile}\n`);
  // 5. Start the gateway.
  gateway = await startServe(config, { MAILGATE_MASTER_PASSWORD: dc.master.password });

  for (const user of USERS) expect(await login(user, passwords.get(user)!.password), user).toMatch(/^L OK/);
  expect(await login('alice', late.password)).toMatch(/^L NO/);
  for (const user of USERS) {
    const listed = JSON.parse(await cliOk('app-password', 'list', user, '--json')) as Array<{ name: string; status: string }>;
    expect(listed.map((p) => `${p.name}:${p.status}`), user).toEqual([`${user}-laptop:active`]);
  }
  // The audit trail of the copy is back (and the logins just now are added to it).
  const trail = JSON.parse(await cliOk('audit', '--json', '--limit', String(OLD_AUDIT_ROWS * 2))) as Array<{ event: string; user: string | null }>;
  expect(trail.length).toBeGreaterThanOrEqual(backedUpAudit);
  for (const row of backedUpLogins) {
    const now = trail.filter((r) => r.event === 'login-ok' && r.user === row.username).length;
    expect(now, row.username).toBe(row.n + 1);
  }
  expect(trail.some((r) => r.event === 'created' && r.user === 'alice')).toBe(true);
  expect(existsSync(`${backup}-wal`)).toBe(false);
}, 120_000);
