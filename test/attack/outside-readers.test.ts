/**
 * Other programs reading the store while `mailgate serve` runs (issue 10).
 *
 * A real gateway process (the built binary) in front of a real Dovecot; the
 * store is read, the way administrators and monitoring scripts do, by
 * Python's sqlite3 and Debian's sqlite3 shell, each opening, reading and
 * closing it over and over while mail programs log in. SQLite is built for
 * that, as long as every process keeps the advisory locks it took: a gateway
 * that opens and closes the database file itself (a "is it still a
 * database?" peek) silently drops them all, the next outside reader to close
 * believes it is the last connection, checkpoints and deletes the WAL and
 * shared memory under the gateway, and from then on the gateway and the CLI
 * each see their own database: revocations never arrive.
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { ImapFlow } from 'imapflow';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { runCli, writeCliConfig } from '../support/cli.js';
import { dovecotServeToml, startServe, type ServeProcess } from '../support/serve.js';
import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { ImapClient, imapQuote, taggedLine } from '../support/imap-client.js';
import { openDeletedStoreFiles, posixLocksOf, SQLITE_SHARED_LOCK, SQLITE3_CLI } from '../support/outside.js';
import { pythonJson } from '../support/python.js';
import { sleep, waitUntil } from '../support/timing.js';
import { makeTempDir, removeTempDir } from '../support/tmp.js';
import { isErrorLevel } from '../support/log-levels.js';

const execFileP = promisify(execFile);

/** How long the outside readers keep opening and closing the store while mail programs log in. */
const READING_MS = 4_000;

let dc: DovecotHandle;
let dir = '';
let config = '';
let dbPath = '';
let gateway: ServeProcess | null = null;
let imapsPort = 0;

beforeAll(async () => {
  dc = await startDovecot();
  dir = await makeTempDir('locks');
  config = writeCliConfig(dir, dovecotServeToml(dc, '\n[timeouts]\nrevocation_check_seconds = 1\n'));
  dbPath = path.join(dir, 'data', 'mailgate.db');
  await cliOk(['account', 'add', 'alice']);
  gateway = await startServe(config, { MAILGATE_MASTER_PASSWORD: dc.master.password });
  imapsPort = gateway.port('imap');
});

afterAll(async () => {
  await gateway?.stop('SIGKILL');
  await dc?.stop();
  if (dir) await removeTempDir(dir);
});

async function cliOk(args: string[]): Promise<string> {
  const result = await runCli(['--config', config, ...args]);
  expect(result.code, `mailgate ${args.join(' ')}: ${result.stderr}`).toBe(0);
  return result.stdout;
}

async function createAppPassword(name: string): Promise<{ id: number; password: string }> {
  return JSON.parse(await cliOk(['app-password', 'create', 'alice', '--name', name, '--json'])) as { id: number; password: string };
}

/** One IMAPS login; the tagged answer. */
async function login(password: string): Promise<string> {
  const { client } = await ImapClient.open({ port: imapsPort, tls: true, ca: dc.caCert, timeoutMs: 10_000 });
  try {
    return taggedLine(await client.command('L1', `LOGIN alice ${imapQuote(password)}`), 'L1');
  } finally {
    client.destroy();
  }
}

/** Python's sqlite3, as a monitoring script uses it: connect (read-write, the default), read, close, again. */
function pythonReader(ms: number): Promise<Record<string, unknown>> {
  return pythonJson(
    `
    import sqlite3, time
    until = time.monotonic() + INPUT['seconds']
    reads = 0
    while time.monotonic() < until:
        con = sqlite3.connect(INPUT['db'], timeout=5)
        con.execute('SELECT count(*) FROM app_passwords').fetchone()
        con.close()
        reads += 1
        time.sleep(0.03)
    emit({'reads': reads})
    `,
    { db: dbPath, seconds: ms / 1000 },
  );
}

/** Debian's sqlite3 shell, one short run after another, as an administrator's one-liners. */
async function shellReader(sqlite3: string, ms: number): Promise<number> {
  const until = Date.now() + ms;
  let reads = 0;
  while (Date.now() < until) {
    await execFileP(sqlite3, ['-cmd', '.timeout 5000', dbPath, 'SELECT count(*) FROM app_passwords;']);
    reads += 1;
    await sleep(30);
  }
  return reads;
}

/** An ImapFlow client IDLEing in INBOX; `closed` settles when the server drops it. */
async function idleSession(password: string): Promise<{ closed: Promise<void>; serverSaid: () => string }> {
  const serverData: string[] = [];
  const client = new ImapFlow({
    host: '127.0.0.1',
    port: imapsPort,
    secure: true,
    tls: { ca: readFileSync(dc.caCert), servername: 'localhost' },
    auth: { user: 'alice', pass: password },
    logRaw: true,
    logger: {
      trace: (entry: { src?: string; data?: string }) => {
        if (entry?.src === 's' && entry.data) serverData.push(Buffer.from(entry.data, 'base64').toString('latin1'));
      },
      debug: () => undefined,
      info: () => undefined,
      warn: () => undefined,
      error: () => undefined,
    },
  });
  client.on('error', () => undefined);
  const closed = new Promise<void>((resolve) => client.once('close', () => resolve()));
  await client.connect();
  await client.mailboxOpen('INBOX');
  void client.idle().catch(() => undefined);
  await waitUntil(() => serverData.join('').includes('+ idling'), 'the IDLE continuation');
  return { closed, serverSaid: () => serverData.join('') };
}

it('outside readers open and close the live store: the gateway keeps its locks, the WAL, and sees the revocation at once', async () => {
  // Catches: the gateway opening and closing the database file itself (which drops every POSIX
  // lock the process holds on it), so that an outside reader's close checkpoints and deletes the
  // WAL and -shm under it: a revoked app password still logging in, its IDLE session left open,
  // descriptors of deleted -wal/-shm files, and a corrupted or silently reverted store.
  const revoked = await createAppPassword('laptop');
  const kept = await createAppPassword('phone');
  const idle = await idleSession(revoked.password);

  // Mail programs log in (each login writes: last use, audit) while the store is read from outside.
  const readers: Array<Promise<unknown>> = [pythonReader(READING_MS)];
  if (SQLITE3_CLI) readers.push(shellReader(SQLITE3_CLI, READING_MS));
  let reading = true;
  const allRead = Promise.all(readers).finally(() => (reading = false));
  let logins = 0;
  while (reading) {
    expect(await login(logins % 2 ? kept.password : revoked.password)).toMatch(/^L1 OK /);
    logins += 1;
    await sleep(100);
  }
  const [python, shell] = await allRead;
  expect((python as { reads: number }).reads).toBeGreaterThan(10);
  if (SQLITE3_CLI) expect(shell as number).toBeGreaterThan(10);
  expect(logins).toBeGreaterThan(5);

  await cliOk(['app-password', 'revoke', 'alice', String(revoked.id)]);
  const revokedAt = Date.now();
  // Soft from here on: when the locks were lost, every symptom is worth seeing at once.
  const closedInTime = await Promise.race([idle.closed.then(() => true), sleep(5_000).then(() => false)]);
  expect.soft(closedInTime, 'the IDLE session is closed within 5 s of the revocation').toBe(true);
  if (closedInTime) expect.soft(Date.now() - revokedAt).toBeLessThan(5_000);
  if (closedInTime) expect.soft(idle.serverSaid()).toContain('* BYE [UNAVAILABLE]');
  expect.soft(await login(revoked.password), 'the revoked app password').toMatch(/^L1 NO /);
  expect.soft(await login(kept.password), 'the other app password').toMatch(/^L1 OK /);

  expect.soft(openDeletedStoreFiles(dbPath), 'descriptors of deleted store files').toEqual([]);
  const check = await pythonJson(
    `
    import sqlite3
    con = sqlite3.connect(INPUT['db'], timeout=5)
    emit({'integrity': [r[0] for r in con.execute('PRAGMA integrity_check')]})
    con.close()
    `,
    { db: dbPath },
  );
  expect.soft(check.integrity, 'PRAGMA integrity_check').toEqual(['ok']);
  expect.soft(posixLocksOf(gateway!.child.pid!, dbPath), "the gateway's locks on the database file").toContainEqual(SQLITE_SHARED_LOCK);
  expect(gateway!.logs().filter((l) => isErrorLevel(l))).toEqual([]);
});
