/**
 * `mailgate audit` (issue 13), the built binary: the audit trail without
 * SQL, newest first, for one account or all, since a time, as a table (UTC)
 * or JSON. The rows are made by the CLI itself, plus a few written straight
 * into the store with chosen times (no gateway runs here).
 */
import path from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { runCli, writeCliConfig } from '../support/cli.js';
import { makeTempDir, removeTempDir } from '../support/tmp.js';

interface AuditJson {
  id: number;
  at: string;
  event: string;
  user: string | null;
  appPasswordId: number | null;
  appPasswordName: string | null;
  ip: string | null;
  protocol: string | null;
  detail: string | null;
}

const HOUR = 3_600_000;

let dir: string;
let config: string;
let dbFile: string;

beforeEach(async () => {
  dir = await makeTempDir('cli-audit');
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

async function auditJson(...args: string[]): Promise<AuditJson[]> {
  return JSON.parse(await cliOk('audit', ...args, '--json')) as AuditJson[];
}

/** Adds audit rows as the gateway would have written them, at chosen times. */
function writeRows(rows: Array<{ at: number; event: string; username: string | null; appPasswordId?: number; ip?: string; protocol?: string; detail?: string }>): void {
  const db = new Database(dbFile);
  try {
    const insert = db.prepare('INSERT INTO audit (at, event, username, app_password_id, ip, protocol, detail) VALUES (?, ?, ?, ?, ?, ?, ?)');
    for (const r of rows) insert.run(r.at, r.event, r.username, r.appPasswordId ?? null, r.ip ?? null, r.protocol ?? null, r.detail ?? null);
  } finally {
    db.close();
  }
}

describe('mailgate audit', () => {
  it('lists the trail newest first, with the app password by id and name; USER, --since and --limit narrow it', async () => {
    // Catches: the wrong order, a USER filter that is case-sensitive or ignored, a --since that
    // keeps old rows (or drops recent ones), a --limit that keeps the oldest, a missing name.
    await cliOk('account', 'add', 'alice');
    await cliOk('account', 'add', 'bob');
    const laptop = JSON.parse(await cliOk('app-password', 'create', 'alice', '--name', 'laptop', '--json')) as { id: number };
    const now = Date.now();
    // Written in another order than they happened: the list goes by time.
    writeRows([
      { at: now + 2 * HOUR, event: 'login-ok', username: 'alice', appPasswordId: laptop.id, ip: '192.0.2.7', protocol: 'pop3' },
      { at: now - 3 * 24 * HOUR, event: 'login-failed', username: 'alice', ip: '192.0.2.9', protocol: 'imap', detail: 'wrong-password' },
      { at: now - HOUR, event: 'login-failed', username: 'bob', ip: '198.51.100.1', protocol: 'imap', detail: 'wrong-password' },
    ]);

    const all = await auditJson();
    expect(all.map((r) => Date.parse(r.at))).toEqual([...all.map((r) => Date.parse(r.at))].sort((a, b) => b - a));
    expect(all.map((r) => `${r.event}:${r.user}`)).toEqual(['login-ok:alice', 'created:alice', 'account-added:bob', 'account-added:alice', 'login-failed:bob', 'login-failed:alice']);
    expect(all[0]).toEqual({
      id: all[0]!.id,
      at: new Date(now + 2 * HOUR).toISOString(),
      event: 'login-ok',
      user: 'alice',
      appPasswordId: laptop.id,
      appPasswordName: 'laptop',
      ip: '192.0.2.7',
      protocol: 'pop3',
      detail: null,
    });

    expect((await auditJson('ALICE')).map((r) => r.event)).toEqual(['login-ok', 'created', 'account-added', 'login-failed']);
    // --since 1d: the recent rows, the CLI's own included; not the one from three days ago.
    expect((await auditJson('alice', '--since', '1d')).map((r) => r.event)).toEqual(['login-ok', 'created', 'account-added']);
    expect((await auditJson('--since', '90m')).map((r) => `${r.event}:${r.user}`)).toEqual(['login-ok:alice', 'created:alice', 'account-added:bob', 'account-added:alice', 'login-failed:bob']);
    expect((await auditJson('--since', '30m')).map((r) => r.event)).toEqual(['login-ok', 'created', 'account-added', 'account-added']);
    expect((await auditJson('--limit', '2')).map((r) => `${r.event}:${r.user}`)).toEqual(['login-ok:alice', 'created:alice']);

    // The table for people: a header, times in UTC to the second, the app password as "id name".
    const lines = (await cliOk('audit', 'alice')).trimEnd().split('\n');
    expect(lines[0]).toMatch(/^TIME \(UTC\) +EVENT +USER +APP PASSWORD +IP +PROTOCOL +DETAIL$/);
    const stamp = new Date(now + 2 * HOUR).toISOString().slice(0, 19).replace('T', ' ');
    expect(lines).toContainEqual(expect.stringMatching(new RegExp(`^${stamp}Z +login-ok +alice +${laptop.id} laptop +192\\.0\\.2\\.7 +pop3 +-$`)));
    expect(lines).toContainEqual(expect.stringMatching(/^\S+ \S+Z +login-failed +alice +- +192\.0\.2\.9 +imap +wrong-password$/));
    expect(lines).toHaveLength(5);
    // A full page says there may be more.
    expect((await cliOk('audit', '--limit', '2')).trimEnd().split('\n').pop()).toBe('(the newest 2; --limit or --since for more or fewer)');
  });

  it("keeps the trail of what is gone, and never names an app password by another one's reused id", async () => {
    // Catches: a join that shows the name of a later app password that took a removed one's id.
    await cliOk('account', 'add', 'alice');
    const first = JSON.parse(await cliOk('app-password', 'create', 'alice', '--name', 'old-phone', '--json')) as { id: number };
    writeRows([{ at: Date.now(), event: 'login-ok', username: 'alice', appPasswordId: first.id, ip: '192.0.2.1', protocol: 'imap' }]);
    expect((await auditJson('alice'))[0]).toMatchObject({ event: 'login-ok', appPasswordId: first.id, appPasswordName: 'old-phone' });
    await cliOk('account', 'remove', 'alice', '--yes');
    await cliOk('account', 'add', 'alice');
    const second = JSON.parse(await cliOk('app-password', 'create', 'alice', '--name', 'new-phone', '--json')) as { id: number };
    // SQLite gave the new app password the removed one's id: the case this guards against.
    expect(second.id).toBe(first.id);
    const rows = await auditJson('alice');
    expect(rows.map((r) => `${r.event}:${r.appPasswordName ?? '-'}`)).toEqual([
      'created:new-phone',
      'account-added:-',
      'account-removed:-',
      'login-ok:-',
      'created:-',
      'account-added:-',
    ]);
  });

  it('makes text a client chose safe for a terminal, says when there is nothing, and refuses bad options as usage errors', async () => {
    await cliOk('account', 'add', 'alice');
    writeRows([{ at: Date.now(), event: 'login-failed', username: 'evil\u001b[2Jname', ip: '192.0.2.1', protocol: 'imap', detail: 'unknown-account' }]);
    const out = await cliOk('audit', '--limit', '1');
    expect(out).not.toContain('\u001b');
    expect(out).toContain('evil?[2Jname');
    expect(await cliOk('audit', 'nobody')).toBe('no audit events for nobody\n');
    expect(await cliOk('audit', 'nobody', '--since', '1h')).toBe('no audit events for nobody in the last 1h\n');
    for (const args of [['--since', 'yesterday'], ['--since', '0d'], ['--limit', '0'], ['--limit', 'ten'], ['--limit', '-1']]) {
      const result = await cli('audit', ...args);
      expect(result.code, `${args.join(' ')}: ${result.stderr}`).toBe(2);
      expect(result.stderr).toMatch(/^mailgate: .*\n$/);
      expect(result.stdout).toBe('');
    }
  });
});
