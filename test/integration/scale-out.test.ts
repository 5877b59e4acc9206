/**
 * Scale-out for real (issue 14, docs/scaling.md): a real HAProxy with
 * `send-proxy-v2` in front of two `mailgate serve` processes (nodes A and
 * B) that share one real PostgreSQL, with a real Dovecot behind them. The
 * nodes' IMAP and POP3 listeners take PROXY headers from HAProxy only; the
 * HAProxy configuration is the shipped example's (test/support/haproxy.ts),
 * plus one frontend per node so a test can say which node a client reaches.
 *  - an app password created on node A's page logs in through node B;
 *  - one CLI revocation closes IDLE sessions on both nodes within 1 s of the
 *    CLI's exit, and so does an account removal (the nodes poll only every
 *    5 s: the NOTIFY is what reaches them);
 *  - failures through A and through B add up to one block that holds on
 *    both, counted against the address HAProxy's PROXY header carries;
 *  - a TOTP code used on A's page is refused on B's (and A's page session
 *    is valid on B);
 *  - PostgreSQL stopped: logins fail closed, an IDLE session goes on;
 *    started again: logins work on both nodes, neither restarted;
 *  - node A killed with SIGKILL: new connections through the balanced
 *    frontend reach B and log in, and the store is intact.
 * The tests run in order and share the cluster; node A's death comes last.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { generateSync } from 'otplib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../support/cli.js';
import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { startHaproxy, type HaproxyHandle } from '../support/haproxy.js';
import { ImapClient, imapQuote, taggedLine } from '../support/imap-client.js';
import { Pop3Client } from '../support/pop3-client.js';
import { databaseOf, startPostgres, type PostgresHandle } from '../support/postgres.js';
import { mailClientScript, pythonJson } from '../support/python.js';
import { dovecotServeToml, startServe, type LogLine, type ServeProcess } from '../support/serve.js';
import { waitUntil } from '../support/timing.js';
import { makeTempDir, removeTempDir } from '../support/tmp.js';
import { h1, PageClient, pageError, type PageTarget } from '../support/web.js';

const USERS = ['alice', 'bob', 'carol', 'dave', 'erin'] as const;
const upstreamPassword = (user: string) => `${user}-upstream-pw`;
/** The nodes' poll for other nodes' changes, at its longest: a close within 1 s is the NOTIFY's doing. */
const POLL_SECONDS = 5;
/** A block after this many failures from one address, counted by both nodes together. */
const IP_BLOCK_AFTER = 4;
const REVOKED_BYE = '* BYE [UNAVAILABLE] This app password was revoked or has expired; sign in again with a valid one.\r\n';
const UNAVAILABLE = 'NO [UNAVAILABLE] The mail service is temporarily unavailable; try again in a few minutes.';
const POP3_UNAVAILABLE = '-ERR [SYS/TEMP] The mail service is temporarily unavailable; try again in a few minutes.\r\n';
const CODE_FAILED = 'That code did not work. Check it and try again, or try again in a few minutes.';

type NodeName = 'a' | 'b';

interface Node {
  name: NodeName;
  serve: ServeProcess;
  page: PageTarget;
}

let pg: PostgresHandle;
let dc: DovecotHandle;
let haproxy: HaproxyHandle;
let dir = '';
let url = '';
let cliConfig = '';
const nodes = {} as Record<NodeName, Node>;

/** A node's configuration: the shared store, listeners behind HAProxy, its own page, metrics and control socket. */
function nodeToml(name: NodeName, keyFile: string): string {
  const nodeDir = path.join(dir, name);
  mkdirSync(nodeDir);
  const file = path.join(nodeDir, 'mailgate.toml');
  const extra = `
[[listen]]
protocol = "pop3"
host = "127.0.0.1"
port = 0
tls = "implicit"
proxy_protocol = true

[proxy]
trusted = ["127.0.0.1"]

[store]
backend = "postgres"
url = ${JSON.stringify(url)}
key_file = ${JSON.stringify(keyFile)}
pool_size = 4

[auth]
argon2_memory_kib = 1024
argon2_iterations = 1

[metrics]
listen = "127.0.0.1:0"

[web]
listen = "127.0.0.1:0"

[control]
socket = ${JSON.stringify(path.join(nodeDir, 'mailgate.sock'))}

[policy]
help_url = "https://mail.example.test/app-passwords"
expected_upstream_refusal_ms = 0

[timeouts]
revocation_check_seconds = ${POLL_SECONDS}

[limits]
failure_delay_base_ms = 50
failure_delay_max_ms = 400
ip_block_after = ${IP_BLOCK_AFTER}
block_seconds = 300
`;
  writeFileSync(file, dovecotServeToml(dc, extra, { proxyProtocol: true }));
  return file;
}

async function startNode(name: NodeName, keyFile: string): Promise<Node> {
  const serve = await startServe(nodeToml(name, keyFile), { MAILGATE_MASTER_PASSWORD: dc.master.password }, 2);
  const page = await serve.waitForLog('self-service page listening');
  await serve.waitForLog('metrics listening');
  return { name, serve, page: { url: `https://127.0.0.1:${page.port as number}/`, caCert: dc.caCert } };
}

beforeAll(async () => {
  [pg, dc, dir] = await Promise.all([
    startPostgres(),
    startDovecot({ users: USERS.map((name) => ({ name, password: upstreamPassword(name) })) }),
    makeTempDir('scale'),
  ]);
  url = await pg.createDatabase();
  const keyFile = path.join(dir, 'mailgate.key');
  cliConfig = path.join(dir, 'cli.toml');
  writeFileSync(cliConfig, `[store]\nbackend = "postgres"\nurl = ${JSON.stringify(url)}\nkey_file = ${JSON.stringify(keyFile)}\n\n[auth]\nargon2_memory_kib = 1024\nargon2_iterations = 1\n`);
  // The administrator makes the store (schema and key file) first; then every node gets the same key file.
  await cli('account', 'add', 'bob');
  await Promise.all(['carol', 'erin'].map((user) => cli('account', 'add', user)));
  [nodes.a, nodes.b] = await Promise.all([startNode('a', keyFile), startNode('b', keyFile)]);
  haproxy = await startHaproxy({
    services: ['imaps', 'pop3s'],
    nodes: Object.values(nodes).map(({ name, serve }) => ({
      name,
      host: '127.0.0.1',
      ports: { imaps: serve.port('imap'), pop3s: serve.port('pop3') },
      healthPort: serve.logs().find((l) => l.msg === 'metrics listening')!.port as number,
    })),
  });
}, 60_000);

afterAll(async () => {
  await haproxy?.stop();
  await Promise.all(Object.values(nodes).map((n) => n.serve.stop()));
  await dc?.stop();
  await pg?.stop();
  if (dir) await removeTempDir(dir);
});

/** Runs the CLI on the shared store; its stdout (it must succeed). */
async function cli(...args: string[]): Promise<string> {
  const result = await runCli(['--config', cliConfig, ...args]);
  expect(result.code, `mailgate ${args.join(' ')}: ${result.stderr}`).toBe(0);
  return result.stdout;
}

async function createAppPassword(user: string, name: string): Promise<{ id: number; password: string }> {
  return JSON.parse(await cli('app-password', 'create', user, '--name', name, '--json')) as { id: number; password: string };
}

/** An IMAPS connection through HAProxy: to `node` only, or balanced; greeting read. */
async function imapVia(node: NodeName | 'balanced', from?: string): Promise<ImapClient> {
  const port = haproxy.port('imaps', node === 'balanced' ? undefined : node);
  const { client, greeting } = await ImapClient.open({ port, tls: true, ca: dc.caCert, localAddress: from, timeoutMs: 10_000 });
  expect(greeting).toMatch(/^\* OK /);
  return client;
}

async function pop3Via(node: NodeName | 'balanced'): Promise<Pop3Client> {
  const port = haproxy.port('pop3s', node === 'balanced' ? undefined : node);
  const { client, greeting } = await Pop3Client.open({ port, tls: true, ca: dc.caCert, timeoutMs: 10_000 });
  expect(greeting).toMatch(/^\+OK /);
  return client;
}

/** LOGIN on a new connection through HAProxy; the client (still open) and the tagged answer. */
async function loginVia(node: NodeName | 'balanced', user: string, password: string, from?: string): Promise<{ c: ImapClient; line: string }> {
  const c = await imapVia(node, from);
  const line = taggedLine(await c.command('L1', `LOGIN ${imapQuote(user)} ${imapQuote(password)}`), 'L1');
  return { c, line };
}

/** A session through `node`, logged in and in IDLE. */
async function idleVia(node: NodeName | 'balanced', user: string, password: string): Promise<ImapClient> {
  const { c, line } = await loginVia(node, user, password);
  expect(line).toMatch(/^L1 OK /);
  c.send('I1 IDLE\r\n');
  await c.readUntil(/^\+ idling\r\n/m);
  return c;
}

function linesOf(node: NodeName, msg: string, fields: LogLine = {}): LogLine[] {
  return nodes[node].serve.logs().filter((l) => l.msg === msg && Object.entries(fields).every(([k, v]) => l[k] === v));
}

/** The node's lines like this once there are at least `n` (a node's log reaches us through a pipe, a moment after it acted). */
async function logged(node: NodeName, msg: string, fields: LogLine, n: number): Promise<LogLine[]> {
  await waitUntil(() => linesOf(node, msg, fields).length >= n, `${n} "${msg}" line(s) from node ${node}`, 5_000);
  return linesOf(node, msg, fields);
}

/**
 * Runs the CLI with IDLE sessions open and how long after its exit each
 * closed (0 when it closed before the CLI had exited), with what it read.
 */
async function closedAfterCli(sessions: ImapClient[], args: string[]): Promise<Array<{ ms: number; farewell: string }>> {
  const closedAt = sessions.map((c) => c.closed.then(() => Date.now()));
  await cli(...args);
  const exitedAt = Date.now();
  const farewells = await Promise.all(sessions.map((c) => c.waitClosed(POLL_SECONDS * 2_000)));
  const times = await Promise.all(closedAt);
  return times.map((at, i) => ({ ms: Math.max(0, at - exitedAt), farewell: farewells[i]! }));
}

/** A Python imaplib client through HAProxy: LOGIN, SELECT INBOX, LOGOUT. */
async function pythonImapLogin(port: number, user: string, password: string): Promise<Record<string, unknown>> {
  return pythonJson(
    mailClientScript(`
      m = IMAPS('127.0.0.1', INPUT['port'], ssl_context=ctx(), timeout=10)
      typ, _ = m.login(INPUT['user'], INPUT['password'])
      sel, data = m.select('INBOX')
      m.logout()
      emit({'login': typ, 'select': sel, 'exists': data[0].decode()})
    `),
    { ca: dc.caCert, port, user, password },
  );
}

describe('two mailgate nodes behind HAProxy, sharing one PostgreSQL', () => {
  it('an app password created on node A\'s page logs in through node B (imaplib); the use is in the shared store', async () => {
    // Catches: a node that keeps app passwords (or their last use) to itself.
    const onA = new PageClient(nodes.a.page, '127.0.0.4');
    expect(h1(await onA.signIn('alice', upstreamPassword('alice')))).toBe('Security');
    expect(await logged('a', 'account added at its first page sign-in', { user: 'alice' }, 1)).toHaveLength(1);
    await onA.get('/app-passwords/new');
    const created = await onA.post('/app-passwords', { name: 'phone', imap: 'on', pop3: 'on', expires: 'never' });
    const password = /<code id="app-password"[^>]*>([^<]+)<\/code>/.exec(created.body)?.[1]?.replace(/\s+/g, '');
    expect(password, created.body).toMatch(/^[a-z]{16}$/);

    const result = await pythonImapLogin(haproxy.port('imaps', 'b'), 'alice', password!);
    expect(result).toMatchObject({ login: 'OK', select: 'OK' });
    expect(await logged('b', 'login ok', { user: 'alice', appPasswordName: 'phone' }, 1)).toHaveLength(1);
    expect(linesOf('a', 'login ok', { user: 'alice' })).toHaveLength(0);
    // The shared store recorded the use made on B: the CLI reads it back.
    const listed = JSON.parse(await cli('app-password', 'list', 'alice', '--json')) as Array<{ name: string; lastUsed: { protocol: string } | null }>;
    expect(listed).toEqual([expect.objectContaining({ name: 'phone', lastUsed: expect.objectContaining({ protocol: 'imap' }) })]);
  });

  it('a CLI revocation, and an account removal, close IDLE sessions on node B and on node A within 1 s of the CLI\'s exit', async () => {
    // Catches: a node that hears another's (or the CLI's) change only at its next poll (every 5 s here), or never.
    // Four closes each within 1 s: polling alone would manage that about once in a few hundred runs.
    const { id, password } = await createAppPassword('bob', 'laptop');
    let sessions = [await idleVia('b', 'bob', password), await idleVia('a', 'bob', password)];
    const revoked = await closedAfterCli(sessions, ['app-password', 'revoke', 'bob', String(id)]);
    for (const { ms, farewell } of revoked) {
      expect(farewell).toContain(REVOKED_BYE);
      expect(ms).toBeLessThan(1000);
    }

    const second = await createAppPassword('bob', 'tablet');
    sessions = [await idleVia('b', 'bob', second.password), await idleVia('a', 'bob', second.password)];
    const removed = await closedAfterCli(sessions, ['account', 'remove', 'bob', '--yes']);
    for (const { ms } of removed) expect(ms).toBeLessThan(1000);
    for (const node of ['a', 'b'] as const) {
      const closes = await logged(node, 'closing a session whose credentials are no longer valid', { user: 'bob' }, 2);
      expect(closes.map((l) => l.reason)).toEqual(['app-password-revoked', 'account-removed']);
    }
  });

  it('failures through A and through B add up to one block of the client\'s address that holds on both', async () => {
    // Catches: per-node counters (2 + 2 failures never reach a block of 4), a block one node does not
    // see, and nodes counting HAProxy's address (127.0.0.1) instead of the client's from the PROXY header.
    const attacker = '127.0.0.3';
    const { password } = await createAppPassword('carol', 'mail');
    let guess = 0;
    for (const node of ['a', 'b'] as const) {
      const c = await imapVia(node, attacker);
      for (let i = 0; i < IP_BLOCK_AFTER / 2; i++) {
        const answer = await c.command(`g${++guess}`, `LOGIN ghost wrong-guess-${guess}`);
        expect(taggedLine(answer, `g${guess}`)).toBe(`g${guess} NO [AUTHENTICATIONFAILED] Authentication failed.`);
      }
      c.destroy();
    }
    // Neither node saw four failures itself; the fourth, on B, started the block.
    for (const node of ['a', 'b'] as const) {
      const failed = await logged(node, 'login failed', { user: 'ghost' }, IP_BLOCK_AFTER / 2);
      expect(failed).toHaveLength(IP_BLOCK_AFTER / 2);
      expect(failed.every((l) => l.clientIp === attacker)).toBe(true);
    }
    expect(await logged('b', 'temporary block started', { kind: 'ip', key: attacker }, 1)).toHaveLength(1);
    expect(linesOf('a', 'temporary block started')).toHaveLength(0);

    // Now even carol's right app password, from that address, is turned away on both nodes unchecked.
    for (const node of ['a', 'b'] as const) {
      const { c, line } = await loginVia(node, 'carol', password, attacker);
      expect(line).toBe(`L1 ${UNAVAILABLE}`);
      c.destroy();
      expect(await logged(node, 'login blocked', { user: 'carol', blockedBy: 'ip', clientIp: attacker }, 1)).toHaveLength(1);
    }
    // From any other address she gets in.
    const { c, line } = await loginVia('a', 'carol', password);
    expect(line).toMatch(/^L1 OK /);
    c.destroy();
  });

  it('a TOTP code used on node A\'s page is refused on node B\'s; A\'s page session is valid on B', async () => {
    // Catches: replay protection kept per node (the same code accepted twice), and page sessions one node cannot read.
    await cli('account', 'add', 'dave');
    const { secret } = JSON.parse(await cli('totp', 'enroll', 'dave', '--json')) as { secret: string };
    // The confirmation spends the previous step's code: it must run within the step it was computed in.
    await waitUntil(() => Date.now() % 30_000 < 25_000, 'a TOTP step with 5 s to go', 6_000);
    const step = Math.floor(Date.now() / 30_000);
    const code = (s: number) => generateSync({ secret, epoch: s * 30 });
    await cli('totp', 'confirm', 'dave', code(step - 1));

    const onA = new PageClient(nodes.a.page, '127.0.0.5');
    expect(h1(await onA.signIn('dave', upstreamPassword('dave'), code(step)))).toBe('Security');
    const onB = new PageClient(nodes.b.page, '127.0.0.5');
    await onB.signIn('dave', upstreamPassword('dave'));
    const replayed = await onB.post('/verify', { code: code(step) });
    expect(pageError(replayed)).toBe(CODE_FAILED);
    expect(await logged('b', 'login failed', { user: 'dave', method: 'totp' }, 1)).toHaveLength(1);
    // B takes the next code: the refusal was the replay, not B.
    expect(h1(await onB.followed(await onB.post('/verify', { code: code(step + 1) })))).toBe('Security');

    // The session signed in on A is one B knows.
    const visitor = new PageClient(nodes.b.page, '127.0.0.5');
    visitor.cookie = onA.cookie;
    expect(h1(await visitor.get('/'))).toBe('Security');
  });

  it('PostgreSQL stopped: logins fail closed on both nodes, an IDLE session goes on; started again: logins work, no restart', async () => {
    // Catches: a login let in without the store, a relaying session cut by the outage, and a node
    // that needs a restart to use the database again.
    const { password } = await createAppPassword('erin', 'phone');
    const relaying = await idleVia('a', 'erin', password);
    const pids = Object.values(nodes).map((n) => n.serve.child.pid);
    await pg.stopServer();
    try {
      for (const node of ['a', 'b'] as const) {
        const { c, line } = await loginVia(node, 'erin', password);
        expect(line).toBe(`L1 ${UNAVAILABLE}`);
        c.destroy();
        const p = await pop3Via(node);
        expect(await p.command('USER erin')).toBe('+OK Send PASS\r\n');
        expect(await p.command(`PASS ${password}`)).toBe(POP3_UNAVAILABLE);
        p.destroy();
      }
      // The IDLE session relays on: out of IDLE and a command, with the database down.
      relaying.send('DONE\r\n');
      expect(await relaying.readUntilTagged('I1')).toMatch(/^I1 OK /m);
      expect(await relaying.command('n1', 'NOOP')).toMatch(/^n1 OK /m);
    } finally {
      await pg.startServer();
    }
    for (const node of ['a', 'b'] as const) {
      await waitUntil(
        async () => {
          const { c, line } = await loginVia(node, 'erin', password);
          c.destroy();
          return line.startsWith('L1 OK ');
        },
        `a login through node ${node} to work again`,
        15_000,
      );
    }
    const p = await pop3Via('b');
    await p.command('USER erin');
    expect(await p.command(`PASS ${password}`)).toMatch(/^\+OK /);
    await p.quit();
    expect(await relaying.command('n2', 'NOOP')).toMatch(/^n2 OK /m);
    relaying.destroy();
    expect(Object.values(nodes).map((n) => [n.serve.child.pid, n.serve.child.exitCode])).toEqual(pids.map((pid) => [pid, null]));
  });

  it('node A killed with SIGKILL: new connections through the balanced frontend reach B and log in; the store is intact', async () => {
    // Catches: a balancer that keeps sending clients to a dead node, and a store left inconsistent by a node's death.
    const { password } = await createAppPassword('erin', 'tablet');
    const okOn = (node: NodeName) => linesOf(node, 'login ok', { user: 'erin' }).length;
    const before = { a: okOn('a'), b: okOn('b') };
    // Least connections: two sessions through the balanced frontend land one on each node. With B's
    // still open after A's death, a new connection is A's to take: until its health check fails,
    // HAProxy tries A, is refused, and sends the client to B.
    const held = [await idleVia('balanced', 'erin', password), await idleVia('balanced', 'erin', password)];
    await logged('a', 'login ok', { user: 'erin' }, before.a + 1);
    await logged('b', 'login ok', { user: 'erin' }, before.b + 1);
    expect([okOn('a') - before.a, okOn('b') - before.b]).toEqual([1, 1]);
    const [{ max: auditUpTo }] = (await pg.admin<{ max: number }>(databaseOf(url), 'SELECT max(id) AS max FROM audit')) as [{ max: number }];
    const snapshot = await storeSnapshot(auditUpTo);

    nodes.a.serve.child.kill('SIGKILL');
    await nodes.a.serve.exited;
    // A's session ends with A (HAProxy closes the client's side); B's goes on.
    const onB = held[1 - (await Promise.race(held.map((c, i) => c.closed.then(() => i))))]!;
    for (let i = 0; i < 4; i++) {
      const { c, line } = await loginVia('balanced', 'erin', password);
      expect(line).toMatch(/^L1 OK /);
      await c.command('z', 'LOGOUT');
      c.destroy();
    }
    const p = await pop3Via('balanced');
    await p.command('USER erin');
    expect(await p.command(`PASS ${password}`)).toMatch(/^\+OK /);
    await p.quit();
    await logged('b', 'login ok', { user: 'erin' }, before.b + 1 + 5);
    expect(okOn('b') - before.b).toBe(1 + 5);
    onB.send('DONE\r\n');
    expect(await onB.readUntilTagged('I1')).toMatch(/^I1 OK /m);
    onB.destroy();
    // HAProxy's health check took A out.
    await waitUntil(async () => (await haproxy.serverStates()).get('imaps/a') === 'DOWN', 'HAProxy to mark node A down', 5_000);
    expect((await haproxy.serverStates()).get('imaps/b')).toBe('UP');

    // The store: its own check passes, and every row written before the kill is there as it was.
    expect(JSON.parse(await cli('store', 'check', '--json'))).toMatchObject({ ok: true });
    expect(await storeSnapshot(auditUpTo)).toEqual(snapshot);
    const accounts = JSON.parse(await cli('account', 'list', '--json')) as Array<{ username: string }>;
    expect(accounts.map((a) => a.username).sort()).toEqual(['alice', 'carol', 'dave', 'erin']);
  });
});

/**
 * What a node's death must not change, read straight from PostgreSQL: every
 * account (its TOTP secret and last spent step included), every app password
 * (all but its last use, which logins move), the recovery codes, the blocks,
 * and the audit trail up to row `auditUpTo` (later logins add rows, none may go).
 */
async function storeSnapshot(auditUpTo: number): Promise<unknown> {
  const db = databaseOf(url);
  return {
    accounts: await pg.admin(db, 'SELECT id, username, created_at, totp_state, totp_secret, totp_last_step FROM accounts ORDER BY id'),
    appPasswords: await pg.admin(db, 'SELECT id, account_id, name, selector, hash, scopes, created_at, expires_at, revoked_at FROM app_passwords ORDER BY id'),
    recoveryCodes: await pg.admin(db, 'SELECT id, account_id, code_hash, used_at FROM recovery_codes ORDER BY id'),
    blocks: await pg.admin(db, 'SELECT kind, key, blocked_until FROM penalties WHERE blocked_until IS NOT NULL ORDER BY kind, key'),
    audit: await pg.admin(db, 'SELECT * FROM audit WHERE id <= $1 ORDER BY id', [auditUpTo]),
  };
}
