/**
 * Real POP3 clients reading and deleting mail through mailgate, with an app
 * password, while their accounts have 2-step verification on (the issue's
 * "done when"): Python's poplib over implicit TLS and over STLS, curl
 * (pop3s:// and pop3:// with --ssl-reqd), fetchmail (implicit TLS, fetch and
 * delete; STLS, keep), and openssl s_client -starttls pop3. Dovecot is real;
 * every message is compared byte for byte with the Maildir file it came from.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { DEFAULT_DOVECOT_USERS, startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { runFetchmail, stripFetchmailTrace } from '../support/fetchmail.js';
import { startGateway, type GatewayHandle } from '../support/gateway.js';
import { mailClientScript, pythonJson } from '../support/python.js';
import { curlFetch } from '../support/real-clients.js';
import { enableTotp } from '../support/store.js';

const USERS = [...DEFAULT_DOVECOT_USERS, { name: 'dave', password: 'dave-upstream-pw' }, { name: 'erin', password: 'erin-upstream-pw' }];
const upstreamPassword = (name: string) => USERS.find((u) => u.name === name)!.password;

function crlf(lines: string[]): Buffer {
  return Buffer.from(lines.join('\r\n'), 'utf8');
}

/** Messages that exercise the transparency of the relay: dot-stuffing, 8-bit text, long lines, a lone ".". */
function messages(user: string): Buffer[] {
  return [
    crlf([
      'Return-Path: <sender@example.org>',
      'From: Sender <sender@example.org>',
      `To: ${user}@example.org`,
      `Subject: first message for ${user}`,
      'Date: Mon, 01 Jan 2024 10:00:00 +0000',
      `Message-ID: <one-${user}@example.org>`,
      'MIME-Version: 1.0',
      'Content-Type: text/plain; charset=utf-8',
      'Content-Transfer-Encoding: 8bit',
      '',
      `Hello ${user},`,
      '.a line starting with a dot',
      '..and one with two',
      '.',
      'Grüße – 8-bit UTF-8 text',
      'x'.repeat(990),
      '',
    ]),
    crlf([`From: other@example.org`, `To: ${user}@example.org`, `Subject: second (${user})`, '', 'second body', '']),
    crlf([`From: third@example.org`, `To: ${user}@example.org`, `Subject: third (${user})`, '', '', 'after an empty line', '.', '']),
  ];
}

/** Maildir base names (without the ":2,flags" info) of the messages still in the user's INBOX. */
async function mailboxNames(dc: DovecotHandle, user: string): Promise<string[]> {
  const names: string[] = [];
  for (const sub of ['cur', 'new']) {
    for (const file of await readdir(path.join(dc.maildir(user), sub))) names.push(file.split(':')[0]!);
  }
  return names.sort();
}

/** Python helper of this file's client scripts, after the shared mail-client ones. */
const PY_CONNECT = `
  def connect(port, tls):
      if tls == 'implicit':
          p = POP3S('localhost', port, context=ctx())
          before = None
      else:
          p = POP3('localhost', port)
          before = sorted(p.capa().keys())
          p.stls(context=ctx())
      return p, before
`;

const py = (body: string, input: Record<string, unknown>) => pythonJson(mailClientScript(PY_CONNECT, body), input, 20_000);

const unb64 = (v: unknown) => Buffer.from(String(v), 'base64');

describe('real POP3 clients read and delete mail through mailgate with an app password, 2-step verification on', () => {
  let dc: DovecotHandle;
  let gw: GatewayHandle;
  const appPw: Record<string, { id: number; password: string }> = {};
  const seeded: Record<string, Array<{ raw: Buffer; file: string }>> = {};
  const totpSecrets: string[] = [];

  beforeAll(async () => {
    dc = await startDovecot({ users: USERS });
    gw = await startGateway(dc);
    for (const { name } of USERS) {
      gw.store.accounts.add(name);
      totpSecrets.push(enableTotp(gw.store, name));
      expect(gw.store.accounts.find(name)?.totpState).toBe('enabled');
      const created = await gw.store.appPasswords.create(name, { name: `${name}'s mail client`, scopes: ['pop3'] });
      appPw[name] = { id: created.info.id, password: created.password };
      const list: Array<{ raw: Buffer; file: string }> = [];
      for (const [i, raw] of messages(name).entries()) {
        list.push({ raw, file: await dc.seedMessage(name, raw, { folder: i === 1 ? 'new' : 'cur' }) });
      }
      seeded[name] = list;
    }
  });

  afterAll(async () => {
    await gw?.stop();
    await dc?.stop();
  });

  for (const [user, tls] of [
    ['alice', 'implicit'],
    ['bob', 'stls'],
  ] as const) {
    it(`Python poplib over ${tls === 'implicit' ? 'implicit TLS (POP3_SSL)' : 'STLS (POP3 + stls())'}: STAT, LIST, UIDL, RETR byte-identical, DELE, QUIT; the message is gone`, async () => {
      const msgs = seeded[user]!;
      const out = await py(
        `
        # Dovecot directly, with the upstream password: the reference UIDLs.
        d = POP3S('localhost', INPUT['dovecotPort'], context=ctx())
        d.user(INPUT['user'])
        d.pass_(INPUT['upstreamPassword'])
        direct_uidl = [u.decode() for u in d.uidl()[1]]
        d.quit()

        # Through mailgate, with the app password exactly as shown to the user (with spaces).
        p, caps_before = connect(INPUT['port'], INPUT['tls'])
        welcome = p.getwelcome().decode()
        caps = sorted(p.capa().keys())
        tls = p.sock.version()
        user_resp = p.user(INPUT['user']).decode()
        pass_resp = p.pass_(INPUT['password']).decode()
        count, size = p.stat()
        listing = [l.decode() for l in p.list()[1]]
        uidl = [u.decode() for u in p.uidl()[1]]
        bodies = [b64(retr_bytes(p, i)) for i in range(1, count + 1)]
        dele = p.dele(INPUT['delete']).decode()
        quit = p.quit().decode()

        # A new session: the deleted message is gone.
        q, _ = connect(INPUT['port'], INPUT['tls'])
        q.user(INPUT['user'])
        q.pass_(INPUT['password'])
        count2, size2 = q.stat()
        uidl2 = [u.decode() for u in q.uidl()[1]]
        q.quit()
        emit({'welcome': welcome, 'capsBefore': caps_before, 'caps': caps, 'tls': tls, 'user': user_resp, 'pass': pass_resp,
              'count': count, 'size': size, 'list': listing, 'uidl': uidl, 'directUidl': direct_uidl, 'bodies': bodies,
              'dele': dele, 'quit': quit, 'count2': count2, 'size2': size2, 'uidl2': uidl2})
        `,
        {
          ca: gw.caCert,
          port: tls === 'implicit' ? gw.ports.pop3s : gw.ports.pop3,
          tls,
          dovecotPort: dc.pop3sPort,
          user,
          password: appPw[user]!.password,
          upstreamPassword: upstreamPassword(user),
          delete: 1,
        },
      );
      expect(appPw[user]!.password).toContain(' ');
      expect(out.welcome).toMatch(/^\+OK /);
      expect(out.welcome).not.toMatch(/<[^<>]*@[^<>]*>/);
      if (tls === 'stls') expect(out.capsBefore).toEqual(expect.arrayContaining(['STLS']));
      expect(out.caps).toEqual(expect.arrayContaining(['TOP', 'UIDL', 'USER', 'SASL']));
      expect(out.caps).not.toContain('STLS');
      expect(out.tls).toMatch(/^TLSv1\.[23]$/);
      expect(out.user).toBe('+OK Send PASS');
      expect(out.pass).toBe('+OK Logged in.');
      expect(out.count).toBe(msgs.length);
      expect(out.size).toBe(msgs.reduce((n, m) => n + m.raw.length, 0));
      expect(out.list).toEqual(msgs.map((m, i) => `${i + 1} ${m.raw.length}`));
      // mailgate is transparent after login: the UIDLs are Dovecot's own.
      expect(out.uidl).toEqual(out.directUidl);
      expect((out.uidl as string[]).length).toBe(msgs.length);
      const bodies = (out.bodies as string[]).map(unb64);
      expect(bodies).toHaveLength(msgs.length);
      bodies.forEach((body, i) => expect(body.equals(msgs[i]!.raw), `message ${i + 1}`).toBe(true));
      expect(out.dele).toMatch(/^\+OK/);
      expect(out.quit).toMatch(/^\+OK/);
      expect(out.count2).toBe(msgs.length - 1);
      expect(out.size2).toBe(msgs.slice(1).reduce((n, m) => n + m.raw.length, 0));
      expect(out.uidl2).toEqual((out.uidl as string[]).slice(1).map((u, i) => u.replace(/^\d+ /, `${i + 1} `)));
      // And on disk: the file is gone, the others are still there.
      expect(existsSync(msgs[0]!.file)).toBe(false);
      const base = (f: string) => path.basename(f).split(':')[0]!;
      expect(await mailboxNames(dc, user)).toEqual(msgs.slice(1).map((m) => base(m.file)).sort());
      expect(gw.store.appPasswords.list(user).find((p) => p.id === appPw[user]!.id)?.lastUsed?.protocol).toBe('pop3');
    });
  }

  it('curl pop3s://localhost:PORT/1 (and pop3:// with --ssl-reqd) retrieves message 1 byte for byte', async () => {
    const user = 'carol';
    const login = { ca: gw.caCert, user, password: appPw[user]!.password, home: gw.dir };
    const pop3s = await curlFetch(`pop3s://localhost:${gw.ports.pop3s}/1`, login);
    expect(pop3s.equals(seeded[user]![0]!.raw)).toBe(true);
    const stls = await curlFetch(`pop3://localhost:${gw.ports.pop3}/3`, { ...login, sslReqd: true });
    expect(stls.equals(seeded[user]![2]!.raw)).toBe(true);
    // curl only read: nothing was deleted.
    expect(await mailboxNames(dc, user)).toHaveLength(3);
  });

  it('fetchmail over implicit TLS fetches every message with the app password and deletes them (the issue\'s "done when")', async () => {
    const user = 'dave';
    const res = await runFetchmail({ port: gw.ports.pop3s, user, password: appPw[user]!.password, ca: gw.caCert, tls: 'implicit' });
    expect(res.code, `${res.stdout}\n${res.stderr}`).toBe(0);
    expect(res.stdout).toContain('POP3< +OK Logged in.');
    expect(res.stdout).toMatch(/POP3< \+OK Logging out, messages deleted\./);
    expect(res.messages).toHaveLength(3);
    res.messages.forEach((m, i) => expect(stripFetchmailTrace(m).equals(seeded[user]![i]!.raw), `message ${i + 1}`).toBe(true));
    expect(await mailboxNames(dc, user)).toEqual([]);
    for (const { file } of seeded[user]!) expect(existsSync(file)).toBe(false);
    // fetchmail itself never shows the password in its trace.
    expect(`${res.stdout}${res.stderr}`).not.toContain(appPw[user]!.password);
  });

  it('fetchmail over STLS with keep fetches every message and leaves them on the server', async () => {
    const user = 'erin';
    const res = await runFetchmail({ port: gw.ports.pop3, user, password: appPw[user]!.password, ca: gw.caCert, tls: 'stls', keep: true });
    expect(res.code, `${res.stdout}\n${res.stderr}`).toBe(0);
    expect(res.stdout).toContain('POP3> STLS');
    expect(res.stdout).toContain('upgrade to TLS succeeded');
    expect(res.messages).toHaveLength(3);
    res.messages.forEach((m, i) => expect(stripFetchmailTrace(m).equals(seeded[user]![i]!.raw), `message ${i + 1}`).toBe(true));
    expect(await mailboxNames(dc, user)).toHaveLength(3);
  });

  it('openssl s_client -starttls pop3 verifies the certificate; after STLS, CAPA lists USER and SASL, not STLS', async () => {
    const out = await new Promise<{ stdout: string; stderr: string; code: number }>((resolve) => {
      const child = execFile(
        'openssl',
        ['s_client', '-connect', `127.0.0.1:${gw.ports.pop3}`, '-starttls', 'pop3', '-CAfile', gw.caCert, '-verify_return_error',
          '-verify_hostname', 'localhost', '-servername', 'localhost', '-crlf', '-ign_eof'],
        { timeout: 10_000 },
        (err, stdout, stderr) => resolve({ stdout: String(stdout), stderr: String(stderr), code: err ? Number((err as { code?: unknown }).code ?? 1) : 0 }),
      );
      child.stdin!.end('CAPA\nQUIT\n');
    });
    expect(out.code, out.stderr).toBe(0);
    expect(out.stdout).toContain('Verify return code: 0 (ok)');
    const afterTls = out.stdout.slice(out.stdout.indexOf('+OK Capability list follows'));
    const caps = afterTls.split(/\r?\n/).slice(1, afterTls.split(/\r?\n/).indexOf('.'));
    expect(caps).toEqual(expect.arrayContaining(['USER', 'SASL PLAIN LOGIN', 'TOP', 'UIDL', 'RESP-CODES', 'AUTH-RESP-CODE']));
    expect(caps).not.toContain('STLS');
    expect(out.stdout).toMatch(/\+OK Bye/);
  });

  it('after all these clients, the log holds none of their secrets and no internal error', () => {
    const text = gw.logText();
    const secrets = [
      ...Object.values(appPw).flatMap(({ password }) => [password, password.replace(/ /g, '')]),
      // curl sends AUTH PLAIN with exactly this payload
      ...Object.entries(appPw).map(([user, { password }]) => Buffer.from(`\0${user}\0${password}`).toString('base64')),
      ...USERS.map((u) => u.password),
      dc.master.password,
      ...totpSecrets,
    ];
    expect(secrets.filter((s) => text.includes(s))).toEqual([]);
    expect(gw.logs().filter((l) => l.msg === 'internal error in session')).toEqual([]);
    // One session closed line per session, all for POP3.
    const closed = gw.logs().filter((l) => l.msg === 'session closed');
    expect(closed.length).toBeGreaterThanOrEqual(8);
    expect(closed.every((l) => l.protocol === 'pop3')).toBe(true);
  });
});
