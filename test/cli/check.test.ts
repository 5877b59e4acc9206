/**
 * `mailgate check`, the built binary against a real Dovecot: every line ✓
 * and exit 0 when all is well; one ✗ line with advice (and exit 1) for a
 * wrong master password, a dead upstream port, a missing store (which it
 * does not create), a key that is not the certificate's, an incomplete chain,
 * a store file others may read; and the --json shape.
 */
import { chmodSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli, type CliResult } from '../support/cli.js';
import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { freePort } from '../support/ports.js';
import { makeTempDir, removeTempDir } from '../support/tmp.js';

let dc: DovecotHandle;
let dir: string;
let fullchain: string;
let leafOnly: string;
let passwordFile: string;

interface Setup {
  cert?: string;
  key?: string;
  store?: string;
  imapPort?: number;
  masterPasswordFile?: string;
  extra?: string;
}

/** A configuration in front of `dc`; every store path under `dir` unless given. */
function writeConfig(name: string, setup: Setup = {}): string {
  const file = path.join(dir, `${name}.toml`);
  const store = setup.store ?? path.join(dir, 'data', 'mailgate.db');
  writeFileSync(
    file,
    `[store]
path = ${JSON.stringify(store)}
key_file = ${JSON.stringify(path.join(path.dirname(store), 'mailgate.key'))}

[auth]
argon2_memory_kib = 1024
argon2_iterations = 1

[tls]
cert = ${JSON.stringify(setup.cert ?? fullchain)}
key = ${JSON.stringify(setup.key ?? dc.pki.serverKey)}
self_signed = false

[upstream.imap]
port = ${setup.imapPort ?? dc.imapPort}
ca = ${JSON.stringify(dc.caCert)}

[upstream.pop3]
port = ${dc.pop3Port}
ca = ${JSON.stringify(dc.caCert)}

[upstream.login]
master_user = ${JSON.stringify(dc.master.name)}
master_password_file = ${JSON.stringify(setup.masterPasswordFile ?? passwordFile)}

[limits]
max_connections = 100

[web]
listen = ""
${setup.extra ?? ''}
`,
  );
  return file;
}

const check = (config: string, ...args: string[]) => runCli(['--config', config, 'check', ...args]);

/** Each output line, and the failed ones. */
function lines(result: CliResult): { all: string[]; failed: string[] } {
  const all = result.stdout.trimEnd().split('\n');
  return { all, failed: all.filter((l) => l.startsWith('✗')) };
}

/** Exit 1, exactly one ✗ line (matching `line`), each ✗ with advice after " — ", and the summary on stderr. */
function expectOneFailure(result: CliResult, line: RegExp): void {
  expect(result.code, result.stdout + result.stderr).toBe(1);
  const { all, failed } = lines(result);
  expect(failed, result.stdout).toHaveLength(1);
  expect(failed[0]).toMatch(line);
  expect(failed[0]).toMatch(/ — \S/);
  expect(all.every((l) => /^[✓✗] /.test(l)), result.stdout).toBe(true);
  expect(result.stderr).toMatch(new RegExp(`^mailgate: 1 of ${all.length} checks failed\\n$`));
}

beforeAll(async () => {
  dc = await startDovecot();
  dir = await makeTempDir('cli-check');
  // The test PKI's server certificate is the leaf followed by its CA: a complete chain, as fullchain.pem is.
  fullchain = dc.pki.serverCert;
  leafOnly = path.join(dir, 'leaf.pem');
  writeFileSync(leafOnly, /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----\n/.exec(readFileSync(fullchain, 'latin1'))![0]);
  passwordFile = path.join(dir, 'master-password');
  writeFileSync(passwordFile, `${dc.master.password}\n`, { mode: 0o600 });
  // The store, made the supported way.
  const made = await runCli(['--config', writeConfig('base'), 'account', 'add', 'alice']);
  expect(made.code, made.stderr).toBe(0);
});

afterAll(async () => {
  await dc?.stop();
  if (dir) await removeTempDir(dir);
});

describe('mailgate check', () => {
  it('all pass: a ✓ per check, the master login for --account on IMAP and POP3, exit 0', async () => {
    // Catches: a checklist that leaves a check out, or fails a good setup.
    const result = await check(writeConfig('good'), '--account', 'alice');
    expect(result.code, result.stdout + result.stderr).toBe(0);
    expect(result.stderr).toBe('');
    const { all, failed } = lines(result);
    expect(failed).toEqual([]);
    const expected = [
      /^✓ configuration .*good\.toml is valid$/,
      /^✓ tls\.key .* is the private key of the certificate$/,
      /^✓ the chain of tls\.cert is complete \(2 certificates\)$/,
      /^✓ tls\.cert is valid until \d{4}-\d\d-\d\d \(\d+ days\)$/,
      /^✓ tls\.cert is issued by /,
      /^✓ tls\.cert names: localhost, 127\.0\.0\.1, (::1|0:0:0:0:0:0:0:1)$/,
      /^✓ the database .*mailgate\.db: present, readable, mode 0600$/,
      /^✓ the key file .*mailgate\.key: present, readable, mode 0600$/,
      /^✓ schema version \d+ \(this mailgate's\)$/,
      /^✓ master password for gwmaster: from .*master-password$/,
      /^✓ upstream\.imap 127\.0\.0\.1:\d+: reachable, STARTTLS, certificate verified \(DNS:localhost.*\), \d+ capabilities$/,
      /^✓ upstream\.pop3 127\.0\.0\.1:\d+: reachable, STARTTLS, certificate verified/,
      /^✓ IMAP master login as gwmaster for alice: logged in, and out again$/,
      /^✓ POP3 master login as gwmaster for alice: logged in, and out again$/,
      /^✓ open-file limit of this process/,
    ];
    expect(all).toHaveLength(expected.length);
    expected.forEach((pattern, i) => expect(all[i]).toMatch(pattern));
    // The logins were real: Dovecot logged both, and their logouts.
    await dc.waitForLog(/imap\(alice\).*Disconnected: Logged out/);
    await dc.waitForLog(/pop3\(alice\).*Disconnected: Logged out/);
  });

  it('a wrong master password fails the master-login lines only (with --account)', async () => {
    // Catches: a master-login check that takes any answer for a login, or does not log in at all.
    const wrong = path.join(dir, 'wrong-password');
    writeFileSync(wrong, 'not-the-master-password\n', { mode: 0o600 });
    const result = await check(writeConfig('wrong-master', { masterPasswordFile: wrong }), '--account', 'alice');
    expect(result.code).toBe(1);
    const { failed } = lines(result);
    expect(failed).toHaveLength(2);
    expect(failed[0]).toMatch(/^✗ IMAP master login as gwmaster for alice: the upstream refused the master login: .*AUTHENTICATIONFAILED.* — check upstream\.login\.master_user, the master password/);
    expect(failed[1]).toMatch(/^✗ POP3 master login as gwmaster for alice: .* — check upstream\.login\.master_user/);
    // Without --account (and no probe account) nothing logs in: the same setup passes.
    expect((await check(writeConfig('wrong-master'))).code).toBe(0);
  });

  it('a dead upstream port fails that upstream, with the keys to look at', async () => {
    // Catches: upstream checks that are never run, or run against the wrong protocol's settings.
    const dead = await freePort();
    expectOneFailure(
      await check(writeConfig('dead', { imapPort: dead })),
      new RegExp(`^✗ upstream\\.imap 127\\.0\\.0\\.1:${dead}: cannot connect .*ECONNREFUSED.* — start the mail server, or point upstream\\.imap\\.host and \\.port at it`),
    );
  });

  it('a missing store is reported, and nothing is created', async () => {
    // Catches: a check that opens the store the way serve does (which would create an empty one).
    const store = path.join(dir, 'nowhere', 'mailgate.db');
    const result = await check(writeConfig('missing', { store }));
    expect(result.code).toBe(1);
    const { failed } = lines(result);
    expect(failed).toEqual([
      expect.stringMatching(/^✗ the database .*nowhere\/mailgate\.db \(store\.path\) does not exist — point store\.path at the existing one, or run `mailgate serve` once/),
      expect.stringMatching(/^✗ the key file .*nowhere\/mailgate\.key \(store\.key_file\) does not exist — /),
    ]);
    expect(existsSync(path.dirname(store))).toBe(false);
  });

  it('a key that is not the certificate\'s fails the key line', async () => {
    // Catches: a certificate check that only parses the files.
    expectOneFailure(await check(writeConfig('mismatch', { key: dc.pki.caKey })), /^✗ tls\.key .*ca\.key is not the private key of the certificate in tls\.cert .* — configure the key that belongs to the certificate/);
  });

  it('a chain without its issuer fails the chain line', async () => {
    // Catches: a chain check that accepts any certificate (mail programs cannot fill in a missing intermediate).
    expectOneFailure(await check(writeConfig('leaf-only', { cert: leafOnly })), /^✗ the chain in tls\.cert .*leaf\.pem is incomplete: .* — use the full chain/);
  });

  it('a store file others may read fails its line, with the chmod to run', async () => {
    const store = path.join(dir, 'data', 'mailgate.db');
    chmodSync(store, 0o644);
    try {
      expectOneFailure(await check(writeConfig('open-mode')), new RegExp(`^✗ the database ${store} is mode 0644; .* — chmod 600 ${store}$`));
    } finally {
      chmodSync(store, 0o600);
    }
  });

  it('a configuration that does not validate: one ✗ line, nothing else checked', async () => {
    const file = writeConfig('bad', { extra: '[metrics]\nlisten = 42\n' });
    const result = await check(file);
    expect(result.code).toBe(1);
    expect(lines(result).all).toEqual([expect.stringMatching(/^✗ .*bad\.toml: metrics\.listen: .* — fix the key named/)]);
  });

  it('--json: {ok, checks: [{check, ok, message, advice}]}', async () => {
    const good = await check(writeConfig('good'), '--json');
    expect(good.code).toBe(0);
    const parsed = JSON.parse(good.stdout) as { ok: boolean; checks: { check: string; ok: boolean; message: string; advice: string | null }[] };
    expect(parsed.ok).toBe(true);
    expect(parsed.checks.map((c) => c.check)).toEqual([
      'config',
      'tls.key',
      'tls.cert.chain',
      'tls.cert.expiry',
      'tls.cert.issuer',
      'tls.cert.names',
      'store.path',
      'store.key_file',
      'store.schema',
      'upstream.login.master_password',
      'upstream.imap',
      'upstream.pop3',
      'limits.max_connections',
    ]);
    for (const c of parsed.checks) expect(c).toEqual({ check: c.check, ok: true, message: expect.any(String), advice: null });

    const bad = await check(writeConfig('dead-json', { imapPort: await freePort() }), '--json');
    expect(bad.code).toBe(1);
    const failed = (JSON.parse(bad.stdout) as typeof parsed).checks.filter((c) => !c.ok);
    expect(failed).toEqual([{ check: 'upstream.imap', ok: false, message: expect.stringMatching(/ECONNREFUSED/), advice: expect.stringMatching(/upstream\.imap\.host/) }]);
  });
});
