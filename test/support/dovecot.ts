/**
 * Start a REAL Dovecot 2.3 (Debian packages dovecot-imapd + dovecot-pop3d) for
 * integration tests: a private instance in its own temp dir, with its own
 * config, PKI, passwd-files, logs and Maildirs, listening on four free
 * loopback ports (IMAP+STARTTLS, IMAPS, POP3+STLS, POP3S).
 *
 * Several instances can run at once (one per vitest worker / test file):
 * ports come from the kernel, every path lives under a fresh mkdtemp dir, and
 * each instance has its own base_dir/state_dir/instance_name.
 *
 * Privileges
 * ----------
 * Dovecot runs in one of two modes, picked automatically:
 *
 *  - As root (typical for CI containers). Dovecot's normal privilege
 *    separation is kept: login processes run as `dovenull` (chrooted),
 *    auth/anvil as `dovecot`, and mail processes as `nobody:nogroup`, never
 *    root. first/last_valid_uid and _gid are pinned to exactly that uid/gid. Because mkdtemp makes 0700
 *    dirs, the instance dir is chmod 0711 (traversable, not listable), the
 *    passwd-files are 0640 root:dovecot, the Maildirs/homes are owned by
 *    nobody:nogroup, and files we seed are chown'ed to it. The TLS key stays
 *    0600 root: it is read by Dovecot's config process, which runs as root.
 *  - As a normal user ("rootless", as in Dovecot's HowTo/Rootless and its
 *    Docker image). Everything runs as the invoking user:
 *    default_internal_user/default_login_user are set to that user and the
 *    chroots of anvil/imap-login/pop3-login are disabled (chroot needs root).
 *
 * Speed
 * -----
 * Startup is ~0.2-0.3 s (Dovecot + a fresh EC P-256 PKI). Dovecot 2.3's
 * brute-force defences are relaxed so that tests with wrong passwords stay
 * fast: auth_failure_delay = 0 (a failure still waits for the next 500 ms tick
 * of the auth failure queue) and the anvil auth penalty (2..15 s per IP, which
 * 2.3 applies even to login_trusted_networks) is switched off.
 *
 * Lifetime
 * --------
 * Dovecot runs in the foreground (`dovecot -F`) as our child, so nothing is
 * daemonised and stop() is essentially a SIGTERM (Dovecot then kills its own
 * children; see killAndWait for how we wait and what we force). As a safety net for a worker that dies without calling stop(),
 * Dovecot is started through `setpriv --pdeathsig TERM` when available, and an
 * `exit` hook SIGTERMs any instance still running.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, chownSync, existsSync, mkdirSync } from 'node:fs';
import { chmod, chown, mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import net from 'node:net';
import tls from 'node:tls';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

import { makeTestPki, type TestPki } from './pki.js';
import { freePorts } from './ports.js';
import { sleep, waitUntil } from './timing.js';
import { makeTempDir, removeTempDir } from './tmp.js';

const execFileP = promisify(execFile);

export interface DovecotUser {
  name: string;
  password: string;
}

export interface DovecotOptions {
  /** default: alice/alice-upstream-pw, bob/bob-upstream-pw, carol/carol-upstream-pw */
  users?: DovecotUser[];
  /** default: gwmaster / a random password */
  masterUser?: { name: string; password: string };
  /** auth_master_user_separator, default '*' */
  masterSeparator?: string;
  /**
   * login_trusted_networks, default '127.0.0.0/8 ::1/128', so Dovecot accepts the
   * client IP forwarded via IMAP ID x-originating-ip and POP3 XCLIENT.
   */
  trustedNetworks?: string;
  /**
   * default false; when true: ssl = required and disable_plaintext_auth = yes.
   *
   * NOTE: Dovecot treats a connection as "secured" (so plaintext auth is allowed
   * even with ssl=required) when it comes from a login_trusted_networks address
   * or when the client IP equals the local IP (127.0.0.1 -> 127.0.0.1). To see
   * the enforcement over loopback, connect from a different source address
   * (e.g. bind 127.0.0.2) AND set trustedNetworks so it does not cover it.
   */
  sslRequired?: boolean;
  /** appended verbatim to dovecot.conf */
  extraConfig?: string;
}

export interface DovecotHandle {
  /** the temp folder holding config, logs, mail */
  dir: string;
  host: '127.0.0.1';
  /** plain IMAP with STARTTLS available */
  imapPort: number;
  /** implicit TLS */
  imapsPort: number;
  /** plain POP3 with STLS available */
  pop3Port: number;
  /** implicit TLS */
  pop3sPort: number;
  /** path of the CA that signed Dovecot's cert */
  caCert: string;
  /** the whole test PKI (server cert/key valid for localhost, 127.0.0.1, ::1) */
  pki: TestPki;
  users: DovecotUser[];
  master: { name: string; password: string };
  /** the master separator in effect (auth_master_user_separator) */
  masterSeparator: string;
  /** Dovecot's instance_name (unique per instance; also prefixes its process titles) */
  instanceName: string;
  /** pid of the Dovecot master process (undefined once it has exited) */
  readonly pid: number | undefined;
  /** path of the config file */
  configPath: string;
  /** path of the single log file (errors, info and debug lines all go there) */
  logPath: string;
  /** path of that user's Maildir (created, owned by the mail uid) */
  maildir(user: string): string;
  /**
   * Write a message file into the user's INBOX (default cur/, with a unique
   * maildir filename ending ':2,'), return its path. Messages seeded in
   * sequence get increasing UIDs when Dovecot next syncs.
   */
  seedMessage(user: string, raw: Buffer, opts?: { folder?: 'cur' | 'new' }): Promise<string>;
  /** atomic delivery into new/ (write to tmp/ then rename) so an IDLE client sees it */
  deliver(user: string, raw: Buffer): Promise<string>;
  /** the whole Dovecot log (still available after stop()) */
  logText(): Promise<string>;
  /**
   * The first log line that matches, once there is one (Dovecot's log process
   * writes a moment after the fact); throws after the deadline with the last
   * lines of the log.
   */
  waitForLog(match: RegExp | ((line: string) => boolean), timeoutMs?: number): Promise<string>;
  /** stop Dovecot and remove the temp folder; idempotent */
  stop(): Promise<void>;
}

export const DEFAULT_DOVECOT_USERS: readonly DovecotUser[] = Object.freeze([
  { name: 'alice', password: 'alice-upstream-pw' },
  { name: 'bob', password: 'bob-upstream-pw' },
  { name: 'carol', password: 'carol-upstream-pw' },
]);

const HOST = '127.0.0.1' as const;
const START_TIMEOUT_MS = 10_000;
const STOP_TIMEOUT_MS = 5_000;
const STOP_GRACE_MS = 1_000;
const MAX_START_ATTEMPTS = 4;

// ---------------------------------------------------------------------------
// System facts (cached per process)

interface Identity {
  root: boolean;
  /** uid/gid the mail processes run as, and that owns Maildirs/homes */
  mailUid: number;
  mailGid: number;
  /** gid allowed to read the passwd-files (the auth process's group) */
  authGid: number;
  /** default_internal_user / default_login_user */
  internalUser: string;
  loginUser: string;
  /** default_internal_group: unix sockets are chgrp'ed to it */
  internalGroup: string;
}

let identityPromise: Promise<Identity> | undefined;

async function idOf(flag: '-u' | '-g', user: string): Promise<number> {
  const { stdout } = await execFileP('id', [flag, user]);
  const n = Number.parseInt(stdout.trim(), 10);
  if (!Number.isInteger(n)) throw new Error(`id ${flag} ${user}: unexpected output ${JSON.stringify(stdout)}`);
  return n;
}

async function detectIdentity(): Promise<Identity> {
  const uid = process.getuid?.() ?? -1;
  const gid = process.getgid?.() ?? -1;
  if (uid < 0) throw new Error('startDovecot needs a POSIX system');
  if (uid === 0) {
    // Root: keep Dovecot's privilege separation. The Debian package creates
    // dovecot (internal) and dovenull (login); mail goes to nobody:nogroup.
    try {
      const [mailUid, mailGid, authGid] = await Promise.all([idOf('-u', 'nobody'), idOf('-g', 'nobody'), idOf('-g', 'dovecot')]);
      await idOf('-u', 'dovenull');
      if (mailUid === 0 || mailGid === 0) throw new Error('user nobody maps to root?!');
      return { root: true, mailUid, mailGid, authGid, internalUser: 'dovecot', loginUser: 'dovenull', internalGroup: 'dovecot' };
    } catch (err) {
      throw new Error(
        `startDovecot as root needs the users dovecot, dovenull (from the Debian dovecot-core package) and nobody: ${(err as Error).message}`,
      );
    }
  }
  // Rootless: everything runs as us (and our primary group: Dovecot chgrps its
  // sockets to default_internal_group, which only root may do for other groups).
  const name = os.userInfo().username;
  const { stdout } = await execFileP('id', ['-gn']);
  const group = stdout.trim();
  return { root: false, mailUid: uid, mailGid: gid, authGid: gid, internalUser: name, loginUser: name, internalGroup: group };
}

function identity(): Promise<Identity> {
  identityPromise ??= detectIdentity();
  return identityPromise;
}

let setprivPromise: Promise<boolean> | undefined;
/** Is `setpriv --pdeathsig` (util-linux) usable? */
function hasSetpriv(): Promise<boolean> {
  setprivPromise ??= execFileP('setpriv', ['--pdeathsig', 'TERM', 'true']).then(
    () => true,
    () => false,
  );
  return setprivPromise;
}

// ---------------------------------------------------------------------------
// Validation / config rendering

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._@+-]*$/;

function checkName(what: string, name: string): void {
  if (!NAME_RE.test(name) || name.length > 64) throw new Error(`startDovecot: bad ${what} name ${JSON.stringify(name)}`);
}

function checkPassword(what: string, pw: string): void {
  // passwd-file is ':'-separated and line based.
  if (pw.length === 0 || /[:\r\n\0]/.test(pw)) throw new Error(`startDovecot: ${what} password must be non-empty without ':', CR, LF, NUL`);
}

interface Layout {
  dir: string;
  etc: string;
  run: string;
  state: string;
  mail: string;
  home: string;
  pkiDir: string;
  conf: string;
  log: string;
  passwd: string;
  masterPasswd: string;
}

function layout(dir: string): Layout {
  const etc = path.join(dir, 'etc');
  return {
    dir,
    etc,
    run: path.join(dir, 'run'),
    state: path.join(dir, 'state'),
    mail: path.join(dir, 'mail'),
    home: path.join(dir, 'home'),
    pkiDir: path.join(dir, 'pki'),
    conf: path.join(etc, 'dovecot.conf'),
    log: path.join(dir, 'dovecot.log'),
    passwd: path.join(etc, 'passwd'),
    masterPasswd: path.join(etc, 'master-users'),
  };
}

interface Ports {
  imap: number;
  imaps: number;
  pop3: number;
  pop3s: number;
}

function renderConfig(p: {
  l: Layout;
  id: Identity;
  ports: Ports;
  pki: TestPki;
  instanceName: string;
  separator: string;
  trustedNetworks: string;
  sslRequired: boolean;
  extraConfig: string;
}): string {
  const { l, id, ports, pki } = p;
  const rootless = id.root
    ? ''
    : `
# Rootless: chroot needs root, so turn the default chroots off.
service anvil {
  chroot =
}
`;
  const loginChroot = id.root ? '' : '  chroot =\n';
  return `# Generated by test/support/dovecot.ts for one integration-test instance.
# Standalone: used with "dovecot -c ${l.conf}", includes nothing from /etc/dovecot.
instance_name = ${p.instanceName}
protocols = imap pop3
listen = ${HOST}
base_dir = ${l.run}
state_dir = ${l.state}
log_path = ${l.log}
info_log_path = ${l.log}
debug_log_path = ${l.log}
verbose_proctitle = no
shutdown_clients = yes
# No stats clients: fewer sockets per process, and no 5 s stats-handshake hang
# in a login process forked just as the instance is being stopped.
stats_writer_socket_path =

default_internal_user = ${id.internalUser}
default_login_user = ${id.loginUser}
default_internal_group = ${id.internalGroup}
# Mail processes may only ever run as this one uid/gid (${id.root ? 'nobody:nogroup, as we run as root' : 'the invoking user'}).
first_valid_uid = ${id.mailUid}
last_valid_uid = ${id.mailUid}
first_valid_gid = ${id.mailGid}
last_valid_gid = ${id.mailGid}

mail_location = maildir:${l.mail}/%u
mail_max_userip_connections = 1000
pop3_uidl_format = %08Xu%08Xv
imap_id_log = *
# Dovecot's IDLE keepalive ("* OK Still here") comes at a time derived from a
# hash of the client's address, anywhere inside the interval: with the 2 min
# default it can land in the middle of a test that reads an exact answer.
imap_idle_notify_interval = 1 hours

ssl = ${p.sslRequired ? 'required' : 'yes'}
disable_plaintext_auth = ${p.sslRequired ? 'yes' : 'no'}
ssl_cert = <${pki.serverCert}
ssl_key = <${pki.serverKey}
ssl_min_protocol = TLSv1.2

login_trusted_networks = ${p.trustedNetworks}
auth_mechanisms = plain login
auth_verbose = yes
# Tests do many deliberate failed logins: don't hold failures for 2 s. (2.3
# still answers a failure on the next tick of its 500 ms failure queue.)
auth_failure_delay = 0
auth_master_user_separator = ${p.separator}

# Master users ("alice*gwmaster" or SASL authzid=alice/authcid=gwmaster).
# result_success = continue: after the master password checks out, the next
# passdb is consulted for the *target* user (without checking its password),
# so a master user can only log in as users that exist.
passdb {
  driver = passwd-file
  master = yes
  args = scheme=PLAIN username_format=%u ${l.masterPasswd}
  result_success = continue
}
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u ${l.passwd}
}
userdb {
  driver = passwd-file
  args = username_format=%u ${l.passwd}
}
${rootless}
# Dovecot 2.3 delays every auth request from an IP after failed logins (anvil
# "auth penalty": 2, 4, 8, 15 s), even for login_trusted_networks clients;
# tests that try wrong passwords would then crawl. The auth process looks for
# the anvil-auth-penalty socket and silently disables the penalty when it does
# not exist (ENOENT), so move that listener elsewhere.
service anvil {
  unix_listener anvil-auth-penalty {
    path = anvil-auth-penalty-disabled-for-tests
  }
}
service imap-login {
${loginChroot}  inet_listener imap {
    address = ${HOST}
    port = ${ports.imap}
  }
  inet_listener imaps {
    address = ${HOST}
    port = ${ports.imaps}
    ssl = yes
  }
}
service pop3-login {
${loginChroot}  inet_listener pop3 {
    address = ${HOST}
    port = ${ports.pop3}
  }
  inet_listener pop3s {
    address = ${HOST}
    port = ${ports.pop3s}
    ssl = yes
  }
}
${p.extraConfig ? `\n# extraConfig\n${p.extraConfig}\n` : ''}`;
}

// ---------------------------------------------------------------------------
// Maildir helpers

let uniqueSeq = 0;
let lastMicros = 0;
/**
 * A maildir base name "<sec>.M<usec>P<pid>Q<seq>R<rand>.<host>" whose
 * (sec, usec) strictly increase within this process, so Dovecot, which sorts
 * new files by that timestamp, assigns UIDs in seeding order.
 */
function uniqueMaildirName(): string {
  let micros = Date.now() * 1000;
  if (micros <= lastMicros) micros = lastMicros + 1;
  lastMicros = micros;
  const sec = Math.floor(micros / 1e6);
  const usec = String(micros % 1e6).padStart(6, '0');
  return `${sec}.M${usec}P${process.pid}Q${++uniqueSeq}R${randomBytes(4).toString('hex')}.mailgate-test`;
}

// ---------------------------------------------------------------------------
// Process tracking

const live = new Set<ChildProcess>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once('exit', () => {
    for (const child of live) {
      try {
        child.kill('SIGTERM');
      } catch {
        // best effort while the process is exiting
      }
    }
  });
}

function tail(text: string, lines = 40): string {
  return text.split('\n').slice(-lines).join('\n');
}

async function readLog(file: string): Promise<string> {
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return '';
    throw err;
  }
}

/**
 * Readiness probe: connect (over TLS when `tlsCa` is given, verifying the
 * certificate as 'localhost'), wait for the greeting line, then QUIT politely.
 * Waiting for the greeting (rather than a bare connect) means the login
 * process that served us is fully initialised before we go away; a probe that
 * hung up earlier could leave a login process blocked reading its settings if
 * stop() followed immediately.
 */
function probe(port: number, greeting: RegExp, tlsCa: string | null, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock: net.Socket = tlsCa === null
      ? net.connect({ host: HOST, port })
      : tls.connect({ host: HOST, port, ca: tlsCa, servername: 'localhost', minVersion: 'TLSv1.2' });
    let buf = '';
    let settled = false;
    const done = (ok: boolean): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (ok) sock.end(greeting.source.includes('+OK') ? 'QUIT\r\n' : 'Z LOGOUT\r\n');
      else sock.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    sock.once('error', () => done(false));
    sock.once('close', () => done(false));
    sock.on('data', (d: Buffer) => {
      buf += d.toString('latin1');
      if (buf.includes('\n')) done(greeting.test(buf));
    });
  });
}

class StartError extends Error {
  constructor(
    message: string,
    readonly addrInUse: boolean,
  ) {
    super(message);
  }
}

interface Running {
  child: ChildProcess;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  output: () => string;
}

async function launch(conf: string, logPath: string, ports: Ports, caPem: string): Promise<Running> {
  const dovecotArgs = ['-F', '-c', conf];
  const useSetpriv = await hasSetpriv();
  // --pdeathsig: if the test worker dies without stop(), the kernel SIGTERMs
  // Dovecot's master, which then shuts down its children cleanly.
  const [cmd, args] = useSetpriv
    ? ['setpriv', ['--pdeathsig', 'TERM', '--', 'dovecot', ...dovecotArgs]]
    : ['dovecot', dovecotArgs];
  const child = spawn(cmd, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C' },
  });
  let output = '';
  const collect = (d: Buffer): void => {
    output = (output + d.toString('utf8')).slice(-20_000);
  };
  child.stdout?.on('data', collect);
  child.stderr?.on('data', collect);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => {
      live.delete(child);
      resolve({ code, signal });
    });
  });
  const spawnError = new Promise<Error>((resolve) => child.once('error', resolve));
  live.add(child);
  installExitHook();

  const fail = async (why: string): Promise<never> => {
    const log = await readLog(logPath);
    const text = `${output}\n${log}`;
    throw new StartError(
      `startDovecot: ${why}\n--- dovecot stdout/stderr ---\n${tail(output)}\n--- ${logPath} (last lines) ---\n${tail(log)}`,
      /Address already in use/i.test(text),
    );
  };

  const deadline = Date.now() + START_TIMEOUT_MS;
  let exitedEarly: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  void exited.then((e) => {
    exitedEarly = e;
  });
  let spawnErr: Error | undefined;
  void spawnError.then((e) => {
    spawnErr = e;
  });
  const pending: Array<[number, RegExp, string | null]> = [
    [ports.imap, /^\* OK/, null],
    [ports.pop3, /^\+OK/, null],
    [ports.imaps, /^\* OK/, caPem],
    [ports.pop3s, /^\+OK/, caPem],
  ];
  while (pending.length > 0) {
    if (spawnErr) return fail(`could not run ${cmd}: ${spawnErr.message}`);
    if (exitedEarly) return fail(`dovecot exited during startup (code ${exitedEarly.code}, signal ${exitedEarly.signal})`);
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      return fail(`ports ${pending.map(([p]) => p).join(', ')} not ready after ${START_TIMEOUT_MS} ms`);
    }
    const results = await Promise.all(pending.map(([port, re, ca]) => probe(port, re, ca, 2_000)));
    for (let i = results.length - 1; i >= 0; i--) if (results[i]) pending.splice(i, 1);
    if (pending.length > 0) await sleep(15);
  }
  return { child, exited, output: () => output };
}

/** Children of `pid` (Linux /proc), or undefined when that cannot be read. */
async function childPids(pid: number): Promise<number[] | undefined> {
  try {
    const text = await readFile(`/proc/${pid}/task/${pid}/children`, 'utf8');
    return text.split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return undefined;
  }
}

async function commOf(pid: number): Promise<string | undefined> {
  try {
    return (await readFile(`/proc/${pid}/comm`, 'utf8')).trim();
  } catch {
    return undefined;
  }
}

/** Is `pid` gone (or only a zombie waiting to be reaped by init)? */
async function isGone(pid: number): Promise<boolean> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    // "pid (comm) S ..." - the state follows the last ')'.
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) === 'Z';
  } catch {
    return true;
  }
}


/**
 * SIGTERM the master and wait until it and all its children are gone.
 *
 * Speed-up: on SIGTERM Dovecot's master kills and reaps all its children, then
 * SIGQUITs the log process and *unconditionally sleeps 1 s*
 * (services_monitor_wait_and_kill) before closing the log pipes and exiting.
 * When /proc shows the log process is the master's only child left, all real
 * work is done, so we SIGKILL the master; the log process then sees EOF on its
 * pipes, flushes and exits by itself, and we wait for that.
 *
 * Login processes outlive a master shutdown while they still have a client
 * (or, right after startup, while waiting for a stats handshake), so whatever
 * is left except the log process after STOP_GRACE_MS gets SIGKILL: the
 * instance is being thrown away anyway. Without /proc we just wait for the
 * master's normal exit. Hard limit: SIGKILL the master after STOP_TIMEOUT_MS.
 */
async function killAndWait(r: Running): Promise<void> {
  const pid = r.child.pid;
  if (pid === undefined || r.child.exitCode !== null || r.child.signalCode !== null) return;
  let exited = false;
  void r.exited.then(() => {
    exited = true;
  });
  const started = Date.now();
  r.child.kill('SIGTERM');
  const seen = new Set<number>();
  let logPid: number | undefined;
  let forced = false;
  while (!exited && Date.now() - started < STOP_TIMEOUT_MS) {
    const kids = await childPids(pid);
    if (kids === undefined) {
      await Promise.race([r.exited, sleep(STOP_TIMEOUT_MS)]);
      break;
    }
    const others: number[] = [];
    for (const kid of kids) {
      seen.add(kid);
      if ((await commOf(kid)) === 'log') logPid = kid;
      else others.push(kid);
    }
    if (others.length === 0 && logPid !== undefined) {
      await sleep(10); // let the log process drain what the last children wrote
      if (!exited) r.child.kill('SIGKILL');
      break;
    }
    if (!forced && Date.now() - started > STOP_GRACE_MS) {
      forced = true;
      for (const kid of others) killQuietly(kid);
    }
    await sleep(10);
  }
  if (!exited) {
    r.child.kill('SIGKILL');
    await r.exited;
  }
  // The master is gone; make sure none of its former children linger
  // (orphans are re-parented, so look them up by pid).
  const deadline = Date.now() + STOP_TIMEOUT_MS;
  for (const kid of seen) {
    while (!(await isGone(kid))) {
      if (kid !== logPid || Date.now() > deadline) {
        killQuietly(kid);
        if (Date.now() > deadline + 1_000) break;
      }
      await sleep(5);
    }
  }
}

function killQuietly(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

// ---------------------------------------------------------------------------

export async function startDovecot(opts: DovecotOptions = {}): Promise<DovecotHandle> {
  const users = (opts.users ?? DEFAULT_DOVECOT_USERS).map((u) => ({ ...u }));
  const master = opts.masterUser ? { ...opts.masterUser } : { name: 'gwmaster', password: `master-${randomBytes(12).toString('hex')}` };
  const separator = opts.masterSeparator ?? '*';
  const trustedNetworks = opts.trustedNetworks ?? '127.0.0.0/8 ::1/128';
  for (const u of users) {
    checkName('user', u.name);
    checkPassword(`user ${u.name}`, u.password);
  }
  checkName('master user', master.name);
  checkPassword('master user', master.password);
  if (users.some((u) => u.name === master.name)) throw new Error('startDovecot: master user name collides with a normal user');
  // '#' would start a config comment; quotes/backslash/'%' are special to Dovecot's parser or var expansion.
  if (separator.length === 0 || separator.length > 4 || /[\s:#"'\\%{}]/.test(separator)) {
    throw new Error(`startDovecot: bad master separator ${JSON.stringify(separator)}`);
  }
  if (/[\r\n]/.test(trustedNetworks)) throw new Error('startDovecot: bad trustedNetworks');

  const id = await identity();
  const dir = await makeTempDir('dc');
  const l = layout(dir);
  const instanceName = `mailgate-${path.basename(dir)}`;
  let running: Running | undefined;
  try {
    // Directory tree. The instance dir must be traversable by dovecot/dovenull
    // when we are root (mkdtemp makes it 0700); 0711 lets them reach known
    // paths without being able to list anything.
    await chmod(dir, id.root ? 0o711 : 0o700);
    await Promise.all([mkdir(l.etc, { mode: 0o755 }), mkdir(l.state, { mode: 0o750 }), mkdir(l.mail, { mode: 0o711 }), mkdir(l.home, { mode: 0o711 })]);
    await chmod(l.etc, 0o755); // mkdir's mode is subject to umask
    const pki = await makeTestPki(l.pkiDir); // 0700 dir; keys 0600, read by the root config process
    const caPem = await readFile(pki.caCert, 'utf8');

    const passwdLines = users.map((u) => `${u.name}:{PLAIN}${u.password}:${id.mailUid}:${id.mailGid}::${path.join(l.home, u.name)}::\n`).join('');
    const masterLines = `${master.name}:{PLAIN}${master.password}\n`;
    await Promise.all([writeFile(l.passwd, passwdLines, { mode: 0o640 }), writeFile(l.masterPasswd, masterLines, { mode: 0o640 })]);
    if (id.root) {
      // The auth process runs as dovecot and reads the passwd-files itself.
      await Promise.all([chown(l.passwd, 0, id.authGid), chown(l.masterPasswd, 0, id.authGid)]);
    }

    const ensureOwned = (p: string, mode: number): void => {
      if (!existsSync(p)) mkdirSync(p, { mode });
      chmodSync(p, mode);
      if (id.root) chownSync(p, id.mailUid, id.mailGid);
    };
    const maildir = (user: string): string => {
      checkName('user', user);
      const md = path.join(l.mail, user);
      ensureOwned(md, 0o700);
      for (const sub of ['cur', 'new', 'tmp']) ensureOwned(path.join(md, sub), 0o700);
      ensureOwned(path.join(l.home, user), 0o700);
      return md;
    };
    for (const u of users) maildir(u.name);

    const writeOwned = async (file: string, raw: Buffer): Promise<void> => {
      await writeFile(file, raw, { mode: 0o600, flag: 'wx' });
      if (id.root) await chown(file, id.mailUid, id.mailGid);
    };

    let ports: Ports | undefined;
    let lastErr: unknown;
    for (let attempt = 1; attempt <= MAX_START_ATTEMPTS && !running; attempt++) {
      const [imap, imaps, pop3, pop3s] = (await freePorts(4, HOST)) as [number, number, number, number];
      ports = { imap, imaps, pop3, pop3s };
      const conf = renderConfig({
        l,
        id,
        ports,
        pki,
        instanceName,
        separator,
        trustedNetworks,
        sslRequired: opts.sslRequired ?? false,
        extraConfig: opts.extraConfig ?? '',
      });
      await writeFile(l.conf, conf, { mode: 0o644 });
      await writeFile(l.log, ''); // fresh log for this attempt
      try {
        running = await launch(l.conf, l.log, ports, caPem);
      } catch (err) {
        lastErr = err;
        // Someone grabbed one of our ports between freePorts() and bind(): retry.
        if (!(err instanceof StartError && err.addrInUse)) throw err;
      }
    }
    if (!running || !ports) throw lastErr ?? new Error('startDovecot: could not start');

    const r = running;
    const p = ports;
    let stopped: Promise<void> | undefined;
    let finalLog: string | undefined;
    const handle: DovecotHandle = {
      dir,
      host: HOST,
      imapPort: p.imap,
      imapsPort: p.imaps,
      pop3Port: p.pop3,
      pop3sPort: p.pop3s,
      caCert: pki.caCert,
      pki,
      users,
      master,
      masterSeparator: separator,
      instanceName,
      get pid() {
        return r.child.exitCode === null && r.child.signalCode === null ? r.child.pid : undefined;
      },
      configPath: l.conf,
      logPath: l.log,
      maildir,
      async seedMessage(user, raw, o) {
        const folder = o?.folder ?? 'cur';
        const md = maildir(user);
        const base = uniqueMaildirName();
        const file = path.join(md, folder, folder === 'cur' ? `${base}:2,` : base);
        await writeOwned(file, raw);
        return file;
      },
      async deliver(user, raw) {
        const md = maildir(user);
        const base = uniqueMaildirName();
        const tmpFile = path.join(md, 'tmp', base);
        const file = path.join(md, 'new', base);
        await writeOwned(tmpFile, raw);
        await rename(tmpFile, file);
        return file;
      },
      async logText() {
        return finalLog ?? readLog(l.log);
      },
      async waitForLog(match, timeoutMs = 5_000) {
        const test = typeof match === 'function' ? match : (line: string) => match.test(line);
        let text = '';
        try {
          return await waitUntil(async () => (text = await handle.logText()).split('\n').find(test), `Dovecot to log ${String(match)}`, timeoutMs);
        } catch (err) {
          throw new Error(`${(err as Error).message}\n--- log (last lines) ---\n${tail(text)}`);
        }
      },
      stop() {
        stopped ??= (async () => {
          try {
            await killAndWait(r);
          } finally {
            finalLog = await readLog(l.log).catch(() => '');
            await removeTempDir(dir);
          }
        })();
        return stopped;
      },
    };
    return handle;
  } catch (err) {
    if (running) await killAndWait(running).catch(() => undefined);
    await removeTempDir(dir).catch(() => undefined);
    throw err;
  }
}
