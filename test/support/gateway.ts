/**
 * A real mailgate in front of a real Dovecot, for integration tests.
 *
 * The gateway runs in the test process (so tests can read its log stream)
 * with four loopback listeners on free ports: IMAP and POP3, each with
 * implicit TLS and with STARTTLS. Its TLS certificate is the test PKI's, so
 * clients verify it against `handle.caCert`.
 *
 * `handle.store` is a second, synchronous connection to the gateway's
 * database, as an administrator's tool in another process would have (the
 * gateway sees its commits as foreign ones); `handle.gateway.store` is the
 * gateway's own Store, for changes made "in the gateway's process".
 */
import { statSync } from 'node:fs';
import { Writable } from 'node:stream';
import path from 'node:path';
import { parseConfig } from '../../src/config/load.js';
import type { Config } from '../../src/config/schema.js';
import { createLogger } from '../../src/log/logger.js';
import { Gateway } from '../../src/server/gateway.js';
import type { PasswordHasher } from '../../src/store/hasher.js';
import { SqliteRepositories, storeOptionsFromConfig } from '../../src/store/sqlite/repositories.js';
import type { SqliteStore } from '../../src/store/sqlite/sqlite-store.js';
import type { Clock } from '../../src/store/types.js';
import type { DovecotHandle } from './dovecot.js';
import { FAST_ARGON2 } from './store.js';
import { waitUntil } from './timing.js';
import { makeTempDir, removeTempDir } from './tmp.js';

export type LogLine = Record<string, unknown>;

export interface GatewayHandle {
  gateway: Gateway;
  /** A second connection to the gateway's database (reopened if the file was replaced). */
  readonly store: SqliteRepositories;
  /** The gateway's argon2 hasher (its counters tell how many verifications ran). */
  readonly hasher: PasswordHasher;
  /** The gateway's own SQLite connection, for tests that inject faults into it. */
  gatewayConnection(): SqliteRepositories;
  config: Config;
  dir: string;
  caCert: string;
  ports: { imaps: number; imap: number; pop3s: number; pop3: number };
  /** Every log line so far, parsed. */
  logs(): LogLine[];
  /** The raw log stream text, for searching secrets. */
  logText(): string;
  stop(): Promise<void>;
}

export interface GatewayTestOptions {
  /** Deep-merged over the test defaults (TOML-shaped: { policy: { unknown_users: 'passthrough' } }). */
  config?: Record<string, unknown>;
  /** Upstream ports override (e.g. a dead port to test "upstream down"). */
  upstreamImapPort?: number;
  upstreamPop3Port?: number;
  now?: Clock;
  /** argon2id cost for the gateway's store (default FAST_ARGON2); timing tests make hashing dominate. */
  argon2?: { memoryKib: number; iterations: number; parallelism: number };
  /** The gateway's environment; default: MAILGATE_MASTER_PASSWORD set to the Dovecot master password. */
  env?: NodeJS.ProcessEnv;
  /** The readiness checks' pace (they run while `metrics.listen` is set). */
  healthIntervalMs?: number;
}

function merge(base: Record<string, unknown>, extra: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base };
  for (const [key, value] of Object.entries(extra)) {
    const current = out[key];
    out[key] =
      value && typeof value === 'object' && !Array.isArray(value) && current && typeof current === 'object' && !Array.isArray(current)
        ? merge(current as Record<string, unknown>, value as Record<string, unknown>)
        : value;
  }
  return out;
}

export async function startGateway(dovecot: DovecotHandle, options: GatewayTestOptions = {}): Promise<GatewayHandle> {
  const dir = await makeTempDir('gw');
  const raw = merge(
    {
      store: { path: path.join(dir, 'mailgate.db'), key_file: path.join(dir, 'mailgate.key') },
      auth: { argon2_memory_kib: FAST_ARGON2.memoryKib, argon2_iterations: FAST_ARGON2.iterations },
      log: { level: 'debug' },
      tls: { cert: dovecot.pki.serverCert, key: dovecot.pki.serverKey, self_signed: false },
      listen: [
        { protocol: 'imap', host: '127.0.0.1', port: 0, tls: 'implicit' },
        { protocol: 'imap', host: '127.0.0.1', port: 0, tls: 'starttls' },
        { protocol: 'pop3', host: '127.0.0.1', port: 0, tls: 'implicit' },
        { protocol: 'pop3', host: '127.0.0.1', port: 0, tls: 'starttls' },
      ],
      upstream: {
        imap: { host: '127.0.0.1', port: options.upstreamImapPort ?? dovecot.imapPort, tls: 'starttls', ca: dovecot.caCert },
        pop3: { host: '127.0.0.1', port: options.upstreamPop3Port ?? dovecot.pop3Port, tls: 'starttls', ca: dovecot.caCert },
        login: { master_user: dovecot.master.name, master_style: 'authzid' },
      },
      // The test Dovecot refuses fast; timing is evened out from measured refusals only.
      policy: { help_url: 'https://mail.example.test/app-passwords', expected_upstream_refusal_ms: 0 },
      timeouts: { upstream_connect_seconds: 3, upstream_response_seconds: 5 },
      // The page listens on 127.0.0.1:8443 by default; tests that want it ask for port 0.
      web: { listen: '' },
      // Brute-force penalties off by default so functional tests can fail
      // logins freely from 127.0.0.1; the attack suite turns them back on.
      limits: {
        failure_delay_base_ms: 0,
        failure_delay_max_ms: 0,
        ip_block_after: 100_000,
        ip_repeat_block_after: 100_000,
        account_block_after: 100_000,
        max_connections_per_ip: 1000,
        max_concurrent_logins_per_ip: 64,
      },
    },
    options.config ?? {},
  );
  const config = parseConfig(raw, 'test config');
  const chunks: string[] = [];
  const sink = new Writable({
    write(chunk, _encoding, done) {
      chunks.push(String(chunk));
      done();
    },
  });
  const log = createLogger({ level: 'debug', destination: sink });
  let gateway: Gateway;
  try {
    gateway = await Gateway.start({
      config,
      log,
      argon2: options.argon2 ?? FAST_ARGON2,
      ...(options.now ? { now: options.now } : {}),
      ...(options.healthIntervalMs ? { healthIntervalMs: options.healthIntervalMs } : {}),
      env: options.env ?? { MAILGATE_MASTER_PASSWORD: dovecot.master.password },
    });
  } catch (err) {
    await removeTempDir(dir);
    throw err;
  }
  const port = (protocol: 'imap' | 'pop3', tls: 'implicit' | 'starttls') =>
    gateway.listeners.find((l) => l.config.protocol === protocol && l.config.tls === tls)?.port ?? 0;
  // The gateway's own hasher: app passwords made here get the gateway's argon2 cost.
  const admin = adminConnection(config, gateway.services.hasher, options.now);
  return {
    gateway,
    get store() {
      return admin.get();
    },
    hasher: gateway.services.hasher,
    gatewayConnection: () => (gateway.store as SqliteStore).currentConnection(),
    config,
    dir,
    caCert: dovecot.pki.caCert,
    ports: { imaps: port('imap', 'implicit'), imap: port('imap', 'starttls'), pop3s: port('pop3', 'implicit'), pop3: port('pop3', 'starttls') },
    logs: () =>
      chunks
        .join('')
        .split('\n')
        .filter(Boolean)
        .map((line) => JSON.parse(line) as LogLine),
    logText: () => chunks.join(''),
    async stop() {
      admin.close();
      await gateway.stop(0);
      await removeTempDir(dir);
    },
  };
}

/**
 * The administrator's connection to the gateway's database, opened when
 * first needed and again when the file was replaced (a test restores a copy):
 * found by stat, never by opening the file outside SQLite.
 */
function adminConnection(config: Config, hasher: PasswordHasher, now?: Clock): { get(): SqliteRepositories; close(): void } {
  let open: { repositories: SqliteRepositories; identity: string } | null = null;
  const identity = () => {
    try {
      const st = statSync(config.store.path);
      return `${st.dev}:${st.ino}`;
    } catch {
      return 'missing';
    }
  };
  return {
    get() {
      const now_ = identity();
      if (open && open.identity === now_) return open.repositories;
      open?.repositories.close();
      const repositories = SqliteRepositories.open({ ...storeOptionsFromConfig(config), hasher, mustExist: true, ...(now ? { now } : {}) });
      open = { repositories, identity: now_ };
      return repositories;
    },
    close() {
      open?.repositories.close();
      open = null;
    },
  };
}

/** The gateway's log lines with this message (and, optionally, these field values). */
export function logLines(gw: Pick<GatewayHandle, 'logs'>, msg: string, fields: LogLine = {}): LogLine[] {
  return gw.logs().filter((l) => l.msg === msg && Object.entries(fields).every(([k, v]) => l[k] === v));
}

/**
 * How many attempts the log reports with this message (and fields): a line
 * stands for one, a summary line of repeats (`repeated: N`, see
 * src/log/repeated-lines.ts) for N. Writes the pending summaries first.
 */
export function attemptsLogged(gw: Pick<GatewayHandle, 'logs' | 'gateway'>, msg: string, fields: LogLine = {}): number {
  gw.gateway.services.repeatedLines.flush();
  return logLines(gw, msg, fields).reduce((sum, line) => sum + (typeof line.repeated === 'number' ? line.repeated : 1), 0);
}

/** Waits for the `session closed` line of the session whose client (source) port was `clientPort`. */
export function sessionClosed(gw: Pick<GatewayHandle, 'logs'>, clientPort: number, timeoutMs = 5_000): Promise<LogLine> {
  return waitUntil(() => logLines(gw, 'session closed', { clientPort })[0], `session closed for client port ${clientPort}`, timeoutMs);
}
