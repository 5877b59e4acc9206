/**
 * `mailgate check`: everything a start (and the first logins) depends on,
 * checked without changing anything, in the spirit of `nginx -t`. It never
 * creates a store, a key, a certificate or a folder: files are looked at with
 * stat, and the database is asked for its schema version by SQLite, read-only.
 * Each check is one finding; a failed one says what to do.
 */
import { accessSync, constants, readFileSync, statSync, type Stats } from 'node:fs';
import { FIXED_LIMITS } from '../config/limits.js';
import { configPath } from '../config/load.js';
import { serverCertificates, type Config } from '../config/schema.js';
import { errorMessage } from '../errors.js';
import { checkStore, readStoreKey, storeSchemaVersion } from '../store/open.js';
import { upstreamTarget } from '../upstream/connect.js';
import { Upstreams, type UpstreamProtocol } from '../upstream/upstreams.js';
import { inspectCertificate, type Finding } from './certificate-report.js';
import { fileLimit, RAISE_FILE_LIMIT_ADVICE } from './file-limits.js';
import { readMasterPassword } from './gateway.js';

export type { Finding } from './certificate-report.js';

export interface CheckOptions {
  /** Log in upstream as the master user for this account, and out again. */
  account?: string;
  env: NodeJS.ProcessEnv;
  now?: number;
}

/** Every check after the configuration itself (which the caller has loaded), in the order of the checklist. */
export async function runChecks(config: Config, options: CheckOptions): Promise<Finding[]> {
  const findings: Finding[] = [...certificate(config, options.now ?? Date.now()), ...(config.store.backend === 'postgres' ? await postgresStore(config) : store(config))];
  const master = masterPassword(config, options.env);
  findings.push(master.finding);
  const protocols = [...new Set<UpstreamProtocol>(config.listen.map((l) => l.protocol))];
  const upstreams = upstreamsOf(config);
  if ('finding' in upstreams) findings.push(upstreams.finding);
  else {
    const timeoutMs = Math.min(config.timeouts.upstream_connect_seconds, FIXED_LIMITS.health_check_timeout_seconds) * 1000;
    for (const protocol of protocols) findings.push(await reach(upstreams.upstreams, protocol, config, timeoutMs));
    const account = options.account || config.upstream.login.probe_account;
    if (account) {
      for (const protocol of protocols) findings.push(await masterLogin(upstreams.upstreams, protocol, account, master.password, config, timeoutMs));
    }
  }
  findings.push(openFiles(config));
  return findings;
}

/** Each configured certificate ([tls], or every [[tls.certificates]] entry, the default first). */
function certificate(config: Config, now: number): Finding[] {
  const entries = serverCertificates(config.tls);
  const keyOf = (index: number) => (config.tls.certificates.length > 0 ? `tls.certificates[${index}]` : 'tls');
  const publicHost = config.web.public_url ? new URL(config.web.public_url).hostname.replace(/^\[|\]$/g, '') : '';
  return entries.flatMap((entry, index) => {
    const key = keyOf(index);
    const names = entry.names.map((host) => ({ key: `${key}.names`, host }));
    // The page is served with the default certificate (or the one SNI picks for its host).
    if (index === 0 && publicHost && !entries.some((e) => e.names.includes(publicHost.toLowerCase()))) names.push({ key: 'web.public_url', host: publicHost });
    return oneCertificate(config, key, configPath(entry.cert), configPath(entry.key), names, now);
  });
}

function oneCertificate(config: Config, key: string, certFile: string, keyFile: string, names: { key: string; host: string }[], now: number): Finding[] {
  const missing = [certFile, keyFile].filter((file) => statOf(file) === null);
  if (missing.length > 0) {
    const generated = key === 'tls' && config.tls.self_signed && missing.length === 2;
    return [
      {
        check: `${key}.cert`,
        ok: false,
        message: `${missing.join(' and ')} ${missing.length === 1 ? 'does' : 'do'} not exist${generated ? ': serve would generate a self-signed certificate, which mail programs warn about' : ''}`,
        advice: `set ${key}.cert and ${key}.key to your certificate (full chain) and its key`,
      },
    ];
  }
  let cert: Buffer;
  let privateKey: Buffer;
  try {
    cert = readFileSync(certFile);
    privateKey = readFileSync(keyFile);
  } catch (err) {
    return [{ check: `${key}.cert`, ok: false, message: `cannot read the certificate or key: ${errorMessage(err)}`, advice: `let the user mailgate runs as read ${key}.cert and ${key}.key` }];
  }
  return inspectCertificate({ key, certFile, keyFile, cert, privateKey, names, now });
}

function store(config: Config): Finding[] {
  const findings = [privateFile('store.path', configPath(config.store.path), 'the database'), privateFile('store.key_file', configPath(config.store.key_file), 'the key file')];
  if (findings[1]!.ok) {
    try {
      readStoreKey(config);
    } catch (err) {
      findings[1] = { check: 'store.key_file', ok: false, message: errorMessage(err), advice: 'restore the key file that belongs to this database from its backup' };
    }
  }
  if (findings[0]!.ok) findings.push(schema(config));
  return findings;
}

/** A PostgreSQL store: the key file, and the database's own check (reached, schema, tables, the key file the one it was made with), read-only. */
async function postgresStore(config: Config): Promise<Finding[]> {
  const key = privateFile('store.key_file', configPath(config.store.key_file), 'the key file');
  const check = 'store.url';
  try {
    const { file, ok, schemaVersion, integrity } = await checkStore(config);
    if (ok) return [key, { check, ok, message: `${file}: schema version ${schemaVersion}, tables and key file as this mailgate expects` }];
    const advice = schemaVersion === 0 ? 'run `mailgate store migrate` (or start serve once) to make the schema' : '`mailgate store check` says more';
    return [key, { check, ok, message: `${file}: ${integrity.join('; ')}`, advice }];
  } catch (err) {
    return [key, { check, ok: false, message: errorMessage(err), advice: 'check store.url, its password (store.password_file or PGPASSWORD), and that PostgreSQL is reachable from here' }];
  }
}

/** Present, readable, and private (0600: it holds hashes, secrets, the key). */
function privateFile(check: string, file: string, what: string): Finding {
  const st = statOf(file);
  if (!st) {
    return {
      check,
      ok: false,
      message: `${what} ${file} (${check}) does not exist`,
      advice: `point ${check} at the existing one, or run \`mailgate serve\` once to create a new store`,
    };
  }
  try {
    accessSync(file, constants.R_OK);
  } catch (err) {
    return { check, ok: false, message: `${what} ${file} cannot be read: ${errorMessage(err)}`, advice: `run check as the user mailgate runs as, and let that user read ${file}` };
  }
  const mode = st.mode & 0o777;
  if ((mode & 0o077) !== 0) {
    return { check, ok: false, message: `${what} ${file} is mode 0${mode.toString(8)}; others than its owner may read it`, advice: `chmod 600 ${file}` };
  }
  return { check, ok: true, message: `${what} ${file}: present, readable, mode 0${mode.toString(8)}` };
}

function schema(config: Config): Finding {
  const check = 'store.schema';
  try {
    const { file, version, current } = storeSchemaVersion(config);
    if (version === current) return { check, ok: true, message: `schema version ${version} (this mailgate's)` };
    if (version === 0) return { check, ok: false, message: `${file} is not a mailgate store (schema version 0)`, advice: 'point store.path at the store, or restore it from a backup' };
    if (version > current) return { check, ok: false, message: `schema version ${version} is newer than this mailgate understands (${current})`, advice: 'upgrade mailgate to the version that wrote it' };
    return { check, ok: true, message: `schema version ${version}; serve upgrades it to ${current} at start, after a backup beside it (other commands refuse it until then)` };
  } catch (err) {
    return { check, ok: false, message: errorMessage(err), advice: 'restore the database from a backup (mailgate store check says more)' };
  }
}

function masterPassword(config: Config, env: NodeJS.ProcessEnv): { finding: Finding; password: Buffer | null } {
  const check = 'upstream.login.master_password';
  const file = config.upstream.login.master_password_file;
  let password: Buffer | null;
  try {
    password = readMasterPassword(config, env);
  } catch (err) {
    return { finding: { check, ok: false, message: errorMessage(err), advice: 'let the user mailgate runs as read the file' }, password: null };
  }
  if (!password || password.length === 0) {
    return {
      finding: {
        check,
        ok: false,
        message: 'no master password configured: app-password logins would fail',
        advice: 'put the master user\'s password in a file named by upstream.login.master_password_file (mode 0600), or in MAILGATE_MASTER_PASSWORD',
      },
      password: null,
    };
  }
  if (file) {
    const mode = (statOf(configPath(file))?.mode ?? 0) & 0o777;
    if ((mode & 0o077) !== 0) {
      return { finding: { check, ok: false, message: `the master password file ${configPath(file)} is mode 0${mode.toString(8)}; others than its owner may read it`, advice: `chmod 600 ${configPath(file)}` }, password };
    }
  }
  return { finding: { check, ok: true, message: `master password for ${config.upstream.login.master_user}: from ${file ? configPath(file) : 'MAILGATE_MASTER_PASSWORD'}` }, password };
}

function upstreamsOf(config: Config): { upstreams: Upstreams } | { finding: Finding } {
  try {
    return { upstreams: new Upstreams({ imap: upstreamTarget(config.upstream.imap, 'imap'), pop3: upstreamTarget(config.upstream.pop3, 'pop3') }, config) };
  } catch (err) {
    return { finding: { check: 'upstream', ok: false, message: errorMessage(err), advice: "point the key at the mail server's CA file (PEM), or leave it empty for the system's" } };
  }
}

async function reach(upstreams: Upstreams, protocol: UpstreamProtocol, config: Config, timeoutMs: number): Promise<Finding> {
  const check = `upstream.${protocol}`;
  const { host, port, tls } = config.upstream[protocol];
  const where = `${check} ${host}:${port}`;
  try {
    const report = await upstreams.reachable(protocol, timeoutMs);
    const security = !report.certificate
      ? 'no TLS (passwords cross the network in clear text: use it only on the same host)'
      : report.certificate.verified
        ? `${tls === 'implicit' ? 'TLS' : 'STARTTLS'}, certificate verified (${report.certificate.subject}, valid until ${report.certificate.validTo.slice(0, 10)})`
        : `${tls === 'implicit' ? 'TLS' : 'STARTTLS'}, certificate NOT verified (upstream.${protocol}.verify = false)`;
    return { check, ok: true, message: `${where}: reachable, ${security}, ${report.capabilities.length} capabilities` };
  } catch (err) {
    return {
      check,
      ok: false,
      message: `${where}: ${errorMessage(err)}`,
      advice: `start the mail server, or point upstream.${protocol}.host and .port at it; its TLS: upstream.${protocol}.tls, .ca, .servername`,
    };
  }
}

async function masterLogin(upstreams: Upstreams, protocol: UpstreamProtocol, account: string, password: Buffer | null, config: Config, timeoutMs: number): Promise<Finding> {
  const check = `master_login.${protocol}`;
  const who = `${config.upstream.login.master_user} for ${account}`;
  if (!password) return { check, ok: false, message: `${protocol.toUpperCase()} master login as ${who}: no master password`, advice: 'configure the master password (see above)' };
  const result = await upstreams.masterLogin(protocol, account, password, timeoutMs);
  if (result.ok) return { check, ok: true, message: `${protocol.toUpperCase()} master login as ${who}: logged in, and out again` };
  const advice =
    result.kind === 'no-such-account'
      ? `the master password works, but the mail server does not know ${account}: check with an account it has`
      : `check upstream.login.master_user, the master password, upstream.login.master_style, and the mail server's master passdb (docs: "Putting mailgate in front of Dovecot")`;
  return { check, ok: false, message: `${protocol.toUpperCase()} master login as ${who}: ${result.reason}`, advice };
}

function openFiles(config: Config): Finding {
  const check = 'limits.max_connections';
  const limit = fileLimit(config);
  if (!limit) return { check, ok: true, message: 'open-file limit: not known on this system (no /proc/self/limits); not checked' };
  const what = `open-file limit of this process ${limit.soft ?? 'unlimited'}`;
  if (limit.ok) return { check, ok: true, message: `${what}: enough for limits.max_connections = ${config.limits.max_connections} (needs ${limit.needed}; a service gets its own from systemd's LimitNOFILE)` };
  return { check, ok: false, message: `${what}: limits.max_connections = ${config.limits.max_connections} needs ${limit.needed} (two sockets per session); it allows ${limit.maxSessions} sessions`, advice: RAISE_FILE_LIMIT_ADVICE };
}

function statOf(file: string): Stats | null {
  try {
    return statSync(file);
  } catch {
    return null;
  }
}
