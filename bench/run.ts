/**
 * `npm run bench`: mailgate against direct Dovecot and nginx's mail proxy,
 * side by side, on loopback. See docs/benchmarks.md for what is measured and
 * how to read the results.
 *
 * Set-up (all under temp dirs, all on 127.0.0.x, all torn down on exit,
 * failure, Ctrl-C or SIGTERM):
 *   - a real Dovecot (test/support/dovecot.ts) with the bench accounts, a
 *     master user and a 20 MiB message;
 *   - mailgate, the built binary, as a separate process, with the production
 *     argon2 parameters, its store seeded with one app password per account;
 *   - a second mailgate, the same but on a PostgreSQL store (a real
 *     PostgreSQL from test/support/postgres.ts, crash-safe settings), its
 *     store copied from the first one's with `mailgate store copy`, when
 *     PostgreSQL is installed;
 *   - nginx + ngx_mail_module with the bench's auth_http server, when installed.
 * Every client speaks implicit TLS to the target it measures; the gateways
 * speak plain IMAP to Dovecot.
 */
import { randomBytes, randomInt } from 'node:crypto';
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { execFileSync } from 'node:child_process';
import argon2 from 'argon2';

import { LIMIT_DEFAULTS } from '../src/config/limits.js';
import { startDovecot, type DovecotHandle } from '../test/support/dovecot.js';
import { freePorts } from '../test/support/ports.js';
import { makeTempDir, removeTempDir } from '../test/support/tmp.js';
import { ImapConn, loginCycle, openSession, quote, type CycleTiming, type Endpoint } from './lib/imap.js';
import { ARGON2_DEFAULTS, checkBuild, ROOT, scrape, seedStore, startMailgate, writeConfig, type MailgateHandle, type MailgateSettings } from './lib/mailgate.js';
import { nginxAvailable, nginxVersion, startNginx, type NginxHandle } from './lib/nginx.js';
import { parseOptions, type BenchOptions } from './lib/options.js';
import { copyStore, postgresAvailable, postgresVersion, startBenchPostgres, type BenchPostgres } from './lib/postgres.js';
import {
  commandVersion,
  cpuSeconds,
  installSignalHandlers,
  LoadMonitor,
  waitForQuiet,
  nofileLimit,
  onCleanup,
  processTree,
  raiseNofile,
  rssBytes,
  pssBytes,
  runCleanups,
  sleep,
  sumMemory,
  threadCpu,
  type MemorySample,
} from './lib/proc.js';
import { computeChecks, renderReport, type QuietLag, type Results, type TargetKey, type TargetResults } from './lib/report.js';
import { median, round, summarize } from './lib/stats.js';

const log = (msg: string) => process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);

interface Target {
  key: TargetKey;
  label: string;
  ep: Endpoint;
  password(user: string): string;
  /** Memory of the process(es) that hold this target's client sessions. */
  memory(): MemorySample;
  /** CPU seconds of those processes (and helpers, e.g. nginx's auth server). */
  cpu(): number;
  /** A mailgate: its process and metrics (event-loop lag, argon2 runs, sessions). */
  gateway?: MailgateHandle;
}

interface Env {
  opts: BenchOptions;
  dovecot: DovecotHandle;
  mailgate: MailgateHandle;
  /** The second mailgate, on the PostgreSQL store, and its server. */
  mailgatePg: MailgateHandle | null;
  postgres: BenchPostgres | null;
  nginx: NginxHandle | null;
  targets: Target[];
  accounts: string[];
  fetchUser: string;
  ownPasswords: Map<string, string>;
  appPasswords: Map<string, string>;
  caPem: string;
  results: Results;
}

// ---------------------------------------------------------------------------

function rotate<T>(list: readonly T[], by: number): T[] {
  const k = ((by % list.length) + list.length) % list.length;
  return [...list.slice(k), ...list.slice(0, k)];
}

function ip(n: number): string {
  if (n < 1 || n > 254) throw new Error(`no loopback address 127.0.0.${n}`);
  return `127.0.0.${n}`;
}

function randomLetters(n: number): string {
  let s = '';
  for (let i = 0; i < n; i++) s += String.fromCharCode(97 + randomInt(26));
  return s;
}

/** A MIME message of about `mib` MiB: text part plus a base64 attachment (76-char lines). */
function bigMessage(mib: number, to: string): Buffer {
  const header = [
    'From: Bench Sender <sender@example.test>',
    `To: ${to}@example.test`,
    'Subject: 20 MiB benchmark message',
    `Date: ${new Date().toUTCString().replace('GMT', '+0000')}`,
    `Message-ID: <${randomBytes(8).toString('hex')}@bench.example.test>`,
    'MIME-Version: 1.0',
    'Content-Type: multipart/mixed; boundary="b1"',
    '',
    '--b1',
    'Content-Type: text/plain; charset=us-ascii',
    '',
    'A large attachment for the FETCH throughput test.',
    '--b1',
    'Content-Type: application/octet-stream; name="data.bin"',
    'Content-Transfer-Encoding: base64',
    'Content-Disposition: attachment; filename="data.bin"',
    '',
    '',
  ].join('\r\n');
  const target = mib * 1024 * 1024 - header.length - 12;
  const rawBytes = Math.floor((target / 78) * 57);
  const b64 = randomBytes(rawBytes).toString('base64');
  const lines: string[] = [];
  for (let i = 0; i < b64.length; i += 76) lines.push(b64.slice(i, i + 76));
  return Buffer.from(`${header}${lines.join('\r\n')}\r\n--b1--\r\n`, 'latin1');
}

// ---------------------------------------------------------------------------
// Set-up

function dovecotExtraConfig(idle: number, fdLimit: number): string {
  const clients = Math.max(2000, idle * 2 + 1000);
  // A TLS client costs imap-login two descriptors (the client and the proxy
  // pair to imap): keep each login process under the open-file limit, more
  // processes are started as they fill up.
  const loginClients = Math.min(clients, Math.floor((fdLimit - 256) / 2));
  return `# bench: room for ${idle} idle sessions per target, and no fork per login
# (imap-login in "high-performance mode", imap processes serving many clients).
mail_max_userip_connections = 1000000
default_client_limit = ${clients}
default_vsz_limit = 2G
service imap-login {
  service_count = 0
  process_min_avail = ${os.availableParallelism()}
  process_limit = 16
  client_limit = ${loginClients}
  vsz_limit = 2G
}
service imap {
  service_count = 0
  client_limit = 1000
  process_limit = ${Math.max(64, Math.ceil((idle * 3) / 1000) + 16)}
  vsz_limit = 2G
}
`;
}

async function setup(opts: BenchOptions, results: Results): Promise<Env> {
  const accounts = Array.from({ length: opts.accounts }, (_, i) => `bench${String(i).padStart(3, '0')}`);
  const fetchUser = 'benchfetch';
  const all = [...accounts, fetchUser];
  const ownPasswords = new Map(all.map((u) => [u, `pw-${u}-${randomBytes(6).toString('hex')}`]));

  log('starting Dovecot...');
  const dovecot = await startDovecot({
    users: all.map((name) => ({ name, password: ownPasswords.get(name)! })),
    extraConfig: dovecotExtraConfig(opts.idle, results.setup.nofile.soft),
  });
  onCleanup('dovecot', () => dovecot.stop());
  const caPem = readFileSync(dovecot.caCert, 'utf8');
  const message = bigMessage(opts.fetchMiB, fetchUser);
  await dovecot.seedMessage(fetchUser, message);
  results.setup.messageBytes = message.length;

  const dir = await makeTempDir('bench');
  onCleanup('bench temp dir', () => removeTempDir(dir));
  const mgDir = path.join(dir, 'mailgate');
  mkdirSync(mgDir, { mode: 0o700 });
  const [imapsPort, metricsPort, webPort, nginxPort, pgImapsPort, pgMetricsPort, pgWebPort] = (await freePorts(7, '127.0.0.1')) as [number, number, number, number, number, number, number];
  const mgSettings: MailgateSettings = {
    dir: mgDir,
    imapsPort,
    metricsPort,
    webPort,
    upstreamPort: dovecot.imapPort,
    masterUser: dovecot.master.name,
    masterPassword: dovecot.master.password,
    cert: dovecot.pki.serverCert,
    key: dovecot.pki.serverKey,
    maxConnections: Math.max(10_000, opts.idle + 2_000),
    ...(opts.mailgateExtraToml ? { extraToml: `\n# --mailgate-toml\n${opts.mailgateExtraToml}` } : {}),
  };
  log(`seeding mailgate's store: ${all.length} accounts, one app password each (argon2 ${ARGON2_DEFAULTS.memoryKib} KiB, t=${ARGON2_DEFAULTS.iterations}, p=${ARGON2_DEFAULTS.parallelism})...`);
  const appPasswords = await seedStore(writeConfig(mgSettings), all);
  const postgres = await setupPostgres(opts, results, dir, mgSettings);
  log('starting mailgate (node bin/mailgate.js serve)...');
  const mailgate = await startMailgate(mgSettings, caPem, opts.mailgateNodeOptions);
  onCleanup('mailgate', () => mailgate.stop());
  let mailgatePg: MailgateHandle | null = null;
  if (postgres) {
    log('starting mailgate (PostgreSQL), the same config on the PostgreSQL store...');
    const pgSettings: MailgateSettings = { ...mgSettings, dir: postgres.dir, imapsPort: pgImapsPort, metricsPort: pgMetricsPort, webPort: pgWebPort, postgres: { url: postgres.pg.url } };
    mailgatePg = await startMailgate(pgSettings, caPem, opts.mailgateNodeOptions, 'mailgate-pg');
    const started = mailgatePg;
    onCleanup('mailgate (PostgreSQL)', () => started.stop());
  }

  let nginx: NginxHandle | null = null;
  const avail = nginxAvailable();
  if (opts.noNginx) {
    results.setup.nginxSkipped = '--no-nginx';
  } else if (!avail.ok) {
    results.setup.nginxSkipped = avail.why;
    log(`SKIPPING the nginx column: ${avail.why}`);
  } else {
    // One worker holds two descriptors per session; when one worker cannot
    // hold them all under the open-file limit, add workers (with accept_mutex,
    // a worker that is 7/8 full leaves new connections to the others).
    const fdLimit = results.setup.nofile.soft;
    const workers = Math.max(opts.nginxWorkers, Math.ceil((opts.idle * 2 + 1024) / (fdLimit - 512)));
    results.setup.nginxWorkers = workers;
    if (workers !== opts.nginxWorkers) {
      log(`nginx: ${workers} workers instead of ${opts.nginxWorkers}: one worker cannot hold ${opts.idle} sessions (2 descriptors each) under the open-file limit of ${fdLimit}`);
    }
    log(`starting nginx (worker_processes ${workers}) and its auth_http server...`);
    const ngDir = path.join(dir, 'nginx');
    mkdirSync(ngDir, { mode: 0o755 });
    nginx = await startNginx(
      {
        dir: ngDir,
        port: nginxPort,
        workers,
        connections: Math.min(Math.max(4096, opts.idle * 2 + 2048), fdLimit - 256),
        fdLimit,
        cert: dovecot.pki.serverCert,
        key: dovecot.pki.serverKey,
        upstreamPort: dovecot.imapPort,
        master: { user: dovecot.master.name, password: dovecot.master.password, separator: dovecot.masterSeparator },
        argon2: { ...ARGON2_DEFAULTS },
        users: appPasswords,
      },
      caPem,
    );
    onCleanup('nginx', () => nginx!.stop());
  }

  const dovecotTree = () => processTree(dovecot.pid ?? 0).filter((p) => p !== 0);
  const targets: Target[] = [
    {
      key: 'dovecot',
      label: 'Dovecot direct',
      ep: { host: '127.0.0.1', port: dovecot.imapsPort, tls: true, ca: caPem },
      password: (u) => ownPasswords.get(u)!,
      memory: () => sumMemory(dovecotTree()),
      cpu: () => dovecotTree().reduce((s, p) => s + cpuSeconds(p), 0),
    },
    gatewayTarget('mailgate', 'mailgate', mailgate, caPem, appPasswords),
  ];
  // The same app passwords: the PostgreSQL store is a copy of the SQLite one.
  if (mailgatePg) targets.push(gatewayTarget('mailgatePostgres', 'mailgate (PostgreSQL)', mailgatePg, caPem, appPasswords));
  if (nginx) {
    const ng = nginx;
    targets.push({
      key: 'nginx',
      label: 'nginx mail',
      ep: { host: '127.0.0.1', port: ng.port, tls: true, ca: caPem },
      password: (u) => appPasswords.get(u)!,
      memory: () => sumMemory(ng.workerPids()),
      cpu: () => ng.workerPids().reduce((s, p) => s + cpuSeconds(p), 0) + cpuSeconds(ng.auth.pid),
    });
  }
  return { opts, dovecot, mailgate, mailgatePg, postgres: postgres?.pg ?? null, nginx, targets, accounts, fetchUser, ownPasswords, appPasswords, caPem, results };
}

function gatewayTarget(key: TargetKey, label: string, gateway: MailgateHandle, caPem: string, appPasswords: Map<string, string>): Target {
  return {
    key,
    label,
    ep: { host: '127.0.0.1', port: gateway.imapsPort, tls: true, ca: caPem },
    password: (u) => appPasswords.get(u)!,
    memory: () => ({ rss: rssBytes(gateway.pid), pss: pssBytes(gateway.pid), processes: 1 }),
    cpu: () => cpuSeconds(gateway.pid),
    gateway,
  };
}

/**
 * The PostgreSQL column's server and store, or null (and why, in the
 * results) when it is turned off or PostgreSQL is not installed. The store
 * is the seeded SQLite store copied over by `mailgate store copy` (the same
 * accounts and app-password hashes), with a copy of its key file.
 */
async function setupPostgres(opts: BenchOptions, results: Results, dir: string, sqlite: MailgateSettings): Promise<{ pg: BenchPostgres; dir: string } | null> {
  const avail = postgresAvailable();
  if (opts.noPostgres) {
    results.setup.postgresSkipped = '--no-postgres';
    return null;
  }
  if (!avail.ok) {
    results.setup.postgresSkipped = avail.why;
    log(`SKIPPING the PostgreSQL column: ${avail.why}`);
    return null;
  }
  log('starting PostgreSQL (initdb in a temp dir, loopback, crash-safe settings)...');
  const pg = await startBenchPostgres(opts.postgresSettings);
  onCleanup('postgres', () => pg.server.stop());
  const pgDir = path.join(dir, 'mailgate-pg');
  mkdirSync(pgDir, { mode: 0o700 });
  copyFileSync(path.join(sqlite.dir, 'mailgate.key'), path.join(pgDir, 'mailgate.key'));
  log('copying the seeded store into PostgreSQL (mailgate store copy --to)...');
  const copied = copyStore(writeConfig(sqlite), pg.url);
  if (!/every table is identical/.test(copied)) throw new Error(`mailgate store copy did not report an identical copy:\n${copied}`);
  results.setup.postgres = { version: postgresVersion() ?? 'unknown', settings: pg.settings, poolSize: LIMIT_DEFAULTS.pool_size };
  return { pg, dir: pgDir };
}

function target(env: Env, key: TargetKey): TargetResults {
  return (env.results.targets[key] ??= {});
}

// ---------------------------------------------------------------------------
// 1. Login latency (cold, warm), with argon2 alone and the plain upstream login as references

async function warmUp(env: Env): Promise<void> {
  // JIT and lazy initialisation in every process, with an account that is not
  // part of the cold set.
  for (let i = 0; i < 5; i++) {
    for (const t of env.targets) {
      const r = await loginCycle(t.ep, env.fetchUser, t.password(env.fetchUser));
      if (!r.ok) throw new Error(`warm-up login to ${t.label} failed: ${r.error}`);
    }
  }
}

/** Plain TCP to Dovecot's IMAP port, LOGIN as the account via the master user: what a gateway asks of the upstream. */
function upstreamCycle(env: Env, user: string): Promise<CycleTiming> {
  const d = env.dovecot;
  return loginCycle({ host: '127.0.0.1', port: d.imapPort, tls: false }, `${user}${d.masterSeparator}${d.master.name}`, d.master.password);
}

async function latency(env: Env): Promise<void> {
  const { targets, accounts } = env;
  const argonHash = await argon2.hash('referencepassword', { type: argon2.argon2id, memoryCost: ARGON2_DEFAULTS.memoryKib, timeCost: ARGON2_DEFAULTS.iterations, parallelism: ARGON2_DEFAULTS.parallelism });
  const argonTimes: number[] = [];
  const upstream: number[] = [];
  const samples = new Map<TargetKey, { cold: CycleTiming[]; warm: CycleTiming[] }>(targets.map((t) => [t.key, { cold: [], warm: [] }]));

  const step = async (kind: 'cold' | 'warm', i: number, user: string) => {
    // Round-robin, starting with a different target each time; the two
    // references take their turn in the same rotation.
    const jobs: Array<() => Promise<void>> = targets.map((t) => async () => {
      const r = await loginCycle(t.ep, user, t.password(user));
      if (!r.ok) log(`${kind} login ${user} -> ${t.label} failed: ${r.error}`);
      samples.get(t.key)![kind].push(r);
    });
    jobs.push(async () => {
      const t0 = performance.now();
      const ok = await argon2.verify(argonHash, 'referencepassword');
      argonTimes.push(performance.now() - t0);
      if (!ok) throw new Error('argon2 reference verification failed');
    });
    jobs.push(async () => {
      const r = await upstreamCycle(env, user);
      if (!r.ok) log(`upstream reference login ${user} failed: ${r.error}`);
      else upstream.push(r.loggedIn);
    });
    for (const job of rotate(jobs, i)) await job();
  };

  const gateways = targets.filter((t) => t.gateway !== undefined);
  log(`cold logins: ${accounts.length} accounts x ${targets.length} targets...`);
  const coldBefore = await Promise.all(gateways.map((t) => scrape(t.gateway!.metricsPort)));
  for (let i = 0; i < accounts.length; i++) await step('cold', i, accounts[i]!);
  const coldAfter = await Promise.all(gateways.map((t) => scrape(t.gateway!.metricsPort)));
  const verifications = (m: Map<string, number>) => m.get('mailgate_argon2_verifications_total') ?? 0;
  gateways.forEach((t, g) => {
    const perLogin = round((verifications(coldAfter[g]!) - verifications(coldBefore[g]!)) / accounts.length);
    if (t.key === 'mailgatePostgres') env.results.reference.mailgatePostgresArgon2PerColdLogin = perLogin;
    else env.results.reference.mailgateArgon2PerColdLogin = perLogin;
  });

  log(`warm logins: ${env.opts.warmRounds} rounds x ${accounts.length} accounts x ${targets.length} targets...`);
  await Promise.all(gateways.map((t) => scrape(t.gateway!.metricsPort))); // resets the event-loop histograms
  const quietThreads0 = gateways.map((t) => threadCpu(t.gateway!.pid));
  const t0 = performance.now();
  for (let r = 0; r < env.opts.warmRounds; r++) {
    for (let i = 0; i < accounts.length; i++) await step('warm', r * accounts.length + i + 1, accounts[i]!);
  }
  const quiet = await Promise.all(gateways.map((t) => scrape(t.gateway!.metricsPort)));
  const quietThreads1 = gateways.map((t) => threadCpu(t.gateway!.pid));
  const quietSeconds = (performance.now() - t0) / 1000;
  gateways.forEach((t, g) => {
    const lag: QuietLag = {
      seconds: round(quietSeconds),
      eventLoopPreemptionsPerSecond: round((quietThreads1[g]!.mainPreempted - quietThreads0[g]!.mainPreempted) / quietSeconds, 0),
      p99Ms: round((quiet[g]!.get('mailgate_event_loop_delay_seconds{quantile="0.99"}') ?? Number.NaN) * 1000),
      maxMs: round((quiet[g]!.get('mailgate_event_loop_delay_seconds{quantile="1"}') ?? Number.NaN) * 1000),
    };
    if (t.key === 'mailgatePostgres') env.results.quietLagPostgres = lag;
    else env.results.quietLag = lag;
  });

  for (const t of targets) {
    const s = samples.get(t.key)!;
    const res = target(env, t.key);
    for (const kind of ['cold', 'warm'] as const) {
      const ok = s[kind].filter((x) => x.ok);
      res[kind] = {
        loggedIn: summarize(ok.map((x) => x.loggedIn)),
        cycle: summarize(ok.map((x) => x.total)),
        connect: summarize(ok.map((x) => x.connect)),
        greeting: summarize(ok.map((x) => x.greeting)),
        login: summarize(ok.map((x) => x.login)),
        withoutGreetingWait: summarize(ok.map((x) => x.loggedIn - x.greeting)),
        logout: summarize(ok.map((x) => x.logout)),
        errors: s[kind].length - ok.length,
      };
    }
  }
  env.results.reference.argon2 = summarize(argonTimes);
  env.results.reference.upstreamLogin = summarize(upstream);
}

// ---------------------------------------------------------------------------
// 2. Login throughput

async function throughput(env: Env): Promise<void> {
  const { targets, accounts, opts } = env;
  const halves = 2;
  const per = new Map<TargetKey, { logins: number; errors: number; seconds: number; cpu: number; benchCpu: number; errorSample?: string }>(
    targets.map((t) => [t.key, { logins: 0, errors: 0, seconds: 0, cpu: 0, benchCpu: 0 }]),
  );
  log(`login throughput: ${opts.tputClients} clients, ${opts.tputSeconds} s per target in ${halves} interleaved halves...`);
  for (let h = 0; h < halves; h++) {
    for (const t of rotate(targets, h)) {
      const acc = per.get(t.key)!;
      const deadline = performance.now() + (opts.tputSeconds * 1000) / halves;
      const cpu0 = t.cpu();
      const bench0 = process.cpuUsage();
      const t0 = performance.now();
      await Promise.all(
        Array.from({ length: opts.tputClients }, async (_, c) => {
          let k = c + h * 7;
          while (performance.now() < deadline) {
            const user = accounts[k % accounts.length]!;
            k += opts.tputClients;
            // LOGOUT is sent but not waited for: this counts logins, not teardowns.
            const r = await loginCycle(t.ep, user, t.password(user), { localAddress: ip(10 + c), timeoutMs: 30_000, waitLogout: false });
            if (r.ok) acc.logins += 1;
            else {
              acc.errors += 1;
              acc.errorSample ??= r.error;
            }
          }
        }),
      );
      const secs = (performance.now() - t0) / 1000;
      acc.seconds += secs;
      acc.cpu += t.cpu() - cpu0;
      const b = process.cpuUsage(bench0);
      acc.benchCpu += (b.user + b.system) / 1e6;
      await sleep(300);
    }
  }
  for (const t of targets) {
    const a = per.get(t.key)!;
    target(env, t.key).throughput = {
      clients: opts.tputClients,
      seconds: round(a.seconds),
      logins: a.logins,
      errors: a.errors,
      perSecond: round(a.logins / a.seconds, 1),
      cpuCores: round(a.cpu / a.seconds),
      benchClientCpuCores: round(a.benchCpu / a.seconds),
      ...(a.errorSample ? { errorSample: a.errorSample } : {}),
    };
    if (a.errors > 0) log(`throughput ${t.label}: ${a.errors} errors, e.g. ${a.errorSample}`);
  }
}

// ---------------------------------------------------------------------------
// 3. FETCH throughput

async function fetchOnce(env: Env, t: Target): Promise<{ ms: number; bytes: number; cpu: number }> {
  const conn = await openSession(t.ep, env.fetchUser, t.password(env.fetchUser));
  try {
    const sel = await conn.command('s', 'SELECT INBOX');
    if (sel.status !== 'OK') throw new Error(`SELECT: ${sel.line}`);
    const cpu0 = t.cpu();
    const t0 = performance.now();
    const r = await conn.command('f', 'FETCH 1 (BODY.PEEK[])', 120_000);
    const ms = performance.now() - t0;
    const cpu = t.cpu() - cpu0;
    if (r.status !== 'OK') throw new Error(`FETCH: ${r.line}`);
    if (r.literalBytes < env.results.setup.messageBytes) throw new Error(`FETCH returned ${r.literalBytes} bytes, expected ${env.results.setup.messageBytes}`);
    await conn.command('z', 'LOGOUT').catch(() => undefined);
    return { ms, bytes: r.literalBytes, cpu };
  } finally {
    conn.destroy();
  }
}

async function fetchThroughput(env: Env): Promise<void> {
  const { targets, opts } = env;
  log(`FETCH of the ${opts.fetchMiB} MiB message: 1 warm-up + ${opts.fetchRuns} runs per target, interleaved...`);
  for (const t of targets) await fetchOnce(env, t);
  const runs = new Map<TargetKey, Array<{ ms: number; bytes: number; cpu: number }>>(targets.map((t) => [t.key, []]));
  for (let i = 0; i < opts.fetchRuns; i++) {
    for (const t of rotate(targets, i)) {
      runs.get(t.key)!.push(await fetchOnce(env, t));
      await sleep(100);
    }
  }
  for (const t of targets) {
    const r = runs.get(t.key)!;
    const mibps = r.map((x) => x.bytes / 1048576 / (x.ms / 1000));
    target(env, t.key).fetch = {
      bytes: r[0]!.bytes,
      runs: r.length,
      mibPerSecond: round(median(mibps), 1),
      allMibPerSecond: mibps.map((x) => round(x, 1)),
      medianMs: round(median(r.map((x) => x.ms)), 1),
      cpuSecondsPerFetch: round(median(r.map((x) => x.cpu)), 3),
    };
  }
}

// ---------------------------------------------------------------------------
// 4. Idle sessions

/**
 * The target's memory once it has settled: idle sessions are idle, so V8's
 * memory reducer (a major GC a few seconds after allocation stops) and the
 * allocators have had their say. Samples every second until RSS has stopped
 * falling (three samples within 1%), at most 15 s; the median of the last three.
 */
async function settleMemory(t: Target): Promise<MemorySample> {
  const samples: MemorySample[] = [];
  for (let i = 0; i < 15; i++) {
    await sleep(1000);
    samples.push(t.memory());
    const last = samples.slice(-3).map((s) => s.rss);
    if (last.length === 3 && Math.max(...last) - Math.min(...last) <= 0.01 * Math.max(...last)) break;
  }
  const last = samples.slice(-3);
  return { rss: median(last.map((s) => s.rss)), pss: median(last.map((s) => s.pss)), processes: last[last.length - 1]!.processes };
}

async function orNull<T>(work: () => Promise<T>, what: string): Promise<T | null> {
  try {
    return await work();
  } catch (err) {
    log(`  ${what} failed (${(err as Error).message}); left out of the results`);
    return null;
  }
}

async function gatewaySessions(gateway: MailgateHandle): Promise<number> {
  const m = await scrape(gateway.metricsPort);
  return (m.get('mailgate_sessions{state="prelogin"}') ?? 0) + (m.get('mailgate_sessions{state="relaying"}') ?? 0);
}

async function idleSessions(env: Env): Promise<void> {
  const { targets, accounts, opts } = env;
  const n = opts.idle;
  if (n === 0) return;
  const openers = 32;
  for (const t of targets) {
    log(`idle sessions: opening ${n} authenticated TLS sessions to ${t.label}...`);
    const dovecotTree = () => sumMemory(processTree(env.dovecot.pid ?? 0));
    const before = await settleMemory(t);
    const upstreamBefore = t.key === 'dovecot' ? before : dovecotTree();
    const gateway = t.gateway;
    const heapBefore = gateway ? await scrape(gateway.metricsPort) : null;
    const conns: ImapConn[] = [];
    let errors = 0;
    let errorSample: string | undefined;
    let next = 0;
    // Sessions are opened in two halves. The headline figure is the issue's:
    // RSS growth from before the first session, divided by N. The slope
    // between the two settled measurements is reported beside it: it leaves
    // out one-off growth (V8's young generation, allocator arenas) that the
    // first few hundred sessions are charged with, so the two together show
    // how much of the figure is per session and how much is a fixed step.
    const openUpTo = (limit: number) =>
      Promise.all(
        Array.from({ length: openers }, async (_, w) => {
          while (next < limit) {
            const i = next++;
            const user = accounts[i % accounts.length]!;
            try {
              conns.push(await openSession(t.ep, user, t.password(user), { localAddress: ip(80 + w), timeoutMs: 120_000 }));
            } catch (err) {
              errors += 1;
              errorSample ??= (err as Error).message;
            }
          }
        }),
      );
    const half = Math.floor(n / 2);
    const t0 = performance.now();
    await openUpTo(half);
    const openSecondsHalf = (performance.now() - t0) / 1000;
    const mid = await settleMemory(t);
    const t1 = performance.now();
    await openUpTo(n);
    const openSeconds = openSecondsHalf + (performance.now() - t1) / 1000;
    const after = await settleMemory(t);
    const upstreamAfter = t.key === 'dovecot' ? after : dovecotTree();
    // At the open-file limit the metrics endpoint itself may have no descriptor
    // left to answer with: the heap figures are then missing, not the run.
    const heapAfter = gateway ? await orNull(() => scrape(gateway.metricsPort), 'metrics scrape after opening the sessions') : null;
    const held = conns.filter((c) => !c.closed).length;
    const sessionsSeen = gateway ? await orNull(() => gatewaySessions(gateway), 'session count from the metrics') : null;
    const perKiB = (a: number, b: number) => round((a - b) / n / 1024, 1);
    const res = target(env, t.key);
    res.idle = {
      sessions: n,
      opened: conns.length,
      heldAtEnd: held,
      errors: errors + (conns.length - held),
      ...(errorSample ? { errorSample } : {}),
      openSeconds: round(openSeconds, 1),
      processes: after.processes,
      rssBeforeMiB: round(before.rss / 1048576, 1),
      rssMidMiB: round(mid.rss / 1048576, 1),
      rssAfterMiB: round(after.rss / 1048576, 1),
      rssKiBPerSession: perKiB(after.rss, before.rss),
      rssKiBPerSessionSlope: round((after.rss - mid.rss) / (n - half) / 1024, 1),
      pssKiBPerSession: round((after.pss - mid.pss) / (n - half) / 1024, 1),
      ...(t.key !== 'dovecot' ? { upstreamDovecotRssKiBPerSession: perKiB(upstreamAfter.rss, upstreamBefore.rss) } : {}),
      ...(heapBefore && heapAfter
        ? {
            heapUsedKiBPerSession: perKiB(heapAfter.get('nodejs_heap_size_used_bytes') ?? 0, heapBefore.get('nodejs_heap_size_used_bytes') ?? 0),
            externalKiBPerSession: perKiB(heapAfter.get('nodejs_external_memory_bytes') ?? 0, heapBefore.get('nodejs_external_memory_bytes') ?? 0),
            gatewaySessions: sessionsSeen ?? undefined,
          }
        : {}),
    };
    log(
      `  ${t.label}: ${conns.length}/${n} opened in ${openSeconds.toFixed(1)} s, ${held} held, ` +
        `${res.idle.rssKiBPerSession} KiB/session RSS (growth / N; slope over the second half ${res.idle.rssKiBPerSessionSlope})`,
    );
    if (errorSample) log(`  first error: ${errorSample}`);
    for (const c of conns) c.destroy();
    // Let the target (and Dovecot behind it) tear the sessions down before the next one.
    const drainDeadline = Date.now() + 60_000;
    if (gateway) {
      while (Date.now() < drainDeadline && (await gatewaySessions(gateway)) > 0) await sleep(200);
    }
    await sleep(1000 + Math.min(10_000, n / 2));
  }
}

// ---------------------------------------------------------------------------
// 5. Wrong-password storm

async function storm(env: Env): Promise<void> {
  const { targets, accounts, opts } = env;
  const gateways = targets.filter((t) => t.key !== 'dovecot');
  for (const t of gateways) {
    log(`wrong-password storm on ${t.label}: ${opts.stormClients} clients for ${opts.stormSeconds} s, correct logins from 127.0.0.2 meanwhile...`);
    const gateway = t.gateway;
    const argonBefore = gateway ? await scrape(gateway.metricsPort) : null; // also resets the lag histogram
    const cpu0 = t.cpu();
    const threads0 = gateway ? threadCpu(gateway.pid) : null;
    let stop = false;
    let attempts = 0;
    let refused = 0;
    let otherAnswers = 0;
    let errors = 0;
    const attemptMs: number[] = [];
    const t0 = performance.now();
    const stormers = Array.from({ length: opts.stormClients }, async (_, c) => {
      while (!stop) {
        const user = accounts[randomInt(accounts.length)]!;
        const a0 = performance.now();
        let conn: ImapConn | null = null;
        try {
          conn = await ImapConn.connect(t.ep, { localAddress: ip(120 + c), timeoutMs: 60_000 });
          await conn.greeting(60_000);
          // App-password shaped and never repeated: each one costs the gateway an argon2 run.
          const r = await conn.command('w', `LOGIN ${quote(user)} ${quote(randomLetters(16))}`, 60_000);
          attempts += 1;
          attemptMs.push(performance.now() - a0);
          if (r.status === 'NO') refused += 1;
          else otherAnswers += 1;
        } catch {
          errors += 1;
        } finally {
          conn?.destroy();
        }
      }
    });
    const correct: CycleTiming[] = [];
    const good = (async () => {
      await sleep(200); // let the storm fill the hashing queue first
      let k = 0;
      while (!stop) {
        const user = accounts[k++ % accounts.length]!;
        correct.push(await loginCycle(t.ep, user, t.password(user), { localAddress: ip(2), timeoutMs: 60_000 }));
      }
    })();
    await sleep(opts.stormSeconds * 1000);
    stop = true;
    await Promise.all([...stormers, good]);
    const seconds = (performance.now() - t0) / 1000;
    const after = gateway ? await scrape(gateway.metricsPort) : null;
    const threads1 = gateway ? threadCpu(gateway.pid) : null;
    const ok = correct.filter((x) => x.ok);
    const res = target(env, t.key);
    res.storm = {
      clients: opts.stormClients,
      seconds: round(seconds),
      wrongAttempts: attempts,
      wrongPerSecond: round(attempts / seconds, 1),
      refused,
      otherAnswers,
      connectionErrors: errors,
      wrongAttemptMs: summarize(attemptMs),
      correctLogins: summarize(ok.map((x) => x.loggedIn)),
      correctErrors: correct.length - ok.length,
      cpuCores: round((t.cpu() - cpu0) / seconds),
      ...(threads0 && threads1
        ? {
            eventLoopThreadCores: round((threads1.main - threads0.main) / seconds),
            otherThreadsCores: round((threads1.others - threads0.others) / seconds),
            eventLoopPreemptionsPerSecond: round((threads1.mainPreempted - threads0.mainPreempted) / seconds, 0),
          }
        : {}),
      ...(after && argonBefore
        ? {
            eventLoopLagP99Ms: round((after.get('mailgate_event_loop_delay_seconds{quantile="0.99"}') ?? Number.NaN) * 1000),
            eventLoopLagMaxMs: round((after.get('mailgate_event_loop_delay_seconds{quantile="1"}') ?? Number.NaN) * 1000),
            eventLoopLagMedianMs: round((after.get('mailgate_event_loop_delay_seconds{quantile="0.5"}') ?? Number.NaN) * 1000),
            argon2Verifications: (after.get('mailgate_argon2_verifications_total') ?? 0) - (argonBefore.get('mailgate_argon2_verifications_total') ?? 0),
          }
        : {}),
    };
    await sleep(1000);
  }
}

// ---------------------------------------------------------------------------

async function machine(): Promise<Results['machine']> {
  const cpus = os.cpus();
  const git = (args: string[]) => {
    try {
      return execFileSync('git', args, { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    } catch {
      return null;
    }
  };
  const argonPkg = JSON.parse(readFileSync(path.join(ROOT, 'node_modules', 'argon2', 'package.json'), 'utf8')) as { version: string };
  return {
    cpus: cpus.length,
    cpuModel: cpus[0]?.model ?? 'unknown',
    memoryGiB: round(os.totalmem() / 1024 ** 3, 1),
    kernel: `${os.type()} ${os.release()}`,
    node: process.version,
    openssl: process.versions.openssl ?? 'unknown',
    dovecot: (await commandVersion('dovecot', ['--version'])) ?? 'unknown',
    nginx: (await nginxVersion()) ?? 'not installed',
    argon2Package: argonPkg.version,
    commit: git(['rev-parse', '--short', 'HEAD']),
    dirty: (git(['status', '--porcelain', '--', 'src']) ?? '') !== '',
  };
}

/** The last warnings and errors a mailgate logged. */
function logTail(gateway: MailgateHandle): string[] {
  return readFileSync(gateway.logFile, 'utf8')
    .split('\n')
    .filter((l) => /"level":"(warn|error|fatal)"/.test(l))
    .slice(-10);
}

async function main(): Promise<void> {
  installSignalHandlers();
  const opts = parseOptions(process.argv.slice(2), process.env, ROOT);
  const build = checkBuild();
  if (!build.ok) throw new Error(build.message);
  if (build.stale && build.stale.length > 0) {
    log(`WARNING: dist/ is older than ${build.stale.length} source file(s) (${build.stale.slice(0, 3).join(', ')}${build.stale.length > 3 ? ', ...' : ''}): the bench runs the BUILT binary; run \`npm run build\` to measure the current source.`);
  }

  // Open files: the bench holds N client sockets; mailgate 2N; Dovecot's
  // imap-login about 2N (TLS proxying) for direct sessions.
  const wantFiles = Math.max(65_536, opts.idle * 4 + 8192);
  const limit = await raiseNofile(wantFiles);
  // The bench holds N client sockets; a gateway process holds 2N (client and
  // upstream) and cannot be split.
  if (limit.soft < opts.idle + 1024) {
    throw new Error(
      `the open-file limit is ${limit.soft} and could not be raised; the bench alone needs about ${opts.idle + 1024} for ${opts.idle} idle sessions. ` +
        `Raise it first, e.g. \`ulimit -n ${wantFiles}\` (as root with CAP_SYS_RESOURCE, or after raising the hard limit in /etc/security/limits.conf), or use a smaller --idle.`,
    );
  }
  const gatewayMax = Math.floor((limit.soft - 64) / 2);
  if (gatewayMax < opts.idle) {
    log(
      `WARNING: the open-file limit is ${limit.soft} (hard ${limit.hard}) and cannot be raised here; mailgate is one process with 2 descriptors per session, ` +
        `so it can hold at most about ${gatewayMax} of the ${opts.idle} idle sessions: the rest will fail with EMFILE. Raise the limit (\`ulimit -n ${wantFiles}\`) for a clean run.`,
    );
  }

  let quiet: Results['quietWait'] = undefined;
  if (opts.waitQuiet > 0) {
    const w = await waitForQuiet(opts.waitQuiet, 0.3, (load) => log(`waiting for a quiet machine: other processes use ${load.toFixed(2)} cores...`));
    quiet = { waitedSeconds: w.waitedSeconds, quiet: w.quiet, otherCores: round(w.lastLoad) };
    if (!w.quiet) log(`WARNING: the machine did not get quiet within ${opts.waitQuiet} s (other processes: ${w.lastLoad.toFixed(2)} cores); measuring anyway.`);
  }

  const results: Results = {
    quietWait: quiet,
    generatedAt: new Date().toISOString(),
    command: `npm run bench${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(' ')}` : ''}`,
    options: opts,
    machine: await machine(),
    setup: {
      argon2: { ...ARGON2_DEFAULTS },
      nofile: nofileLimit(),
      messageBytes: 0,
      nginxWorkers: opts.nginxWorkers,
    },
    reference: {},
    targets: {},
  };
  const started = performance.now();
  let envRef: Env | null = null;
  const monitor = new LoadMonitor(() => {
    const e = envRef;
    if (!e) return 0;
    const tree = (pid: number | undefined) => (pid ? processTree(pid).reduce((sum, p) => sum + cpuSeconds(p, true), 0) : 0);
    return (
      tree(e.dovecot.pid) +
      tree(e.mailgate.pid) +
      (e.mailgatePg ? tree(e.mailgatePg.pid) : 0) +
      (e.postgres ? tree(e.postgres.server.pid() ?? undefined) : 0) +
      (e.nginx ? tree(e.nginx.nginx.pid) + tree(e.nginx.auth.pid) : 0)
    );
  });
  monitor.start();
  results.loadAverageAtStart = os.loadavg().map((x) => round(x));
  const env = await setup(opts, results);
  envRef = env;
  results.setup.ciphers = {};
  for (const t of env.targets) {
    const c = await ImapConn.connect(t.ep);
    results.setup.ciphers[t.key] = `${c.protocol} ${c.cipher}`;
    c.destroy();
  }
  monitor.setPhase('latency');
  await warmUp(env);
  await latency(env);
  // Memory before the heavy phases: the FETCH and throughput tests grow the
  // heap and the allocator's pools, which later sessions would silently reuse.
  monitor.setPhase('idle');
  await idleSessions(env);
  monitor.setPhase('throughput');
  await throughput(env);
  monitor.setPhase('fetch');
  await fetchThroughput(env);
  monitor.setPhase('storm');
  await storm(env);
  results.background = monitor.stop();
  results.durationSeconds = round((performance.now() - started) / 1000, 1);
  results.mailgateLogTail = logTail(env.mailgate);
  if (env.mailgatePg) results.mailgatePostgresLogTail = logTail(env.mailgatePg);

  log('stopping everything...');
  await runCleanups();

  results.checks = computeChecks(results);
  mkdirSync(path.dirname(opts.out), { recursive: true });
  writeFileSync(opts.out, `${JSON.stringify(results, null, 2)}\n`);
  process.stdout.write(renderReport(results));
  process.stdout.write(`\nJSON: ${opts.out}\n`);
}

main().then(
  () => process.exit(0),
  async (err: unknown) => {
    process.stderr.write(`bench: ${(err as Error).stack ?? String(err)}\n`);
    await runCleanups();
    process.exit(1);
  },
);
