/**
 * Proves the integration-test harness: a real Dovecot started by
 * test/support/dovecot.ts, exercised by real clients (Python imaplib/poplib,
 * curl, ImapFlow) talking DIRECTLY to it. No mailgate code is involved.
 */
import { existsSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { makeTestPki } from '../support/pki.js';
import { mailClientScript, pythonJson } from '../support/python.js';
import { curlFetch, idleUntilDelivered, imapFlow } from '../support/real-clients.js';
import { makeTempDir, removeTempDir } from '../support/tmp.js';

const MSG1 = Buffer.from(
  [
    'Return-Path: <sender@example.org>',
    'From: Sender <sender@example.org>',
    'To: Alice <alice@example.org>',
    'Subject: harness message one',
    'Date: Mon, 01 Jan 2024 10:00:00 +0000',
    'Message-ID: <harness-1@example.org>',
    'MIME-Version: 1.0',
    'Content-Type: text/plain; charset=utf-8',
    'Content-Transfer-Encoding: 8bit',
    '',
    'Hello Alice,',
    '.a line starting with a dot (POP3 must byte-stuff it)',
    '..and one with two',
    'Grüße – 8-bit UTF-8 body text',
    'x'.repeat(900),
    '',
    '-- ',
    'sender',
    '',
  ].join('\r\n'),
  'utf8',
);

const MSG2 = Buffer.from(
  ['From: other@example.org', 'To: alice@example.org', 'Subject: harness message two (seeded into new/)', '', 'second', ''].join('\r\n'),
);

/** Python helpers of this file's client scripts, after the shared mail-client ones. */
const PY_HARNESS = `
  def fetch_uid(M, uid):
      typ, data = M.uid('FETCH', str(uid), '(BODY.PEEK[])')
      assert typ == 'OK', (typ, data)
      for item in data:
          if isinstance(item, tuple):
              return item[1]
      raise AssertionError('no literal in FETCH response: %r' % (data,))

  def imap_login_fails(port, user, pw):
      M = IMAPS('localhost', port, ssl_context=ctx())
      try:
          M.login(user, pw)
      except imaplib.IMAP4.error:
          return True
      finally:
          try:
              M.logout()
          except Exception:
              pass
      return False
`;

const py = (body: string, input: Record<string, unknown>) => pythonJson(mailClientScript(PY_HARNESS, body), input, 15_000);

function unb64(v: unknown): Buffer {
  if (typeof v !== 'string') throw new Error(`expected base64 string, got ${typeof v}`);
  return Buffer.from(v, 'base64');
}

/** Pids whose command line mentions `needle` (Linux /proc; Dovecot's process titles carry the instance name). */
async function processesMatching(needle: string): Promise<string[]> {
  const found: string[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      const cmdline = (await readFile(`/proc/${entry}/cmdline`, 'utf8')).replace(/\0/g, ' ');
      if (cmdline.includes(needle)) found.push(`${entry}: ${cmdline}`);
    } catch {
      // raced with exit
    }
  }
  return found;
}

describe('Dovecot test harness (real Dovecot, real clients)', () => {
  let dc: DovecotHandle;
  let alice: { name: string; password: string };
  const startMs: number[] = [];

  beforeAll(async () => {
    const t0 = Date.now();
    dc = await startDovecot();
    startMs.push(Date.now() - t0);
    const a = dc.users.find((u) => u.name === 'alice');
    if (!a) throw new Error('default users must include alice');
    alice = a;
    await dc.seedMessage('alice', MSG1); // UID 1 (cur/)
    await dc.seedMessage('alice', MSG2, { folder: 'new' }); // UID 2
  });

  afterAll(async () => {
    await dc?.stop();
  });

  it('starts quickly, with the documented defaults', () => {
    expect(startMs[0]).toBeLessThan(2_000);
    expect(dc.host).toBe('127.0.0.1');
    expect(new Set([dc.imapPort, dc.imapsPort, dc.pop3Port, dc.pop3sPort]).size).toBe(4);
    expect(dc.users.map((u) => u.name)).toEqual(['alice', 'bob', 'carol']);
    expect(alice.password).toBe('alice-upstream-pw');
    expect(dc.master.name).toBe('gwmaster');
    expect(dc.master.password.length).toBeGreaterThanOrEqual(16);
    expect(dc.caCert).toBe(dc.pki.caCert);
    for (const f of [dc.pki.caCert, dc.pki.caKey, dc.pki.serverCert, dc.pki.serverKey]) expect(existsSync(f)).toBe(true);
    expect(path.dirname(dc.maildir('alice'))).toBe(path.join(dc.dir, 'mail'));
    for (const sub of ['cur', 'new', 'tmp']) expect(existsSync(path.join(dc.maildir('alice'), sub))).toBe(true);
  });

  it('IMAPS (implicit TLS, verified as localhost): LOGIN, SELECT, FETCH is byte-identical', async () => {
    const out = await py(
      `
      M = IMAPS('localhost', INPUT['port'], ssl_context=ctx())
      tls = M.sock.version()
      M.login(INPUT['user'], INPUT['password'])
      typ, data = M.select('INBOX')
      assert typ == 'OK', data
      one = fetch_uid(M, 1)
      two = fetch_uid(M, 2)
      M.logout()
      emit({'tls': tls, 'exists': int(data[0]), 'one': b64(one), 'two': b64(two)})
      `,
      { ca: dc.caCert, port: dc.imapsPort, user: 'alice', password: alice.password },
    );
    expect(out.tls).toMatch(/^TLSv1\.[23]$/);
    expect(out.exists).toBe(2);
    expect(unb64(out.one).equals(MSG1)).toBe(true);
    expect(unb64(out.two).equals(MSG2)).toBe(true);
  });

  it('IMAPS certificate verification is real: a different CA is rejected', async () => {
    const otherDir = await makeTempDir('other-pki');
    try {
      const other = await makeTestPki(otherDir);
      const out = await py(
        `
        c = ssl.create_default_context(cafile=INPUT['otherCa'])
        try:
            c.wrap_socket(socket.create_connection(('127.0.0.1', INPUT['port']), 5), server_hostname='localhost')
            emit({'rejected': False})
        except ssl.SSLCertVerificationError as e:
            emit({'rejected': True, 'why': e.verify_message})
        `,
        { port: dc.imapsPort, otherCa: other.caCert },
      );
      expect(out.rejected).toBe(true);
    } finally {
      await removeTempDir(otherDir);
    }
  });

  it('IMAP STARTTLS (verified against 127.0.0.1 IP SAN): LOGIN, SELECT, FETCH is byte-identical', async () => {
    const out = await py(
      `
      M = imaplib.IMAP4('127.0.0.1', INPUT['port'])
      caps = list(M.capabilities)
      M.starttls(ssl_context=ctx())
      tls = M.sock.version()
      M.login(INPUT['user'], INPUT['password'])
      typ, data = M.select('INBOX')
      assert typ == 'OK', data
      one = fetch_uid(M, 1)
      M.logout()
      emit({'caps': caps, 'tls': tls, 'one': b64(one)})
      `,
      { ca: dc.caCert, port: dc.imapPort, user: 'alice', password: alice.password },
    );
    expect(out.caps).toContain('STARTTLS');
    expect(out.tls).toMatch(/^TLSv1\.[23]$/);
    expect(unb64(out.one).equals(MSG1)).toBe(true);
  });

  it('IMAP master user: AUTHENTICATE PLAIN with authzid, and LOGIN "alice*gwmaster"', async () => {
    const out = await py(
      `
      m, mpw = INPUT['master'], INPUT['masterPassword']
      # 1. SASL PLAIN: authzid=alice, authcid=gwmaster
      M = IMAPS('localhost', INPUT['port'], ssl_context=ctx())
      M.authenticate('PLAIN', lambda _challenge: ('alice\\0' + m + '\\0' + mpw).encode())
      M.select('INBOX', readonly=True)
      viaAuthzid = fetch_uid(M, 1)
      M.logout()
      # 2. separator form
      M = IMAPS('localhost', INPUT['port'], ssl_context=ctx())
      M.login('alice' + INPUT['sep'] + m, mpw)
      M.select('INBOX', readonly=True)
      viaSeparator = fetch_uid(M, 1)
      M.logout()
      # Negative cases, in parallel: Dovecot 2.3 answers each failure only on
      # its next 500 ms failure-queue tick, even with auth_failure_delay = 0.
      from concurrent.futures import ThreadPoolExecutor
      negatives = {
        'wrongMasterPw': ('alice' + INPUT['sep'] + m, mpw + 'x'),
        'nonexistentTarget': ('nosuchuser' + INPUT['sep'] + m, mpw),
        'masterAsItself': (m, mpw),
        'userWrongPw': ('alice', 'not-her-password'),
        'userWithBobPw': ('alice', INPUT['bobPassword']),
      }
      with ThreadPoolExecutor(len(negatives)) as pool:
          futures = {k: pool.submit(imap_login_fails, INPUT['port'], u, p) for k, (u, p) in negatives.items()}
          failed = {k: f.result() for k, f in futures.items()}
      emit(dict(failed, viaAuthzid=b64(viaAuthzid), viaSeparator=b64(viaSeparator)))
      `,
      {
        ca: dc.caCert,
        port: dc.imapsPort,
        master: dc.master.name,
        masterPassword: dc.master.password,
        sep: dc.masterSeparator,
        bobPassword: dc.users.find((u) => u.name === 'bob')?.password,
      },
    );
    expect(unb64(out.viaAuthzid).equals(MSG1)).toBe(true);
    expect(unb64(out.viaSeparator).equals(MSG1)).toBe(true);
    expect(out).toMatchObject({ wrongMasterPw: true, nonexistentTarget: true, masterAsItself: true, userWrongPw: true, userWithBobPw: true });
    await dc.waitForLog(/imap-login: Info: Login: user=<alice>, method=PLAIN, rip=127\.0\.0\.1/);
  });

  it('IMAP ID x-originating-ip from a trusted network becomes the logged rip=', async () => {
    await py(
      `
      imaplib.Commands.setdefault('ID', ('NONAUTH', 'AUTH', 'SELECTED'))
      M = IMAPS('localhost', INPUT['port'], ssl_context=ctx())
      typ, _ = M._simple_command('ID', '("name" "dovecot-harness" "x-originating-ip" "203.0.113.7" "x-originating-port" "40007")')
      assert typ == 'OK'
      M.login('carol', INPUT['password'])
      M.logout()
      emit({'ok': True})
      `,
      { ca: dc.caCert, port: dc.imapsPort, password: dc.users.find((u) => u.name === 'carol')?.password },
    );
    await dc.waitForLog(/imap-login: Info: Login: user=<carol>.*rip=203\.0\.113\.7/);
  });

  it('POP3S (implicit TLS): USER/PASS, STAT, RETR is byte-identical; POP3 master logins', async () => {
    const out = await py(
      `
      p = POP3S('localhost', INPUT['port'], context=ctx())
      tls = p.sock.version()
      p.user('alice')
      p.pass_(INPUT['password'])
      count, size = p.stat()
      one = retr_bytes(p, 1)
      two = retr_bytes(p, 2)
      uidl = p.uidl()[1]
      p.quit()
      # master user, separator form
      p = POP3S('localhost', INPUT['port'], context=ctx())
      p.user('alice' + INPUT['sep'] + INPUT['master'])
      p.pass_(INPUT['masterPassword'])
      viaSeparator = retr_bytes(p, 1)
      p.quit()
      # master user, SASL PLAIN with authzid
      p = POP3S('localhost', INPUT['port'], context=ctx())
      sasl = base64.b64encode(('alice\\0' + INPUT['master'] + '\\0' + INPUT['masterPassword']).encode()).decode()
      authResp = p._shortcmd('AUTH PLAIN ' + sasl)
      viaAuthzid = retr_bytes(p, 1)
      p.quit()
      emit({'tls': tls, 'count': count, 'size': size, 'one': b64(one), 'two': b64(two),
            'uidl': [u.decode() for u in uidl], 'authResp': authResp.decode(),
            'viaSeparator': b64(viaSeparator), 'viaAuthzid': b64(viaAuthzid)})
      `,
      { ca: dc.caCert, port: dc.pop3sPort, password: alice.password, master: dc.master.name, masterPassword: dc.master.password, sep: dc.masterSeparator },
    );
    expect(out.tls).toMatch(/^TLSv1\.[23]$/);
    expect(out.count).toBe(2);
    expect(out.size).toBe(MSG1.length + MSG2.length);
    expect(unb64(out.one).equals(MSG1)).toBe(true);
    expect(unb64(out.two).equals(MSG2)).toBe(true);
    // pop3_uidl_format = %08Xu%08Xv
    // (Dovecot's %X renders lowercase hex.)
    expect(out.uidl).toEqual([expect.stringMatching(/^1 00000001[0-9a-f]{8}$/), expect.stringMatching(/^2 00000002[0-9a-f]{8}$/)]);
    expect(out.authResp).toMatch(/^\+OK/);
    expect(unb64(out.viaSeparator).equals(MSG1)).toBe(true);
    expect(unb64(out.viaAuthzid).equals(MSG1)).toBe(true);
  });

  it('POP3 STLS: USER/PASS, RETR is byte-identical; XCLIENT from a trusted network sets rip=', async () => {
    const out = await py(
      `
      p = poplib.POP3('127.0.0.1', INPUT['port'])
      caps = p.capa()
      p.stls(context=ctx())
      tls = p.sock.version()
      p.user('alice')
      p.pass_(INPUT['password'])
      count, size = p.stat()
      one = retr_bytes(p, 1)
      p.quit()
      p = poplib.POP3('127.0.0.1', INPUT['port'])
      p.stls(context=ctx())
      xclient = p._shortcmd('XCLIENT ADDR=203.0.113.8 PORT=40008').decode()
      p.user('bob')
      p.pass_(INPUT['bobPassword'])
      p.quit()
      emit({'caps': sorted(caps.keys()), 'tls': tls, 'count': count, 'one': b64(one), 'xclient': xclient})
      `,
      { ca: dc.caCert, port: dc.pop3Port, password: alice.password, bobPassword: dc.users.find((u) => u.name === 'bob')?.password },
    );
    expect(out.caps).toContain('STLS');
    expect(out.tls).toMatch(/^TLSv1\.[23]$/);
    expect(out.count).toBe(2);
    expect(unb64(out.one).equals(MSG1)).toBe(true);
    expect(out.xclient).toMatch(/^\+OK/);
    await dc.waitForLog(/pop3-login: Info: Login: user=<bob>.*rip=203\.0\.113\.8/);
  });

  it('curl over IMAPS fetches UID 1 byte-identically', async () => {
    const body = await curlFetch(`imaps://localhost:${dc.imapsPort}/INBOX;UID=1`, { ca: dc.caCert, user: 'alice', password: alice.password, home: dc.dir });
    expect(body.equals(MSG1)).toBe(true);
  });

  it('deliver() is seen by an IDLEing client (ImapFlow)', async () => {
    const bob = dc.users.find((u) => u.name === 'bob');
    if (!bob) throw new Error('no bob');
    const client = imapFlow(dc.imapsPort, dc.caCert, { user: bob.name, pass: bob.password });
    const delivered = Buffer.from('From: x@example.org\r\nSubject: live\r\n\r\nlive delivery\r\n');
    const { after, newest } = await idleUntilDelivered(client, async () => {
      const file = await dc.deliver('bob', delivered);
      expect(path.dirname(file)).toBe(path.join(dc.maildir('bob'), 'new'));
    });
    expect(after).toBe(1);
    expect(newest?.equals(delivered)).toBe(true);
  });

  it('logs the login of alice with rip=127.0.0.1 (and the IMAP ID)', async () => {
    const line = await dc.waitForLog(/imap-login: Info: Login: user=<alice>, method=PLAIN, rip=127\.0\.0\.1, lip=127\.0\.0\.1/);
    expect(line).toContain('TLS');
    await dc.waitForLog(/pop3-login: Info: Login: user=<alice>, method=PLAIN, rip=127\.0\.0\.1/);
    await dc.waitForLog(/ID sent: .*x-originating-ip=203\.0\.113\.7/);
  });

  it('sslRequired: plaintext auth is refused from an untrusted, non-local source address until STARTTLS', async () => {
    // Dovecot counts 127.0.0.1 -> 127.0.0.1 and login_trusted_networks clients as
    // "secured"; so connect from 127.0.0.2 and trust only an unrelated network.
    const strict = await startDovecot({ sslRequired: true, trustedNetworks: '192.0.2.0/24', extraConfig: 'login_greeting = strict-harness' });
    try {
      const out = await py(
        `
        class FromOther(imaplib.IMAP4):
            def _create_socket(self, timeout):
                return socket.create_connection(('127.0.0.1', self.port), timeout, source_address=('127.0.0.2', 0))
        M = FromOther('127.0.0.1', INPUT['port'])
        greeting = M.welcome.decode()
        caps = list(M.capabilities)
        try:
            M.login('alice', 'alice-upstream-pw')
            plain = 'accepted'
        except imaplib.IMAP4.error as e:
            plain = str(e)
        M.starttls(ssl_context=ctx())
        typ, _ = M.login('alice', 'alice-upstream-pw')
        M.logout()
        emit({'greeting': greeting, 'caps': caps, 'plain': plain, 'afterTls': typ})
        `,
        { ca: strict.caCert, port: strict.imapPort },
      );
      expect(out.greeting).toContain('strict-harness'); // extraConfig is applied
      expect(out.caps).toContain('LOGINDISABLED');
      expect(out.plain).toMatch(/PRIVACYREQUIRED|Plaintext authentication disallowed/);
      expect(out.afterTls).toBe('OK');
    } finally {
      await strict.stop();
    }
  });

  it('several instances run side by side; stop() leaves no process and no folder behind', async () => {
    const t0 = Date.now();
    const [a, b] = await Promise.all([startDovecot({ users: [{ name: 'dave', password: 'dave-pw' }] }), startDovecot()]);
    startMs.push(Date.now() - t0);
    try {
      expect(a.dir).not.toBe(b.dir);
      const portsA = [a.imapPort, a.imapsPort, a.pop3Port, a.pop3sPort];
      const portsB = [b.imapPort, b.imapsPort, b.pop3Port, b.pop3sPort];
      expect(portsA.filter((p) => portsB.includes(p) || p === dc.imapPort || p === dc.imapsPort)).toEqual([]);
      // Each instance trusts its own CA and knows its own users.
      const out = await py(
        `
        res = []
        for inst in INPUT['instances']:
            INPUT['ca'] = inst['ca']
            M = IMAPS('localhost', inst['port'], ssl_context=ctx())
            M.login(inst['user'], inst['password'])
            M.logout()
            res.append(imap_login_fails(inst['port'], 'alice', 'alice-upstream-pw'))
        emit({'aliceRejected': res})
        `,
        {
          instances: [
            { ca: a.caCert, port: a.imapsPort, user: 'dave', password: 'dave-pw' },
            { ca: b.caCert, port: b.imapsPort, user: 'bob', password: 'bob-upstream-pw' },
          ],
        },
      );
      expect(out.aliceRejected).toEqual([true, false]);

      const tag = path.basename(a.dir);
      expect((await processesMatching(tag)).length).toBeGreaterThan(1); // master + children
      const ts = Date.now();
      await a.stop();
      const stopMs = Date.now() - ts;
      expect(await processesMatching(tag)).toEqual([]);
      expect(existsSync(a.dir)).toBe(false);
      expect(a.pid).toBeUndefined();
      expect(stopMs).toBeLessThan(2_000);
      await a.stop(); // idempotent
      expect(await a.logText()).toMatch(/Login: user=<dave>/); // log survives stop()

      // The other instance is unaffected.
      const again = await py(
        `
        M = IMAPS('localhost', INPUT['port'], ssl_context=ctx())
        M.login('bob', 'bob-upstream-pw')
        M.logout()
        emit({'ok': True})
        `,
        { ca: b.caCert, port: b.imapsPort },
      );
      expect(again.ok).toBe(true);
    } finally {
      await Promise.all([a.stop(), b.stop()]);
    }
    expect(await processesMatching(path.basename(b.dir))).toEqual([]);
    expect(existsSync(b.dir)).toBe(false);
  });
});
