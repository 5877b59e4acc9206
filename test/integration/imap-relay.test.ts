/**
 * IMAP after login, through a real mailgate in front of a real Dovecot: the
 * relay (pipelining right after LOGIN, bytes both ways, a 20 MiB message,
 * closing either side, no leaked sockets), IDLE with ImapFlow, and the log:
 * one `session closed` line per session with its fields, `login failed`
 * lines, and no secret anywhere in it.
 */
import { execFile } from 'node:child_process';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { logLines, sessionClosed, startGateway, type GatewayHandle } from '../support/gateway.js';
import { credentialFailure, imaps } from '../support/imap-client.js';
import { mailClientScript, runPython } from '../support/python.js';
import { b64, saslPlain } from '../support/raw-client.js';
import { idleUntilDelivered, imapFlow } from '../support/real-clients.js';
import { openTcpConnections, resourcesBackTo, settledResources } from '../support/resources.js';
import { enableTotp } from '../support/store.js';
import { waitUntil } from '../support/timing.js';

const execFileP = promisify(execFile);

const HELP_URL = 'https://mail.example.test/app-passwords';
const BIG_SIZE = 20 * 1024 * 1024;

/** A deterministic 20 MiB message: a header, then 76-character base64-alphabet lines from a xorshift PRNG. */
function bigMessage(size: number): Buffer {
  const header = Buffer.from(
    [
      'From: Big Sender <big@example.org>',
      'To: Bob <bob@example.org>',
      'Subject: twenty mebibytes',
      'Message-ID: <big-20mib@example.org>',
      'MIME-Version: 1.0',
      'Content-Type: application/octet-stream',
      'Content-Transfer-Encoding: base64',
      '',
      '',
    ].join('\r\n'),
  );
  const alphabet = Buffer.from('ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/');
  const out = Buffer.alloc(size);
  header.copy(out);
  let pos = header.length;
  let x = 0x2545f491;
  const char = () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return alphabet[(x >>> 0) & 63]!;
  };
  while (size - pos >= 80) {
    for (let i = 0; i < 76; i++) out[pos++] = char();
    out[pos++] = 0x0d;
    out[pos++] = 0x0a;
  }
  while (size - pos > 2) out[pos++] = char();
  out[pos++] = 0x0d;
  out[pos++] = 0x0a;
  return out;
}

const SMALL = Buffer.from('From: a@example.org\r\nTo: bob@example.org\r\nSubject: small one\r\n\r\nhello bob\r\n');

let dc: DovecotHandle;
let gw: GatewayHandle;
let big: Buffer;
let alice: { password: string; id: number; name: string };
let totpSecret: string;
/** Every secret this file sends, for the final log check. */
const secrets = new Set<string>();

beforeAll(async () => {
  big = bigMessage(BIG_SIZE);
  dc = await startDovecot();
  gw = await startGateway(dc);
  gw.store.accounts.add('alice');
  gw.store.accounts.add('bob');
  totpSecret = enableTotp(gw.store, 'alice');
  const created = await gw.store.appPasswords.create('alice', { name: 'Thunderbird on the laptop', scopes: ['imap'] });
  alice = { password: created.password, id: created.info.id, name: created.info.name };
  await dc.seedMessage('bob', SMALL); // UID 1
  await dc.seedMessage('bob', big); // UID 2
  for (const s of [created.password, created.password.replace(/ /g, ''), 'bob-upstream-pw', 'alice-upstream-pw', 'carol-upstream-pw', dc.master.password, totpSecret]) {
    secrets.add(s);
  }
});

afterAll(async () => {
  await gw?.stop();
  await dc?.stop();
});

const connect = () => imaps(gw, { timeoutMs: 15_000 });

function taggedLines(text: string): string[] {
  return text.split('\r\n').filter((l) => /^[A-Za-z0-9]+ (OK|NO|BAD) /.test(l)).map((l) => l.split(' ').slice(0, 2).join(' '));
}

/**
 * The gateway's own connections, by port, so no other socket in the process
 * can change them: the ones it accepted on its IMAPS listener, and the ones
 * it opened to this file's Dovecot.
 */
function gatewayConnections(): { clients: number; upstream: number } {
  const open = openTcpConnections();
  return {
    clients: open.filter((c) => c.localPort === gw.ports.imaps).length,
    upstream: open.filter((c) => c.remotePort === dc.imapPort).length,
  };
}

/** Waits until the gateway holds none of those connections; says how many are left if it does not. */
async function noGatewayConnections(what: string): Promise<void> {
  try {
    await waitUntil(() => {
      const open = gatewayConnections();
      return open.clients + open.upstream === 0;
    }, what);
  } catch (err) {
    throw new Error(`${(err as Error).message}; still open: ${JSON.stringify(gatewayConnections())}`);
  }
}

describe('relay', () => {
  it('commands pipelined right after LOGIN in the same packet are forwarded in order and answered', async () => {
    const c = await connect();
    c.send('p1 LOGIN bob bob-upstream-pw\r\np2 SELECT INBOX\r\np3 UID FETCH 1:* (UID RFC822.SIZE)\r\np4 NOOP\r\np5 LOGOUT\r\n');
    const all = await c.readUntilTagged('p5');
    expect(taggedLines(all)).toEqual(['p1 OK', 'p2 OK', 'p3 OK', 'p4 OK', 'p5 OK']);
    expect(all).toMatch(/^p1 OK \[CAPABILITY IMAP4rev1 [^\]]+\] Logged in\r\n/);
    expect(all).toContain(`* 1 FETCH (UID 1 RFC822.SIZE ${SMALL.length})\r\n`);
    expect(all).toContain(`* 2 FETCH (UID 2 RFC822.SIZE ${BIG_SIZE})\r\n`);
    expect(all).toContain('* BYE Logging out\r\n');
    await c.waitClosed();
  });

  it('the same after AUTHENTICATE PLAIN with an app password (master login)', async () => {
    const c = await connect();
    const ir = saslPlain('alice', alice.password);
    secrets.add(ir);
    c.send(`q1 AUTHENTICATE PLAIN ${ir}\r\nq2 SELECT INBOX\r\nq3 NOOP\r\nq4 LOGOUT\r\n`);
    const all = await c.readUntilTagged('q4');
    expect(taggedLines(all)).toEqual(['q1 OK', 'q2 OK', 'q3 OK', 'q4 OK']);
    await c.waitClosed();
  });

  it('bytes both ways: APPEND through the gateway (with "+" relayed), then FETCH it back identical', async () => {
    const c = await connect();
    expect(await c.command('r1', 'LOGIN bob bob-upstream-pw')).toMatch(/^r1 OK /);
    expect(await c.command('r2', 'CREATE Uploads')).toMatch(/r2 OK /);
    const msg = Buffer.from(`From: bob@example.org\r\nSubject: uploaded\r\n\r\n${'Grüße '.repeat(2000)}\r\n`, 'utf8');
    c.send(`r3 APPEND Uploads (\\Seen) {${msg.length}}\r\n`);
    expect(await c.readLine()).toMatch(/^\+ /); // Dovecot's continuation, through the relay
    c.send(Buffer.concat([msg, Buffer.from('\r\n')]));
    expect(await c.readUntilTagged('r3')).toMatch(/^r3 OK \[APPENDUID \d+ 1\] Append completed/);
    expect(await c.command('r4', 'SELECT Uploads')).toMatch(/\* 1 EXISTS/);
    const fetched = await c.fetchLiteral('r5 UID FETCH 1 BODY.PEEK[]');
    expect(fetched.equals(msg)).toBe(true);
    await c.command('r6', 'LOGOUT');
    await c.waitClosed();
  });

  it('a 20 MiB message fetched through the gateway is byte-identical to the maildir file', async () => {
    const file = await readFile(await findMaildirFile('bob', 'twenty mebibytes'));
    expect(file.equals(big)).toBe(true);
    const c = await connect();
    expect(await c.command('f1', 'LOGIN bob bob-upstream-pw')).toMatch(/^f1 OK /);
    expect(await c.command('f2', 'EXAMINE INBOX')).toMatch(/f2 OK \[READ-ONLY\]/);
    const t0 = Date.now();
    const fetched = await c.fetchLiteral('f3 UID FETCH 2 BODY.PEEK[]');
    const ms = Date.now() - t0;
    expect(fetched.length).toBe(BIG_SIZE);
    expect(fetched.equals(file)).toBe(true);
    expect(ms).toBeLessThan(10_000);
    const port = c.localPort;
    await c.command('f4', 'LOGOUT');
    await c.waitClosed();
    const closed = await sessionClosed(gw, port);
    expect(closed.bytesOut).toBeGreaterThan(BIG_SIZE);
  });

  it('upstream closes (Dovecot kicks the user): the client gets the upstream BYE, then its connection is closed', async () => {
    const c = await connect();
    expect(await c.command('k1', 'LOGIN bob bob-upstream-pw')).toMatch(/^k1 OK /);
    expect(await c.command('k2', 'SELECT INBOX')).toMatch(/k2 OK/);
    const port = c.localPort;
    await execFileP('doveadm', ['-c', dc.configPath, 'kick', 'bob'], { env: { PATH: process.env.PATH ?? '/usr/bin:/bin' } });
    expect(await c.waitClosed()).toMatch(/^\* BYE /);
    expect((await sessionClosed(gw, port)).outcome).toBe('upstream-closed');
    await waitUntil(() => gw.gateway.services.registry.size === 0, 'no session left');
  });

  it('client hangs up: the upstream connection is closed too, and no socket leaks', async () => {
    // Catches: a relay that leaves the upstream connection (or the client's) open when the client
    // goes, and any socket or timer a relayed session leaves behind. Robust to unrelated sockets:
    // the connections are counted by port, and the process's counts may only fall below the baseline.
    await waitUntil(() => gw.gateway.services.registry.size === 0, 'no session left');
    await noGatewayConnections('no gateway connection left from earlier tests');
    const baseline = await settledResources();
    const clients = await Promise.all([connect(), connect(), connect()]);
    const ports = clients.map((c) => c.localPort);
    await Promise.all(clients.map(async (c, i) => expect(await c.command(`h${i}`, 'LOGIN bob bob-upstream-pw')).toMatch(/ OK /)));
    await Promise.all(clients.map(async (c) => expect(await c.command('h9', 'SELECT INBOX')).toMatch(/h9 OK/)));
    expect(gw.gateway.services.registry.size).toBe(3);
    // What the check below watches: 3 gateway ends of the clients' connections, 3 upstream connections.
    expect(gatewayConnections()).toEqual({ clients: 3, upstream: 3 });
    const logBefore = (await dc.logText()).length;
    for (const c of clients) c.destroy();
    await Promise.all(clients.map((c) => c.closed));
    const closed = await Promise.all(ports.map((p) => sessionClosed(gw, p)));
    expect(closed.map((l) => l.outcome)).toEqual(['client-closed', 'client-closed', 'client-closed']);
    await waitUntil(() => gw.gateway.services.registry.size === 0, 'registry empty');
    await noGatewayConnections('the gateway to close both ends of every session');
    await resourcesBackTo(baseline);
    // Dovecot saw each of its connections closed (not logged out). Counted, not matched by session:
    // under load Dovecot now and then writes the line without its "imap(user)<pid><session>" prefix.
    const disconnects = async () => ((await dc.logText()).slice(logBefore).match(/Info: Disconnected: (.*)/g) ?? []);
    await waitUntil(async () => (await disconnects()).length >= 3, "Dovecot's three disconnect lines");
    expect((await disconnects()).map((line) => /Disconnected: Connection closed/.test(line))).toEqual([true, true, true]);
  });
  it('client hangs up while mailgate is still logging in upstream: nothing is left behind', async () => {
    // Catches: an abandoned upstream login dialogue that keeps its connection, or a session
    // that leaves a socket or timer behind. Robust to unrelated sockets, as above.
    await waitUntil(() => gw.gateway.services.registry.size === 0, 'no session left');
    await noGatewayConnections('no gateway connection left from earlier tests');
    const baseline = await settledResources();
    const clients = await Promise.all([connect(), connect()]);
    clients[0]!.send('g1 LOGIN bob bob-upstream-pw\r\n');
    clients[1]!.send(`g2 AUTHENTICATE PLAIN ${saslPlain('alice', alice.password)}\r\n`);
    for (const c of clients) c.destroy();
    await Promise.all(clients.map((c) => c.closed));
    const closed = await Promise.all(clients.map((c) => sessionClosed(gw, c.localPort)));
    for (const l of closed) expect(logLines(gw, 'session closed', { session: l.session })).toHaveLength(1);
    await waitUntil(() => gw.gateway.services.registry.size === 0, 'registry empty');
    await noGatewayConnections('the gateway to close both ends of every session');
    // An abandoned login's wait for the upstream's answer ends with it (ResponseReader.detach), its
    // deadline timer included: well before that deadline, nothing may be left above the baseline.
    await resourcesBackTo(baseline, 2_000);
  });

  it('a 5 MiB APPEND goes upstream intact (client to server direction under backpressure)', async () => {
    const c = await connect();
    expect(await c.command('m1', 'LOGIN bob bob-upstream-pw')).toMatch(/^m1 OK /);
    const msg = Buffer.concat([Buffer.from('From: bob@example.org\r\nSubject: big upload\r\n\r\n'), big.subarray(big.length - 5 * 1024 * 1024)]);
    c.send(`m2 APPEND INBOX {${msg.length}+}\r\n`);
    c.send(Buffer.concat([msg, Buffer.from('\r\n')]));
    const appended = await c.readUntilTagged('m2');
    const uid = /^m2 OK \[APPENDUID \d+ (\d+)\]/.exec(appended)?.[1];
    expect(uid).toBeDefined();
    await c.command('m3', 'EXAMINE INBOX');
    const fetched = await c.fetchLiteral(`m4 UID FETCH ${uid} BODY.PEEK[]`);
    expect(fetched.equals(msg)).toBe(true);
    await c.command('m5', 'LOGOUT');
    await c.waitClosed();
  });
});

describe('IDLE', () => {
  it('ImapFlow sits in IDLE through the gateway and sees a newly delivered message', async () => {
    const client = imapFlow(gw.ports.imaps, gw.caCert, { user: 'alice', pass: alice.password }, { clientInfo: { name: 'imapflow-test', version: '2' } });
    const delivered = Buffer.from('From: x@example.org\r\nTo: alice@example.org\r\nSubject: live\r\n\r\ndelivered while idling\r\n');
    const { before, after, newest } = await idleUntilDelivered(client, () => dc.deliver('alice', delivered));
    expect(after).toBe(before + 1);
    expect(newest?.equals(delivered)).toBe(true);
  });
});

describe('log', () => {
  it('one "session closed" line per session, with every field', async () => {
    const c = await connect();
    const t0 = Date.now();
    expect(await c.command('l1', 'ID ("name" "Thunderbird" "version" "153.0")')).toBe('* ID ("name" "mailgate")\r\nl1 OK ID completed\r\n');
    expect(await c.command('l2', `LOGIN alice "${alice.password}"`)).toMatch(/^l2 OK /);
    await c.command('l3', 'SELECT INBOX');
    const tls = c.tlsVersion;
    expect(tls).toMatch(/^TLSv1\.[23]$/);
    await c.command('l4', 'LOGOUT');
    await c.waitClosed();
    const sent = c.socket.bytesWritten;
    const received = c.socket.bytesRead;
    const port = c.localPort;
    const line = await sessionClosed(gw, port);
    const elapsed = Date.now() - t0;
    expect(line).toMatchObject({
      level: 'info',
      msg: 'session closed',
      clientIp: '127.0.0.1',
      clientPort: port,
      listener: `imap/implicit@127.0.0.1:${gw.ports.imaps}`,
      protocol: 'imap',
      tls,
      user: 'alice',
      mode: 'app-password',
      method: 'login',
      appPasswordId: alice.id,
      appPasswordName: alice.name,
      client: 'Thunderbird',
      clientVersion: '153.0',
      bytesIn: sent,
      bytesOut: received,
    });
    expect(['upstream-closed', 'client-closed']).toContain(line.outcome);
    expect(line.session).toMatch(/^[A-Za-z0-9_-]{8}$/);
    expect(line.durationMs).toEqual(expect.any(Number));
    expect(line.durationMs as number).toBeLessThanOrEqual(elapsed + 50);
    // Exactly one per session.
    expect(logLines(gw, 'session closed', { session: line.session })).toHaveLength(1);
    const ok = logLines(gw, 'login ok', { session: line.session });
    expect(ok).toEqual([expect.objectContaining({ user: 'alice', appPasswordId: alice.id, appPasswordName: alice.name })]);
  });

  it('a "login failed" line for each failed login, with the reason; a session with no login says so', async () => {
    const c = await connect();
    const wrongApp = 'wxyz wxyz wxyz wxyz';
    const lp = b64('alice');
    const lpw = b64('not-the-password-9');
    for (const s of [wrongApp, wrongApp.replace(/ /g, ''), lpw, 'not-the-password-9', 'bad-pass-for-nobody']) secrets.add(s);
    expect(await c.command('w1', `LOGIN alice "${wrongApp}"`)).toBe(credentialFailure('w1', HELP_URL));
    c.send('w2 AUTHENTICATE LOGIN\r\n');
    expect(await c.readLine()).toBe('+ VXNlcm5hbWU6\r\n');
    c.send(`${lp}\r\n`);
    expect(await c.readLine()).toBe('+ UGFzc3dvcmQ6\r\n');
    c.send(`${lpw}\r\n`);
    expect(await c.readUntilTagged('w2')).toBe(credentialFailure('w2', HELP_URL));
    expect(await c.command('w3', 'LOGIN nobody bad-pass-for-nobody')).toBe(credentialFailure('w3', HELP_URL));
    await c.waitClosed();
    const port = c.localPort;
    const failures = logLines(gw, 'login failed', { clientPort: port });
    expect(failures.map((l) => ({ user: l.user, method: l.method, reason: l.reason, clientIp: l.clientIp, protocol: l.protocol }))).toEqual([
      { user: 'alice', method: 'login', reason: 'wrong-password', clientIp: '127.0.0.1', protocol: 'imap' },
      { user: 'alice', method: 'authenticate-login', reason: 'two-factor-required', clientIp: '127.0.0.1', protocol: 'imap' },
      { user: 'nobody', method: 'login', reason: 'unknown-account', clientIp: '127.0.0.1', protocol: 'imap' },
    ]);
    const closed = await sessionClosed(gw, port);
    expect(closed).toMatchObject({ outcome: 'too-many-login-failures', client: null, clientVersion: null });
    expect(closed.user).toBeUndefined();
  });

  it('the app password\'s last use records imap, the client IP and the client\'s ID name/version (Python imaplib)', async () => {
    const created = await gw.store.appPasswords.create('alice', { name: 'Python', scopes: ['imap'] });
    secrets.add(created.password);
    secrets.add(created.password.replace(/ /g, ''));
    const lastUsed = () => gw.store.appPasswords.list('alice').find((p) => p.id === created.info.id)!.lastUsed;
    expect(lastUsed()).toBeNull();
    const pyLogin = (name: string, version: string) =>
      runPython(
        mailClientScript(`
          M = IMAPS('localhost', INPUT['port'], ssl_context=ctx())
          typ, data = M._simple_command('ID', '("name" "%s" "version" "%s")' % (INPUT['name'], INPUT['version']))
          assert typ == 'OK', (typ, data)
          typ, _ = M.login('alice', INPUT['password'])
          assert typ == 'OK'
          M.logout()
          emit({'ok': True})
        `),
        { ca: gw.caCert, port: gw.ports.imaps, password: created.password.replace(/ /g, ''), name, version },
      );
    const first = await pyLogin('Thunderbird', '153.0');
    expect(first.code, first.stderr).toBe(0);
    const one = lastUsed();
    expect(one).toMatchObject({ protocol: 'imap', ip: '127.0.0.1', client: 'Thunderbird/153.0' });
    expect(Math.abs(one!.at - Date.now())).toBeLessThan(10_000);
    // A second login (now a verified-login cache hit, if any) records its own client.
    const second = await pyLogin('K-9 Mail', '6.802');
    expect(second.code, second.stderr).toBe(0);
    expect(lastUsed()).toMatchObject({ protocol: 'imap', ip: '127.0.0.1', client: 'K-9 Mail/6.802' });
    expect(lastUsed()!.at).toBeGreaterThanOrEqual(one!.at);
  });

  it('the whole log holds no secret: app passwords, upstream and master passwords, AUTHENTICATE payloads, the TOTP secret', async () => {
    // One more of each kind of login, so every path has written its lines.
    const c = await connect();
    const irBob = saslPlain('bob', 'bob-upstream-pw');
    secrets.add(irBob);
    expect(await c.command('x1', `AUTHENTICATE PLAIN ${irBob}`)).toMatch(/^x1 OK /);
    await c.command('x2', 'LOGOUT');
    await c.waitClosed();
    const d = await connect();
    const irWrong = saslPlain('bob', 'bob-wrong-upstream-pw');
    secrets.add(irWrong);
    secrets.add('bob-wrong-upstream-pw');
    expect(await d.command('x3', `AUTHENTICATE PLAIN ${irWrong}`)).toBe(credentialFailure('x3', HELP_URL));
    await d.end();
    await sessionClosed(gw, d.localPort);

    const text = gw.logText();
    expect(text.length).toBeGreaterThan(1000);
    // By the way: every session wrote exactly one "session closed" line.
    const closedIds = logLines(gw, 'session closed').map((l) => l.session);
    expect(new Set(closedIds).size).toBe(closedIds.length);
    expect(closedIds.length).toBeGreaterThanOrEqual(15);
    expect(logLines(gw, 'login failed').length).toBeGreaterThanOrEqual(4);
    expect(logLines(gw, 'login ok').length).toBeGreaterThanOrEqual(5);
    const lower = text.toLowerCase();
    for (const secret of secrets) {
      expect(secret.length).toBeGreaterThanOrEqual(8);
      expect(lower.includes(secret.toLowerCase()), `the log contains the secret ${JSON.stringify(secret)}`).toBe(false);
      // Nor in a JSON-escaped or base64 form.
      expect(text.includes(JSON.stringify(secret).slice(1, -1))).toBe(false);
      expect(text.includes(Buffer.from(secret).toString('base64'))).toBe(false);
    }
  });
});

/** Path of the maildir file of `user` whose headers contain `subject`. */
async function findMaildirFile(user: string, subject: string): Promise<string> {
  for (const sub of ['cur', 'new']) {
    const dir = path.join(dc.maildir(user), sub);
    for (const name of await readdir(dir)) {
      const file = path.join(dir, name);
      const head = (await readFile(file)).subarray(0, 4096).toString('latin1');
      if (head.includes(`Subject: ${subject}`)) return file;
    }
  }
  throw new Error(`no message "${subject}" for ${user}`);
}
