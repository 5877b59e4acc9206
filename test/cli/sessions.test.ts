/**
 * `mailgate who` and `mailgate kick` (issue 13), against real sessions: a
 * real `mailgate serve` in front of a real Dovecot, alice in two IMAP
 * sessions (one in IDLE) and one POP3 session, bob in one IMAP session with
 * his account password. The CLI talks to the gateway over its control
 * socket, which only the gateway's user can open.
 */
import { chmodSync, existsSync, lstatSync, statSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli, unprivilegedUser, writeCliConfig } from '../support/cli.js';
import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { ImapClient, imapQuote, taggedLine } from '../support/imap-client.js';
import { Pop3Client } from '../support/pop3-client.js';
import { dovecotServeToml, startServe, type ServeProcess } from '../support/serve.js';
import { waitUntil } from '../support/timing.js';
import { makeTempDir, removeTempDir } from '../support/tmp.js';

interface LiveSession {
  id: string;
  user: string;
  protocol: string;
  clientIp: string;
  clientPort: number;
  since: string;
  mode: string;
  appPasswordId: number | null;
  appPasswordName: string | null;
}

let dc: DovecotHandle;
let dir = '';
let config = '';
let socketPath = '';
let gateway: ServeProcess | null = null;
const passwords: Record<string, string> = {};

const env = () => ({ MAILGATE_MASTER_PASSWORD: dc.master.password });
const cli = (...args: string[]) => runCli(['--config', config, ...args]);

async function cliOk(...args: string[]): Promise<string> {
  const result = await cli(...args);
  expect(result.code, `mailgate ${args.join(' ')}: ${result.stderr}`).toBe(0);
  return result.stdout;
}

async function serve(): Promise<ServeProcess> {
  gateway = await startServe(config, env(), 2);
  return gateway;
}

beforeAll(async () => {
  dc = await startDovecot();
  dir = await makeTempDir('who');
  config = writeCliConfig(
    dir,
    dovecotServeToml(dc, '[[listen]]\nprotocol = "pop3"\nhost = "127.0.0.1"\nport = 0\ntls = "implicit"\n\n[timeouts]\nshutdown_grace_seconds = 1\n'),
  );
  socketPath = path.join(dir, 'data', 'mailgate.sock');
  await cliOk('account', 'add', 'alice');
  // bob has no 2-step verification: he logs in with his account password, passed through.
  await cliOk('account', 'add', 'bob');
  for (const name of ['laptop', 'phone']) {
    passwords[name] = (JSON.parse(await cliOk('app-password', 'create', 'alice', '--name', name, '--json')) as { password: string }).password;
  }
});

afterAll(async () => {
  await gateway?.stop('SIGKILL');
  await dc?.stop();
  if (dir) await removeTempDir(dir);
});

async function imapLogin(user: string, password: string): Promise<ImapClient> {
  const { client } = await ImapClient.open({ port: gateway!.port('imap'), tls: true, ca: dc.caCert, timeoutMs: 10_000 });
  expect(taggedLine(await client.command('L', `LOGIN ${user} ${imapQuote(password)}`), 'L')).toMatch(/^L OK /);
  return client;
}

async function pop3Login(user: string, password: string): Promise<Pop3Client> {
  const { client } = await Pop3Client.open({ port: gateway!.port('pop3'), tls: true, ca: dc.caCert, timeoutMs: 10_000 });
  expect(await client.command(`USER ${user}`)).toMatch(/^\+OK/);
  expect(await client.command(`PASS ${password}`)).toMatch(/^\+OK/);
  return client;
}

describe('mailgate who and kick', () => {
  it('who lists the live sessions with their fields; kick closes all of alice\'s within a second, politely, and leaves bob\'s', async () => {
    // Catches: a who that misses a protocol or a field, a kick that closes another user's sessions
    // (or only some of alice's, or not until the idle timeout), and an IMAP client left without a BYE.
    await serve();
    const startedAt = Date.now();
    const idling = await imapLogin('alice', passwords.laptop!);
    expect(taggedLine(await idling.command('S', 'SELECT INBOX'), 'S')).toMatch(/^S OK/);
    idling.send('I IDLE\r\n');
    expect(await idling.readLine()).toMatch(/^\+ /);
    const second = await imapLogin('ALICE', passwords.phone!);
    const pop = await pop3Login('alice', passwords.laptop!);
    const bob = await imapLogin('bob', dc.users.find((u) => u.name === 'bob')!.password);

    const listed = JSON.parse(await cliOk('who', '--json')) as { sessions: LiveSession[]; prelogin: number };
    expect(listed.prelogin).toBe(0);
    const byPort = new Map(listed.sessions.map((s) => [s.clientPort, s]));
    expect(listed.sessions).toHaveLength(4);
    const expectSession = (client: { localPort: number }, fields: Partial<LiveSession>) => {
      const session = byPort.get(client.localPort);
      expect(session, `a session from port ${client.localPort}`).toMatchObject({ clientIp: '127.0.0.1', ...fields });
      expect(Date.parse(session!.since)).toBeGreaterThanOrEqual(startedAt - 1000);
      expect(Date.parse(session!.since)).toBeLessThanOrEqual(Date.now());
    };
    expectSession(idling, { user: 'alice', protocol: 'imap', mode: 'app-password', appPasswordName: 'laptop' });
    expectSession(second, { user: 'alice', protocol: 'imap', mode: 'app-password', appPasswordName: 'phone' });
    expectSession(pop, { user: 'alice', protocol: 'pop3', mode: 'app-password', appPasswordName: 'laptop' });
    expectSession(bob, { user: 'bob', protocol: 'imap', mode: 'upstream-password', appPasswordId: null, appPasswordName: null });

    // The table for people: one row per session, and a summary.
    const table = (await cliOk('who')).split('\n');
    expect(table[0]).toMatch(/^USER +PROTOCOL +CLIENT +SINCE \(UTC\) +APP PASSWORD +MODE$/);
    expect(table).toContainEqual(expect.stringMatching(new RegExp(`^alice +pop3 +127\\.0\\.0\\.1:${pop.localPort} +\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\dZ +\\d+ laptop +app-password$`)));
    expect(table).toContainEqual(expect.stringMatching(new RegExp(`^bob +imap +127\\.0\\.0\\.1:${bob.localPort} +\\S+ \\S+ +- +upstream-password$`)));
    expect(table).toContain('4 sessions of 2 users');
    // who USER: that account's only.
    expect((JSON.parse(await cliOk('who', 'Bob', '--json')) as { sessions: LiveSession[] }).sessions.map((s) => s.clientPort)).toEqual([bob.localPort]);

    const kick = JSON.parse(await cliOk('kick', 'Alice', '--json')) as { user: string; sessions: LiveSession[] };
    const kickedAt = Date.now();
    expect(kick.user).toBe('alice');
    expect(kick.sessions.map((s) => s.clientPort).sort()).toEqual([idling.localPort, second.localPort, pop.localPort].sort());
    // All three closed within a second; the IMAP ones told why.
    const closings = [idling, second, pop].map((c) => c.waitClosed(1000));
    const [idleRest, secondRest] = await Promise.all(closings);
    expect(Date.now() - kickedAt).toBeLessThan(1000);
    expect(idleRest).toContain('* BYE [UNAVAILABLE] An administrator closed this session.\r\n');
    expect(secondRest).toBe('* BYE [UNAVAILABLE] An administrator closed this session.\r\n');

    // bob is untouched, and still works.
    expect(taggedLine(await bob.command('N', 'NOOP'), 'N')).toMatch(/^N OK/);
    expect((JSON.parse(await cliOk('who', '--json')) as { sessions: LiveSession[] }).sessions.map((s) => s.user)).toEqual(['bob']);

    // The log: one line for the kick, and each session's outcome.
    await gateway!.waitForLog('kicked the sessions of an account', { user: 'alice', sessions: 3 });
    await waitUntil(() => gateway!.logs().filter((l) => l.msg === 'session closed' && l.outcome === 'kicked').length === 3, 'three kicked sessions in the log');
    expect(gateway!.logs().filter((l) => l.msg === 'session closed' && l.outcome === 'kicked').map((l) => l.user)).toEqual(['alice', 'alice', 'alice']);
    // A user without sessions: said so, nothing closed.
    expect(await cliOk('kick', 'carol')).toBe('carol has no open sessions\n');
    bob.destroy();
  }, 60_000);

  it('the socket is 0600 and another user cannot use it; without a gateway, who says so and exits 1', async () => {
    // Catches: a control socket any local user could open to list or kick sessions, and a who that
    // hangs or lies when no gateway runs (or a socket left behind by a gateway that stopped).
    if (!gateway || gateway.child.exitCode !== null) await serve();
    const st = lstatSync(socketPath);
    expect(st.isSocket()).toBe(true);
    expect(st.mode & 0o777).toBe(0o600);
    const other = unprivilegedUser();
    if (other) {
      // Everything on the way is open to the other user, so only the socket's own mode keeps them out.
      for (const folder of [dir, path.join(dir, 'data')]) chmodSync(folder, 0o755);
      chmodSync(config, 0o644);
      const refused = await runCli(['--config', config, 'who'], { user: other });
      expect(refused.code, refused.stdout).toBe(1);
      expect(refused.stderr).toBe(`mailgate: cannot open the gateway's control socket ${socketPath}: permission denied; run this as the gateway's user (or root)\n`);
      const kick = await runCli(['--config', config, 'kick', 'alice'], { user: other });
      expect(kick.code).toBe(1);
      for (const folder of [dir, path.join(dir, 'data')]) chmodSync(folder, 0o700);
    }

    expect(await gateway!.stop()).toBe(0);
    expect(existsSync(socketPath)).toBe(false);
    const none = await cli('who');
    expect(none.code).toBe(1);
    expect(none.stdout).toBe('');
    expect(none.stderr).toBe(`mailgate: no gateway is running for this configuration: nothing answers on ${socketPath} (control.socket)\n`);
  });

  it('a socket left by a gateway that was killed is taken over at start; a second gateway on a live one refuses to start', async () => {
    // Catches: a start that fails on a stale socket after a crash, and two gateways silently
    // sharing (or stealing) one control socket.
    await serve();
    const first = gateway!;
    expect(await first.stop('SIGKILL')).toBe(null);
    expect(lstatSync(socketPath).isSocket()).toBe(true);
    expect((await cli('who')).stderr).toMatch(/no gateway is running/);

    await serve();
    expect(gateway!.logs().some((l) => l.msg === 'removed a stale control socket (a gateway that did not stop cleanly left it)' && l.path === socketPath)).toBe(true);
    expect(await cliOk('who')).toBe('no logged-in sessions\n');
    const inode = statSync(socketPath).ino;

    const second = await runCli(['--config', config, 'serve'], { env: env() });
    expect(second.code).toBe(1);
    expect(second.stderr).toBe(`mailgate: control.socket ${socketPath}: another mailgate is running and answers on it; stop that one first, or give this one its own control.socket\n`);
    // The first one's socket is still there and still answers.
    expect(statSync(socketPath).ino).toBe(inode);
    expect(await cliOk('who')).toBe('no logged-in sessions\n');
  }, 60_000);
});
