/**
 * `mailgate serve` refusing to start, as an operator meets it: the built
 * binary with a config file that is wrong in one way. Each mistake must give
 * one line on stderr that names the configuration key and says what to do,
 * a non-zero exit, no stack trace and no error log line, and must leave no
 * new, empty store behind (a later, corrected start would otherwise find an
 * empty store and a key it never meant to create).
 */
import { generateKeyPairSync } from 'node:crypto';
import { chmodSync, chownSync, existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { runCli, unprivilegedUser, writeCliConfig, type CliResult, type CliUser } from '../support/cli.js';
import { makeTestPki, type TestPki } from '../support/pki.js';
import { freePort } from '../support/ports.js';
import { makeTempDir, removeTempDir } from '../support/tmp.js';
import { isErrorLevel } from '../support/log-levels.js';

let dir: string;
let dataDir: string;
let pki: TestPki;
const cleanups: Array<() => void | Promise<void>> = [];

beforeEach(async () => {
  dir = await makeTempDir('serve-fail');
  dataDir = path.join(dir, 'data');
  pki = await makeTestPki(path.join(dir, 'pki'));
});
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  await removeTempDir(dir);
});

interface ServeConfig {
  cert?: string;
  key?: string;
  selfSigned?: boolean;
  /** Ports of the two listeners (0: any free port). */
  ports?: [number, number];
  extra?: string;
}

/** The CLI test config with the test PKI, an IMAP and a POP3 listener, and a dead upstream. */
async function writeServeConfig(options: ServeConfig = {}): Promise<string> {
  const deadPort = await freePort();
  const [imapPort, pop3Port] = options.ports ?? [0, 0];
  return writeCliConfig(
    dir,
    `[tls]
cert = "${options.cert ?? pki.serverCert}"
key = "${options.key ?? pki.serverKey}"
self_signed = ${options.selfSigned ?? false}

[[listen]]
protocol = "imap"
port = ${imapPort}
[[listen]]
protocol = "pop3"
port = ${pop3Port}

[timeouts]
upstream_connect_seconds = 1
${options.extra ?? ''}
[upstream.imap]
port = ${deadPort}
[upstream.pop3]
port = ${deadPort}
`,
  );
}

function serve(config: string, user?: CliUser | null): Promise<CliResult> {
  return runCli(['serve', '--config', config], { env: { MAILGATE_MASTER_PASSWORD: 'not-used-here' }, user: user ?? null });
}

/** One line on stderr, matching `message`; no stack trace anywhere; no error-level log line. */
function expectOneLineRefusal(result: CliResult, code: number, message: RegExp): void {
  expect(result.code, `${result.stderr}\n${result.stdout}`).toBe(code);
  expect(result.stderr).toMatch(/^mailgate: [^\n]+\n$/);
  expect(result.stderr).toMatch(message);
  expect(result.stderr).not.toMatch(/unexpected error/);
  const output = result.stdout + result.stderr;
  expect(output).not.toMatch(/"stack"|\n\s+at /);
  const logLines = result.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { level: string; msg: string });
  expect(logLines.filter((l) => isErrorLevel(l)).map((l) => l.msg)).toEqual([]);
}

const escape = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** A loopback port held by another server while the test runs. */
async function takenPort(): Promise<number> {
  const blocker = net.createServer();
  await new Promise<void>((resolve, reject) => {
    blocker.once('error', reject);
    blocker.listen({ host: '127.0.0.1', port: 0, exclusive: true }, resolve);
  });
  cleanups.push(() => new Promise<void>((resolve) => blocker.close(() => resolve())));
  return (blocker.address() as net.AddressInfo).port;
}

/** Gives the whole test directory to `user`, so the CLI running as that user can read the config and PKI and create its store. */
function handOver(user: CliUser | null): void {
  if (!user) return;
  const give = (file: string) => {
    chownSync(file, user.uid, user.gid);
    if (statSync(file).isDirectory()) for (const entry of readdirSync(file)) give(path.join(file, entry));
  };
  give(dir);
}

describe('mailgate serve refuses a bad start in one line, naming the key', () => {
  it('a listen port another server holds: listen[i] host:port, and what to do', async () => {
    // Catches: "unexpected error: listen EADDRINUSE" on stderr plus a "listener error" log line with a stack trace.
    const taken = await takenPort();
    const config = await writeServeConfig({ ports: [0, taken] });
    const result = await serve(config);
    expectOneLineRefusal(result, 1, new RegExp(`^mailgate: listen\\[1\\] 127\\.0\\.0\\.1:${taken}: the port is already in use .*choose another port\\n$`));
  });

  // A host that lets anyone bind low ports (ip_unprivileged_port_start = 0) cannot produce EACCES at all.
  it.skipIf(lowPortsOpenToAll())('a privileged port without the right to bind it: names CAP_NET_BIND_SERVICE', async () => {
    // Catches: "unexpected error: listen EACCES: permission denied" with nothing on what to do.
    const user = unprivilegedUser();
    const config = await writeServeConfig({ ports: [0, 1] });
    handOver(user);
    const result = await serve(config, user);
    expectOneLineRefusal(result, 1, /^mailgate: listen\[1\] 127\.0\.0\.1:1: permission denied: ports below 1024 need root or CAP_NET_BIND_SERVICE .*\n$/);
    // The unprivileged start had created a store before the bind failed; it is gone again.
    expect(existsSync(dataDir)).toBe(false);
  });

  it.each(['imap', 'pop3'])('a missing upstream.%s.ca file', async (protocol) => {
    // Catches: "unexpected error: ENOENT: no such file or directory, open ..." naming no key.
    const missing = path.join(dir, 'no-such-ca.pem');
    const config = await writeServeConfig();
    writeFileSync(config, readFileSync(config, 'utf8').replace(`[upstream.${protocol}]\n`, `[upstream.${protocol}]\nca = "${missing}"\n`));
    const result = await serve(config);
    expectOneLineRefusal(result, 2, new RegExp(`^mailgate: upstream\\.${protocol}\\.ca: cannot read ${escape(missing)}: ENOENT\\n$`));
    expect(existsSync(dataDir)).toBe(false);
  });

  it('a key file that exists but cannot be read: store.key_file, "cannot read", not "cannot create"', async () => {
    // Catches: "cannot create key file ...: EACCES" for a key file that is there, which sends the operator looking for the wrong problem.
    const user = unprivilegedUser();
    const config = await writeServeConfig();
    expect((await runCli(['--config', config, 'account', 'add', 'alice'])).code).toBe(0);
    const keyFile = path.join(dataDir, 'mailgate.key');
    const key = readFileSync(keyFile);
    handOver(user);
    // Root could enter the folder anyway; "nobody" (or the test user, after chmod) cannot.
    if (user) chownSync(dataDir, 0, 0);
    chmodSync(dataDir, 0o000);
    cleanups.push(() => chmodSync(dataDir, 0o700));
    const result = await serve(config, user);
    expectOneLineRefusal(result, 1, new RegExp(`^mailgate: store\\.key_file: cannot read ${escape(keyFile)}: EACCES \\(permission denied\\); .+\\n$`));
    // The store that was there is left exactly as it was.
    chmodSync(dataDir, 0o700);
    expect(readFileSync(keyFile).equals(key)).toBe(true);
    expect((await runCli(['--config', config, 'account', 'list', '--json'])).stdout).toContain('"alice"');
  });

  it.each([
    ['an RSA key for an EC certificate (OpenSSL accepts it, then fails every handshake)', () => rsaKeyFile()],
    ['the key of another certificate', async () => (await makeTestPki(path.join(dir, 'other-pki'))).serverKey],
  ])('a TLS key that does not belong to the certificate: %s', async (_label, otherKey) => {
    // Catches: a gateway that starts and then fails every TLS handshake ("no suitable signature algorithm").
    const key = await otherKey();
    const config = await writeServeConfig({ key });
    const result = await serve(config);
    expectOneLineRefusal(
      result,
      1,
      new RegExp(`^mailgate: tls\\.key ${escape(key)} is not the private key of the certificate in tls\\.cert ${escape(pki.serverCert)}; .+\\n$`),
    );
    expect(existsSync(dataDir)).toBe(false);
  });
});

describe('a start that fails leaves no new store behind', () => {
  it('a missing certificate with tls.self_signed = false: no data folder, database or key is created', async () => {
    // Catches: the store (folder, database, key) created before the certificate was looked at.
    const config = await writeServeConfig({ cert: path.join(dir, 'missing.crt'), key: path.join(dir, 'missing.key') });
    const result = await serve(config);
    expectOneLineRefusal(result, 1, /tls\.self_signed is false/);
    expect(existsSync(dataDir)).toBe(false);
  });

  it('an unreadable upstream.login.master_password_file: nothing is created', async () => {
    // Catches: the store created before the master password file was read.
    const config = await writeServeConfig({ extra: `[upstream.login]\nmaster_password_file = "${path.join(dir, 'no-such-file')}"\n` });
    const result = await serve(config);
    expectOneLineRefusal(result, 2, /^mailgate: upstream\.login\.master_password_file: cannot read .*: ENOENT\n$/);
    expect(existsSync(dataDir)).toBe(false);
  });

  it('a listener that cannot bind: the database, its -wal/-shm, the key and the folder it created are removed', async () => {
    // Catches: a failed first start leaving data/mailgate.db and data/mailgate.key behind.
    const taken = await takenPort();
    const config = await writeServeConfig({ ports: [taken, 0] });
    expect(existsSync(dataDir)).toBe(false);
    const result = await serve(config);
    expectOneLineRefusal(result, 1, /^mailgate: listen\[0\] /);
    expect(existsSync(dataDir)).toBe(false);
    expect(readdirSync(dir).sort()).toEqual(['mailgate.toml', 'pki']);
  });
});

function lowPortsOpenToAll(): boolean {
  try {
    return Number(readFileSync('/proc/sys/net/ipv4/ip_unprivileged_port_start', 'utf8')) <= 1;
  } catch {
    return false;
  }
}

function rsaKeyFile(): string {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048, privateKeyEncoding: { type: 'pkcs8', format: 'pem' }, publicKeyEncoding: { type: 'spki', format: 'pem' } });
  const file = path.join(dir, 'rsa.key');
  writeFileSync(file, privateKey, { mode: 0o600 });
  return file;
}
