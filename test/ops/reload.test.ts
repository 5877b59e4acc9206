/**
 * Issue 13: SIGHUP reloads a running `mailgate serve`, it never ends it.
 *
 * A real gateway process (the built binary) in front of a real Dovecot, a
 * real SIGHUP, real TLS clients (node:tls and `openssl s_client`):
 *  - a renewed certificate is served to new connections, while an IMAP
 *    session in IDLE from before carries on (a new message arrives as
 *    EXISTS, DONE and NOOP work);
 *  - a configuration that no longer validates, or a bad certificate, is
 *    refused in one line and the old one stays in force;
 *  - a live key (the help URL) applies to the next login, a changed listener
 *    is named as needing a restart;
 *  - SNI picks the certificate by name, on the mail listeners and the page;
 *  - a certificate close to its end is warned about, and the metric counts
 *    its seconds.
 */
import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { copyFileSync, existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { runCli, writeCliConfig } from '../support/cli.js';
import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { ImapClient, imapQuote, taggedLine } from '../support/imap-client.js';
import { issueServerCert } from '../support/pki.js';
import { dovecotServeToml, startServe, type LogLine, type ServeProcess } from '../support/serve.js';
import { sleep, waitUntil } from '../support/timing.js';
import { makeTempDir, removeTempDir } from '../support/tmp.js';
import { hasLevel } from '../support/log-levels.js';

const execFileP = promisify(execFile);

let dc: DovecotHandle;
let dir = '';
let appPassword = '';
let gateway: ServeProcess | null = null;
/** The certificate files the running gateway's configuration names (copies, so the tests can replace them). */
let certFile = '';
let keyFile = '';
let configFile = '';

beforeAll(async () => {
  dc = await startDovecot();
  dir = await makeTempDir('reload');
  certFile = path.join(dir, 'gateway.crt');
  keyFile = path.join(dir, 'gateway.key');
  configFile = writeCliConfig(dir, toml());
  await cli(['account', 'add', 'alice']);
  appPassword = (JSON.parse(await cli(['app-password', 'create', 'alice', '--name', 'reload', '--json'])) as { password: string }).password;
});

afterEach(async () => {
  await gateway?.stop('SIGKILL');
  gateway = null;
});

afterAll(async () => {
  await dc?.stop();
  if (dir) await removeTempDir(dir);
});

async function cli(args: string[]): Promise<string> {
  const result = await runCli(['--config', configFile, ...args]);
  expect(result.code, `mailgate ${args.join(' ')}: ${result.stderr}`).toBe(0);
  return result.stdout;
}

/** The gateway's TOML: Dovecot's, with the certificate files of this test and `extra` sections. */
function toml(extra = '', tlsSection = `[tls]\ncert = ${JSON.stringify(certFile)}\nkey = ${JSON.stringify(keyFile)}\nself_signed = false\n`): string {
  const base = dovecotServeToml(dc, `\n[limits]\nfailure_delay_base_ms = 0\nfailure_delay_max_ms = 0\n${extra}`);
  // dovecotServeToml starts with its own [tls] section (the Dovecot PKI's pair): this test's replaces it.
  return base.replace(/^\[tls\]\n(?:[^[\n].*\n)*/, tlsSection);
}

function writeConfig(extra = '', tlsSection?: string): void {
  writeCliConfig(dir, toml(extra, tlsSection));
}

/** Puts a certificate in place the way certbot's deploy does: a new file renamed over the old, key first. */
function install(cert: string, key: string): void {
  copyFileSync(key, `${keyFile}.new`);
  renameSync(`${keyFile}.new`, keyFile);
  copyFileSync(cert, `${certFile}.new`);
  renameSync(`${certFile}.new`, certFile);
}

function serialOf(file: string): string {
  return new X509Certificate(readFileSync(file)).serialNumber;
}

/** Serials compare without leading zeros (openssl and node disagree on them). */
const bare = (serial: string) => serial.toUpperCase().replace(/^0+/, '');

/** The serial of the certificate a TLS client gets on `port`, asking for `servername` (none: no SNI). */
function servedSerial(port: number, servername?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port, ...(servername ? { servername } : {}), rejectUnauthorized: false }, () => {
      resolve(bare(socket.getPeerCertificate().serialNumber));
      socket.destroy();
    });
    socket.on('error', reject);
    socket.setTimeout(10_000, () => reject(new Error('no TLS handshake')));
  });
}

/** The same, asked by a real client: `openssl s_client`, verifying against the test CA. */
async function opensslSerial(port: number): Promise<string> {
  const { stdout } = await execFileP(
    'sh',
    ['-c', `openssl s_client -connect 127.0.0.1:${port} -servername localhost -CAfile "$CA" -verify_return_error </dev/null 2>/dev/null | openssl x509 -noout -serial`],
    { env: { ...process.env, CA: dc.caCert }, timeout: 15_000 },
  );
  return bare(/^serial=([0-9A-Fa-f]+)$/m.exec(stdout)?.[1] ?? `no serial in ${JSON.stringify(stdout)}`);
}

async function start(): Promise<ServeProcess> {
  gateway = await startServe(configFile, { MAILGATE_MASTER_PASSWORD: dc.master.password });
  return gateway;
}

/** Sends a real SIGHUP and waits for the log line that ends the reload (reloaded or refused). */
async function sighup(gw: ServeProcess): Promise<LogLine> {
  const before = gw.logs().length;
  gw.child.kill('SIGHUP');
  return waitUntil(
    () => gw.logs().slice(before).find((l) => l.msg === 'configuration reloaded' || l.msg === 'reload refused: the running configuration stays in force'),
    'the end of the reload',
    15_000,
  );
}

const isWarn = (line: LogLine) => hasLevel(line, 'warn');

async function login(port: number, password = appPassword): Promise<{ client: ImapClient; answer: string }> {
  const { client } = await ImapClient.open({ port, tls: true, ca: dc.caCert, timeoutMs: 10_000 });
  return { client, answer: await client.command('L1', `LOGIN alice ${imapQuote(password)}`) };
}

describe('SIGHUP', () => {
  it('serves a replaced certificate to new connections; an IMAP session in IDLE from before keeps working', async () => {
    copyFileSync(dc.pki.serverCert, certFile);
    copyFileSync(dc.pki.serverKey, keyFile);
    writeConfig('[web]\nlisten = "127.0.0.1:0"\n');
    const gw = await start();
    const port = gw.port('imap');
    const page = (await gw.waitForLog('self-service page listening')).port as number;
    const oldSerial = bare(serialOf(dc.pki.serverCert));
    expect(await servedSerial(port, 'localhost')).toBe(oldSerial);
    expect(await servedSerial(page)).toBe(oldSerial);

    // A mail program idling on its inbox.
    const { client: idler, answer } = await login(port);
    expect(taggedLine(answer, 'L1')).toMatch(/^L1 OK/);
    expect(taggedLine(await idler.command('S1', 'SELECT INBOX'), 'S1')).toMatch(/^S1 OK/);
    idler.send('I1 IDLE\r\n');
    expect(await idler.readLine()).toMatch(/^\+ /);

    const renewed = await issueServerCert(dc.pki, dir, 'renewed');
    expect(bare(renewed.serial)).not.toBe(oldSerial);
    install(renewed.cert, renewed.key);
    const done = await sighup(gw);
    expect(done.msg).toBe('configuration reloaded');
    expect(done.certificatesChanged).toEqual([certFile]);
    expect(gw.child.exitCode).toBeNull();

    // New handshakes get the new pair: node's client, and openssl's.
    expect(await servedSerial(port, 'localhost')).toBe(bare(renewed.serial));
    expect(await servedSerial(port)).toBe(bare(renewed.serial));
    expect(await opensslSerial(port)).toBe(bare(renewed.serial));
    // The self-service page too, with and without SNI.
    expect(await servedSerial(page)).toBe(bare(renewed.serial));
    expect(await servedSerial(page, 'localhost')).toBe(bare(renewed.serial));
    // The 'TLS certificate' line says which certificate is served now.
    expect(gw.logs().filter((l) => l.msg === 'TLS certificate').at(-1)).toMatchObject({ cert: certFile, serial: renewed.serial });

    // The session from before is alive and relaying: a delivery shows up in its IDLE.
    await dc.deliver('alice', Buffer.from('From: a@example.com\r\nTo: alice@example.com\r\nSubject: after reload\r\n\r\nhello\r\n'));
    expect(await idler.readUntil(/\* \d+ EXISTS\r\n/, 10_000)).toMatch(/\* \d+ EXISTS/);
    idler.send('DONE\r\n');
    expect(taggedLine(await idler.readUntilTagged('I1'), 'I1')).toMatch(/^I1 OK/);
    expect(taggedLine(await idler.command('N1', 'NOOP'), 'N1')).toMatch(/^N1 OK/);
    const fetched = await idler.command('F1', 'FETCH * (BODY.PEEK[HEADER.FIELDS (SUBJECT)])');
    expect(fetched).toContain('Subject: after reload');
    // It still speaks over the certificate it shook hands with.
    expect(bare((idler.socket as tls.TLSSocket).getPeerCertificate().serialNumber)).toBe(oldSerial);
    idler.destroy();
  });

  it('refuses a configuration that no longer validates, or a bad certificate, in one line; the old one stays in force', async () => {
    copyFileSync(dc.pki.serverCert, certFile);
    copyFileSync(dc.pki.serverKey, keyFile);
    writeConfig();
    const gw = await start();
    const port = gw.port('imap');
    const serial = bare(serialOf(dc.pki.serverCert));
    const refusals = () => gw.logs().filter((l) => l.msg === 'reload refused: the running configuration stays in force');

    // A typo in a key.
    writeConfig('[policy]\nhelp_ulr = "https://help.example.test/"\n');
    let line = await sighup(gw);
    expect(line.msg).toBe('reload refused: the running configuration stays in force');
    expect(line.reason).toMatch(/policy\.help_ulr: unknown key/);
    expect(hasLevel(line, 'error')).toBe(true);
    expect(refusals()).toHaveLength(1);

    // A key that is not the certificate's.
    const other = await issueServerCert(dc.pki, dir, 'other');
    writeConfig('', `[tls]\ncert = ${JSON.stringify(certFile)}\nkey = ${JSON.stringify(other.key)}\nself_signed = false\n`);
    line = await sighup(gw);
    expect(line.reason).toMatch(/^tls\.key .* is not the private key of the certificate in tls\.cert /);

    // A leaf without the chain to its CA (cert.pem instead of fullchain.pem).
    const leafOnly = path.join(dir, 'leaf-only.crt');
    writeFileSync(leafOnly, /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----\n/.exec(readFileSync(other.cert, 'utf8'))![0]);
    writeConfig('', `[tls]\ncert = ${JSON.stringify(leafOnly)}\nkey = ${JSON.stringify(other.key)}\nself_signed = false\n`);
    line = await sighup(gw);
    expect(line.reason).toMatch(/^tls\.cert .*leaf-only\.crt: the certificate chain is incomplete: .*fullchain\.pem/);

    // A missing certificate file.
    writeConfig('', `[tls]\ncert = ${JSON.stringify(path.join(dir, 'missing.crt'))}\nkey = ${JSON.stringify(other.key)}\nself_signed = false\n`);
    line = await sighup(gw);
    expect(line.reason).toMatch(/missing\.crt.*(missing|ENOENT)/);

    expect(refusals()).toHaveLength(4);
    expect(gw.logs().filter((l) => l.msg === 'configuration reloaded')).toEqual([]);
    // Alive, the old certificate served, logins working.
    expect(gw.child.exitCode).toBeNull();
    expect(await servedSerial(port, 'localhost')).toBe(serial);
    const { client, answer } = await login(port);
    expect(taggedLine(answer, 'L1')).toMatch(/^L1 OK/);
    client.destroy();
  });

  it('applies a live key to the next login (sessions already open keep theirs), and names a changed listener as needing a restart', async () => {
    copyFileSync(dc.pki.serverCert, certFile);
    copyFileSync(dc.pki.serverKey, keyFile);
    writeConfig('[policy]\nhelp_url = "https://old-help.example.test/"\n');
    const gw = await start();
    const port = gw.port('imap');
    const { client: before } = await ImapClient.open({ port, tls: true, ca: dc.caCert, timeoutMs: 10_000 });

    // The help URL changes, and so does the listener's port (which needs a restart).
    writeCliConfig(
      dir,
      toml('[policy]\nhelp_url = "https://new-help.example.test/"\n[log]\nlevel = "warn"\n').replace(/(\[\[listen\]\]\nprotocol = "imap"\nhost = "127.0.0.1"\nport = )0/, '$11'),
    );
    const done = await sighup(gw);
    expect(done.msg).toBe('configuration reloaded');
    expect(done.applied).toEqual(expect.arrayContaining(['policy.help_url', 'log.level']));
    expect(done.applied).not.toContain('listen');
    const restart = gw.logs().find((l) => l.msg === 'configuration changes that need a restart: the running values stay until then');
    expect(restart).toBeDefined();
    expect(isWarn(restart!)).toBe(true);
    expect(restart!.keys).toEqual(['listen']);

    // The next login gets the new help URL; the session opened before keeps the old one.
    const { client: after, answer } = await login(port, 'not-the-password');
    expect(answer).toContain('https://new-help.example.test/');
    const old = await before.command('L1', `LOGIN alice ${imapQuote('not-the-password')}`);
    expect(old).toContain('https://old-help.example.test/');
    // The listener is where it was (port 1 would need root, and a restart).
    expect(gw.logs().filter((l) => l.msg === 'listening')).toHaveLength(1);
    after.destroy();
    before.destroy();
    // The log level took effect: at "warn", the sessions just closed write no `session closed` line (info).
    const closedLines = () => gw.logs().filter((l) => l.msg === 'session closed').length;
    await sleep(500);
    expect(closedLines()).toBe(0);
    // ...and a reload back to "info" brings them back.
    writeConfig('[policy]\nhelp_url = "https://new-help.example.test/"\n');
    expect((await sighup(gw)).applied).toEqual(['log.level']);
    (await login(port)).client.destroy();
    await waitUntil(() => closedLines() === 1 || null, 'a session closed line');
  });

  it('keeps the process alive through SIGHUPs in quick succession', async () => {
    copyFileSync(dc.pki.serverCert, certFile);
    copyFileSync(dc.pki.serverKey, keyFile);
    writeConfig();
    const gw = await start();
    // Signals of one kind that arrive together may be delivered once (POSIX): at least one reload, each whole.
    for (let i = 0; i < 5; i++) gw.child.kill('SIGHUP');
    await waitUntil(() => gw.logs().some((l) => l.msg === 'configuration reloaded') || null, 'a reload', 15_000);
    await sleep(500);
    expect(gw.child.exitCode).toBeNull();
    expect(gw.logs().filter((l) => l.msg === 'reload refused: the running configuration stays in force')).toEqual([]);
    const { client, answer } = await login(gw.port('imap'));
    expect(taggedLine(answer, 'L1')).toMatch(/^L1 OK/);
    client.destroy();
  });
});

describe('SNI', () => {
  it('serves each name its certificate, and the first one without SNI or for an unknown name, on the mail listener and the page', async () => {
    const mail = await issueServerCert(dc.pki, dir, 'sni-mail', { names: ['mail.example.test', 'localhost'] });
    const org = await issueServerCert(dc.pki, dir, 'sni-org', { names: ['*.example.org'] });
    writeConfig(
      '[web]\nlisten = "127.0.0.1:0"\n',
      `[tls]\nself_signed = false\n[[tls.certificates]]\ncert = ${JSON.stringify(mail.cert)}\nkey = ${JSON.stringify(mail.key)}\nnames = ["mail.example.test"]\n` +
        `[[tls.certificates]]\ncert = ${JSON.stringify(org.cert)}\nkey = ${JSON.stringify(org.key)}\nnames = ["*.example.org"]\n`,
    );
    const gw = await start();
    const page = (await gw.waitForLog('self-service page listening')).port as number;
    for (const port of [gw.port('imap'), page]) {
      expect(await servedSerial(port, 'mail.example.test')).toBe(bare(mail.serial));
      expect(await servedSerial(port, 'imap.example.org')).toBe(bare(org.serial));
      expect(await servedSerial(port, 'IMAP.Example.ORG')).toBe(bare(org.serial));
      expect(await servedSerial(port)).toBe(bare(mail.serial));
      expect(await servedSerial(port, 'unknown.example.net')).toBe(bare(mail.serial));
      // A wildcard covers one label only.
      expect(await servedSerial(port, 'a.b.example.org')).toBe(bare(mail.serial));
    }
    // A mail program verifying the name it asked for gets in.
    const socket = tls.connect({ host: '127.0.0.1', port: gw.port('imap'), servername: 'imap.example.org', ca: readFileSync(dc.caCert) });
    await new Promise<void>((resolve, reject) => socket.once('secureConnect', () => resolve()).once('error', reject));
    expect(socket.authorized).toBe(true);
    socket.destroy();

    // A reload re-reads every one of them: the page gets the new ones too.
    const org2 = await issueServerCert(dc.pki, dir, 'sni-org2', { names: ['*.example.org'] });
    copyFileSync(org2.cert, org.cert);
    copyFileSync(org2.key, org.key);
    expect((await sighup(gw)).certificatesChanged).toEqual([org.cert]);
    expect(await servedSerial(gw.port('imap'), 'imap.example.org')).toBe(bare(org2.serial));
    expect(await servedSerial(page, 'imap.example.org')).toBe(bare(org2.serial));
    expect(await servedSerial(page)).toBe(bare(mail.serial));
  });
});

describe('certificate checks at start', () => {
  it('refuses to start, in one line, with a chain it cannot complete; nothing is created', async () => {
    const other = await issueServerCert(dc.pki, dir, 'start-leaf');
    const leafOnly = path.join(dir, 'start-leaf-only.crt');
    writeFileSync(leafOnly, /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----\n/.exec(readFileSync(other.cert, 'utf8'))![0]);
    const fresh = await makeTempDir('reload-start');
    try {
      const file = writeCliConfig(fresh, toml('', `[tls]\ncert = ${JSON.stringify(leafOnly)}\nkey = ${JSON.stringify(other.key)}\nself_signed = false\n`));
      const result = await runCli(['--config', file, 'serve'], { env: { MAILGATE_MASTER_PASSWORD: dc.master.password } });
      expect(result.code).toBe(1);
      expect(result.stderr).toMatch(/^mailgate: tls\.cert .*start-leaf-only\.crt: the certificate chain is incomplete: [^\n]+\n$/);
      expect(existsSync(path.join(fresh, 'data'))).toBe(false);
    } finally {
      await removeTempDir(fresh);
    }
  });
});

describe('certificate expiry', () => {
  it('warns at start about a certificate that expires within 14 days, and the metric shows its seconds; a reload updates both', async () => {
    const short = await issueServerCert(dc.pki, dir, 'short', { days: 5 });
    install(short.cert, short.key);
    writeConfig('[metrics]\nlisten = "127.0.0.1:0"\n');
    const gw = await start();
    const warning = await gw.waitForLog('TLS certificate expires soon: renew it, then reload (SIGHUP)');
    expect(isWarn(warning)).toBe(true);
    expect(warning).toMatchObject({ cert: certFile, serial: short.serial });
    expect([4, 5]).toContain(warning.daysLeft);
    const metricsPort = (await gw.waitForLog('metrics listening')).port as number;
    const expiry = async () => {
      const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
      expect(text).toContain('# TYPE mailgate_tls_certificate_expiry_seconds gauge');
      const value = new RegExp(`^mailgate_tls_certificate_expiry_seconds\\{file="${certFile.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}"\\} (-?\\d+)$`, 'm').exec(text)?.[1];
      expect(value, text).toBeDefined();
      return Number(value);
    };
    const notAfter = Date.parse(new X509Certificate(readFileSync(short.cert)).validTo);
    expect(Math.abs((await expiry()) - (notAfter - Date.now()) / 1000)).toBeLessThan(60);
    expect(await expiry()).toBeLessThan(14 * 86_400);

    const renewed = await issueServerCert(dc.pki, dir, 'long', { days: 60 });
    install(renewed.cert, renewed.key);
    const warningsBefore = gw.logs().filter((l) => l.msg === 'TLS certificate expires soon: renew it, then reload (SIGHUP)').length;
    expect((await sighup(gw)).msg).toBe('configuration reloaded');
    expect(await expiry()).toBeGreaterThan(59 * 86_400);
    expect(gw.logs().filter((l) => l.msg === 'TLS certificate expires soon: renew it, then reload (SIGHUP)')).toHaveLength(warningsBefore);
  });
});
