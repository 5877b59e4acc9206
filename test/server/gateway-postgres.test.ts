/**
 * The gateway on the PostgreSQL store: two gateway nodes (in this process)
 * sharing one real PostgreSQL, in front of a real Dovecot. Nothing outside
 * the store knows the engine: the login service, the sessions and the
 * revocation watcher are the ones SQLite runs with.
 *  - an app password created through node A logs in through node B;
 *  - a revocation made by another node (a third Store) or by the CLI closes
 *    an IDLE session within 1 s, on the node that holds it, although the
 *    nodes poll only every 5 s: the NOTIFY is what reaches them;
 *  - a revocation whose notification never arrives closes the session by
 *    polling, within the 5-second promise;
 *  - PostgreSQL stopped: logins fail closed (NO [UNAVAILABLE], -ERR
 *    [SYS/TEMP]), a session already relaying goes on; started again: logins
 *    work, with no restart.
 * The multi-node tests behind HAProxy are elsewhere.
 */
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/log/logger.js';
import { PostgresStore } from '../../src/store/postgres/postgres-store.js';
import type { Store } from '../../src/store/store.js';
import { imapsLogin } from '../support/attack.js';
import { runCli } from '../support/cli.js';
import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { logLines, startGateway, type GatewayHandle } from '../support/gateway.js';
import { taggedLine, type ImapClient } from '../support/imap-client.js';
import { pop3s } from '../support/pop3-client.js';
import { databaseOf, type PostgresHandle } from '../support/postgres.js';
import { FAST_ARGON2, postgresServer, useEngine } from '../support/store.js';
import { sleep, waitUntil } from '../support/timing.js';
import { makeTempDir, removeTempDir } from '../support/tmp.js';

const REVOKED_BYE = '* BYE [UNAVAILABLE] This app password was revoked or has expired; sign in again with a valid one.\r\n';
const UNAVAILABLE = 'L1 NO [UNAVAILABLE] The mail service is temporarily unavailable; try again in a few minutes.';
/** The longest poll interval: a close within 1 s is the notification's doing, not a poll's. */
const POLL_SECONDS = 5;

useEngine('postgres');

let pg: PostgresHandle;
let dc: DovecotHandle;
let nodeA: GatewayHandle;
let nodeB: GatewayHandle;
/** A third node's store, as another gateway would hold it (it does not listen). */
let other: Store;
let dir: string;
let url: string;
let keyFile: string;
let cliConfig: string;

beforeAll(async () => {
  pg = await postgresServer();
  dc = await startDovecot({ users: ['alice', 'bob', 'carol'].map((name) => ({ name, password: `${name}-upstream-pw` })) });
  dir = await makeTempDir('gwpg');
  url = await pg.createDatabase();
  keyFile = path.join(dir, 'mailgate.key');
  const config = { store: { backend: 'postgres', url, key_file: keyFile }, timeouts: { revocation_check_seconds: POLL_SECONDS } };
  // Both at once, on an empty database: one migrates, the other waits for it.
  [nodeA, nodeB] = await Promise.all([startGateway(dc, { config }), startGateway(dc, { config })]);
  other = await PostgresStore.open({ url, poolSize: 2, keyFile, argon2: FAST_ARGON2, maxAppPasswords: 25 }, { log: silentLogger() });
  for (const user of ['alice', 'bob', 'carol']) await nodeA.gateway.store.accounts.add(user);
  cliConfig = path.join(dir, 'cli.toml');
  writeFileSync(cliConfig, `[store]\nbackend = "postgres"\nurl = ${JSON.stringify(url)}\nkey_file = ${JSON.stringify(keyFile)}\n\n[auth]\nargon2_memory_kib = 1024\nargon2_iterations = 1\n`);
});

afterAll(async () => {
  await other?.close();
  await nodeA?.stop();
  await nodeB?.stop();
  await dc?.stop();
  if (dir) await removeTempDir(dir);
});

async function login(node: GatewayHandle, user: string, password: string): Promise<ImapClient> {
  const { c, answer } = await imapsLogin(node, user, password);
  expect(taggedLine(answer, 'L1')).toMatch(/^L1 OK /);
  return c;
}

async function idle(c: ImapClient): Promise<void> {
  c.send('I1 IDLE\r\n');
  await c.readUntil(/^\+ idling\r\n/m);
}

describe('two gateway nodes on one PostgreSQL store', () => {
  it('an app password created through node A logs in through node B; the login is recorded in the shared store', async () => {
    const { info, password } = await nodeA.gateway.store.appPasswords.create('alice', { name: 'phone' });
    const c = await login(nodeB, 'alice', password);
    c.destroy();
    const used = (await nodeA.gateway.store.appPasswords.list('alice')).find((p) => p.id === info.id)!;
    expect(used.lastUsed).toMatchObject({ protocol: 'imap', ip: '127.0.0.1' });
  });

  it('a revocation by another node, or by the CLI, closes an IDLE session within 1 s on the node that holds it', async () => {
    // Catches: nodes that only learn of another node's revocation at their next poll (5 s here), or never.
    const first = await nodeA.gateway.store.appPasswords.create('bob', { name: 'laptop' });
    const second = await nodeA.gateway.store.appPasswords.create('bob', { name: 'tablet' });
    const onB = await login(nodeB, 'bob', first.password);
    const onA = await login(nodeA, 'bob', second.password);
    await idle(onB);
    await idle(onA);
    // Past the watcher's extra looks at fresh logins: from here on, only a notification closes them fast.
    await sleep(3 * POLL_SECONDS * 1000 + 1000);

    let since = Date.now();
    await other.appPasswords.revoke('bob', first.info.id);
    expect(await onB.waitClosed(5_000)).toContain(REVOKED_BYE);
    expect(Date.now() - since).toBeLessThan(1000);

    const cli = await runCli(['--config', cliConfig, 'app-password', 'revoke', 'bob', String(second.info.id)]);
    expect(cli.stderr).toBe('');
    since = Date.now();
    expect(await onA.waitClosed(5_000)).toContain(REVOKED_BYE);
    expect(Date.now() - since).toBeLessThan(1000);
    expect(logLines(nodeA, 'closing a session whose credentials are no longer valid', { user: 'bob' })).toHaveLength(1);
    expect(logLines(nodeB, 'closing a session whose credentials are no longer valid', { user: 'bob' })).toHaveLength(1);
  }, 60_000);

  it('a revocation whose notification never arrives (a node whose LISTEN was down) still closes the session, by polling, within 5 s', async () => {
    // Catches: a watcher that relies on NOTIFY alone, or a change token that does not move for a change
    // committed by another node. The revocation is committed the way a node commits one, minus the NOTIFY.
    const { info, password } = await nodeA.gateway.store.appPasswords.create('carol', { name: 'old phone' });
    const onB = await login(nodeB, 'carol', password);
    await idle(onB);
    await sleep(3 * POLL_SECONDS * 1000 + 1000);
    const since = Date.now();
    await pg.admin(
      databaseOf(url),
      `BEGIN;
       UPDATE app_passwords SET revoked_at = ${Date.now()} WHERE id = ${info.id};
       INSERT INTO store_changes (node, n, at) VALUES ('a node whose NOTIFY was lost', 1, ${Date.now()});
       COMMIT;`,
    );
    expect(await onB.waitClosed(POLL_SECONDS * 1000 + 2_000)).toContain(REVOKED_BYE);
    expect(Date.now() - since).toBeLessThanOrEqual(POLL_SECONDS * 1000 + 500);
  }, 60_000);

  it('PostgreSQL stopped: logins fail closed, a relaying session goes on; started again: logins work, no restart', async () => {
    const { password } = await other.appPasswords.create('carol', { name: 'phone' });
    const relaying = await login(nodeA, 'carol', password);
    try {
      await pg.stopServer();
      await waitUntil(async () => nodeB.gateway.store.writable().then(() => false, () => true), 'node B to notice', 3000);
      const refused = await imapsLogin(nodeB, 'carol', password);
      expect(taggedLine(refused.answer, 'L1')).toBe(UNAVAILABLE);
      refused.c.destroy();
      const p = await pop3s(nodeA);
      expect(await p.command('USER carol')).toBe('+OK Send PASS\r\n');
      expect(await p.command(`PASS ${password}`)).toBe('-ERR [SYS/TEMP] The mail service is temporarily unavailable; try again in a few minutes.\r\n');
      p.destroy();
      // The session that was already relaying is not cut.
      expect(await relaying.command('n1', 'NOOP')).toMatch(/^n1 OK /m);
    } finally {
      await pg.startServer();
    }
    await waitUntil(
      async () => {
        const again = await imapsLogin(nodeB, 'carol', password);
        again.c.destroy();
        return taggedLine(again.answer, 'L1').startsWith('L1 OK ');
      },
      'a login through node B to work again',
      10_000,
    );
    expect(await relaying.command('n2', 'NOOP')).toMatch(/^n2 OK /m);
    relaying.destroy();
  }, 60_000);
});
