/**
 * A graceful SIGTERM of the real `mailgate serve` process (bin/mailgate.js,
 * built from src/) with a relayed IMAP session open, in front of a real
 * Dovecot: new connections are refused at once, the open session keeps
 * working until timeouts.shutdown_grace_seconds has passed, then it is told
 * `* BYE [UNAVAILABLE] ...` and closed, the process exits 0, and what the
 * login wrote (audit trail, last use) is in the database afterwards.
 */
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SqliteRepositories } from '../../src/store/sqlite/repositories.js';
import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { ImapClient } from '../support/imap-client.js';
import { connectRefused } from '../support/raw-client.js';
import { dovecotServeToml, startServe, type ServeProcess } from '../support/serve.js';
import { FAST_ARGON2 } from '../support/store.js';
import { waitUntil } from '../support/timing.js';
import { makeTempDir, removeTempDir } from '../support/tmp.js';
import { hasLevel } from '../support/log-levels.js';

const GRACE_SECONDS = 2;

let dc: DovecotHandle;
let dir: string;
let child: ServeProcess | null = null;

beforeAll(async () => {
  dc = await startDovecot();
  dir = await makeTempDir('sigterm');
});

afterAll(async () => {
  await child?.stop('SIGKILL');
  await dc?.stop();
  await removeTempDir(dir);
});

describe('mailgate serve and SIGTERM', () => {
  it('refuses new connections at once, lets the open session finish its grace period, says BYE, exits 0 with everything written', async () => {
    // Catches: a shutdown that waits for clients forever (or drops them at once), a listener that
    // keeps accepting, a non-zero exit, and login records lost in an unflushed database.
    const storeOptions = { path: path.join(dir, 'mailgate.db'), keyFile: path.join(dir, 'mailgate.key'), argon2: FAST_ARGON2, maxAppPasswords: 5 };
    const setup = SqliteRepositories.open(storeOptions);
    setup.accounts.add('alice');
    const app = await setup.appPasswords.create('alice', { name: 'laptop' });
    setup.close();

    const configFile = path.join(dir, 'mailgate.toml');
    writeFileSync(
      configFile,
      `[store]
path = ${JSON.stringify(storeOptions.path)}
key_file = ${JSON.stringify(storeOptions.keyFile)}

[auth]
argon2_memory_kib = 1024
argon2_iterations = 1

[log]
level = "info"

[timeouts]
shutdown_grace_seconds = ${GRACE_SECONDS}
${dovecotServeToml(dc)}`,
    );
    const gateway = await startServe(configFile, { MAILGATE_MASTER_PASSWORD: dc.master.password });
    child = gateway;
    const port = gateway.port('imap');
    const logLines = () => gateway.logs();
    const stderr = () => gateway.stderr();

    const c = await ImapClient.connect({ port, tls: true, ca: dc.caCert, timeoutMs: 10_000 });
    await c.readLine();
    expect(await c.command('L', `LOGIN alice "${app.password}"`)).toMatch(/^L OK /m);
    expect(await c.command('s', 'SELECT INBOX')).toMatch(/^s OK /m);

    gateway.child.kill('SIGTERM');
    const termAt = Date.now();
    // New connections: refused at once.
    await waitUntil(() => connectRefused(port, 500), 'new connections to be refused', 1_000);
    expect(Date.now() - termAt).toBeLessThan(1_000);
    // The open session still works during the grace period, all the way to Dovecot.
    expect(await c.command('n', 'NOOP')).toMatch(/^n OK /m);
    expect(Date.now() - termAt).toBeLessThan(GRACE_SECONDS * 1000);
    // Then the farewell and the close.
    const rest = await c.waitClosed(GRACE_SECONDS * 1000 + 5_000);
    const closedAfter = Date.now() - termAt;
    expect(rest).toBe('* BYE [UNAVAILABLE] The server is shutting down; reconnect in a moment.\r\n');
    expect(closedAfter).toBeGreaterThanOrEqual(GRACE_SECONDS * 1000 - 100);
    expect(closedAfter).toBeLessThan(GRACE_SECONDS * 1000 + 3_000);

    const code = await Promise.race([gateway.exited, new Promise<'hung'>((resolve) => setTimeout(() => resolve('hung'), 5_000))]);
    expect(code, `stderr: ${stderr()}`).toBe(0);
    expect(logLines().map((l) => l.msg)).toEqual(expect.arrayContaining(['shutting down', 'stopped accepting connections', 'closing the remaining sessions', 'stopped']));
    expect(logLines().filter((l) => hasLevel(l, 'fatal') || /uncaught|unhandled/.test(String(l.msg)))).toEqual([]);

    const after = SqliteRepositories.open(storeOptions);
    try {
      const [info] = after.appPasswords.list('alice');
      expect(info!.lastUsed).toMatchObject({ ip: '127.0.0.1', protocol: 'imap' });
      expect(after.audit.list({ username: 'alice' }).map((r) => r.event)).toContain('login-ok');
    } finally {
      after.close();
    }
  });
});
