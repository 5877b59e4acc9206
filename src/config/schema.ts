/**
 * The configuration file's shape, defaults and validation rules.
 *
 * Every key is documented in docs/configuration.md; keep the two in step.
 * Objects are strict so that a misspelt key is reported instead of silently
 * falling back to a default, which is the usual way a security setting gets lost.
 */
import net from 'node:net';
import { hostname as osHostname } from 'node:os';
import { z } from 'zod';
import { LIMIT_DEFAULTS as L, LIMIT_MAXIMA as MAX } from './limits.js';

const port = z.number().int().min(1).max(65535);
/** Listeners may use 0 to take any free port (tests do; the log says which). */
const listenPort = z.number().int().min(0).max(65535);
const nonNegativeInt = z.number().int().min(0);
const positiveInt = z.number().int().min(1);

const storeSchema = z
  .strictObject({
    /** sqlite: one file on this host; postgres: one database shared by every node. */
    backend: z.enum(['sqlite', 'postgres']).default('sqlite'),
    path: z.string().min(1).default('../data/mailgate.db'),
    key_file: z.string().min(1).default('../data/mailgate.key'),
    url: z.string().default(''),
    password_file: z.string().default(''),
    pool_size: positiveInt.max(MAX.pool_size).default(L.pool_size),
    busy_timeout_ms: nonNegativeInt.default(5000),
    gateway_busy_timeout_ms: nonNegativeInt.max(MAX.gateway_busy_timeout_ms).default(L.gateway_busy_timeout_ms),
    audit_retention_days: nonNegativeInt.default(365),
  })
  .refine((store) => store.backend !== 'postgres' || /^postgres(ql)?:\/\//.test(store.url), {
    message: 'a postgres:// URL is needed when store.backend is "postgres"',
    path: ['url'],
  })
  .prefault({});

const authSchema = z
  .strictObject({
    argon2_memory_kib: z.number().int().min(1024).max(4 * 1024 * 1024).default(19456),
    argon2_iterations: z.number().int().min(1).max(100).default(2),
    argon2_parallelism: z.number().int().min(1).max(64).default(1),
    max_app_passwords: positiveInt.max(1000).default(25),
    hash_concurrency: nonNegativeInt.max(256).default(L.hash_concurrency),
    hash_queue: nonNegativeInt.default(L.hash_queue),
    login_cache_ttl_seconds: nonNegativeInt.default(L.login_cache_ttl_seconds),
    login_cache_max_entries: nonNegativeInt.default(L.login_cache_max_entries),
    failed_login_cache_ttl_seconds: nonNegativeInt.default(L.failed_login_cache_ttl_seconds),
    failed_login_cache_max_entries: nonNegativeInt.default(L.failed_login_cache_max_entries),
  })
  .prefault({});

const totpSchema = z
  .strictObject({
    issuer: z.string().min(1).max(64).default('mailgate'),
  })
  .prefault({});

const logSchema = z
  .strictObject({
    level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
    /** auto: readable lines at a terminal, JSON lines anywhere else (`serve --log-format` overrides it). */
    format: z.enum(['auto', 'json', 'pretty']).default('auto'),
  })
  .prefault({});

/** A name a client may ask for with SNI: a host name, or a wildcard for one label (`*.example.org`). */
const serverName = z
  .string()
  .regex(/^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/i, 'expected a host name like mail.example.com, or *.example.org')
  .transform((name) => name.toLowerCase());

const certificateSchema = z.strictObject({
  cert: z.string().min(1),
  key: z.string().min(1),
  names: z.array(serverName).default([]),
});

// Relative to the configuration file's folder, like every path (config/ is next to certs/ in a checkout).
const DEFAULT_TLS_CERT = '../certs/mailgate.crt';
const DEFAULT_TLS_KEY = '../certs/mailgate.key';

/**
 * One certificate (`cert`, `key`), or several chosen by SNI name
 * (`[[tls.certificates]]`, the first the default). Both forms at once would
 * leave it unclear which pair is the default, so that is refused; `cert` and
 * `key` are optional here only to tell "left at the default" from "set".
 */
const tlsSchema = z
  .strictObject({
    cert: z.string().min(1).optional(),
    key: z.string().min(1).optional(),
    certificates: z.array(certificateSchema).default([]),
    self_signed: z.boolean().default(true),
    min_version: z.enum(['TLSv1.2', 'TLSv1.3']).default('TLSv1.2'),
  })
  .superRefine((tls, ctx) => {
    if (tls.certificates.length === 0) return;
    for (const key of ['cert', 'key'] as const) {
      if (tls[key] !== undefined) {
        ctx.addIssue({ code: 'custom', path: [key], message: 'not allowed with [[tls.certificates]]: move the pair into the first [[tls.certificates]] entry (the default certificate)' });
        return;
      }
    }
    const owner = new Map<string, number>();
    tls.certificates.forEach((entry, index) => {
      if (index > 0 && entry.names.length === 0) {
        ctx.addIssue({ code: 'custom', path: ['certificates', index, 'names'], message: 'only the first certificate (the default) may have no names: give this one the names it is for' });
      }
      for (const name of entry.names) {
        const first = owner.get(name);
        if (first !== undefined) ctx.addIssue({ code: 'custom', path: ['certificates', index, 'names'], message: `${name} is already a name of tls.certificates[${first}]` });
        else owner.set(name, index);
      }
    });
  })
  .transform((tls) => ({ ...tls, cert: tls.cert ?? DEFAULT_TLS_CERT, key: tls.key ?? DEFAULT_TLS_KEY }))
  .prefault({});

const listenSchema = z.strictObject({
  protocol: z.enum(['imap', 'pop3']),
  host: z.string().min(1).default('127.0.0.1'),
  port: listenPort,
  tls: z.enum(['implicit', 'starttls']).default('implicit'),
  proxy_protocol: z.boolean().default(false),
});

const cidr = z.string().refine((value) => {
  const [address, prefix, extra] = value.split('/');
  if (extra !== undefined || !address || net.isIP(address) === 0) return false;
  if (prefix === undefined) return true;
  const bits = Number(prefix);
  return /^\d+$/.test(prefix) && bits <= (net.isIPv6(address) ? 128 : 32);
}, 'expected an IP address or CIDR, like 10.0.0.0/8');

const metricsSchema = z
  .strictObject({
    listen: z
      .string()
      .regex(/^(\[[0-9a-fA-F:]+\]|[^:\s]+):\d{1,5}$/, 'expected host:port, like 127.0.0.1:9925')
      .or(z.literal(''))
      .default(''),
  })
  .prefault({});

const hostPort = z.string().regex(/^(\[[0-9a-fA-F:]+\]|[^:\s]+):\d{1,5}$/, 'expected host:port, like 127.0.0.1:8443');

const webSchema = z
  .strictObject({
    listen: hostPort.or(z.literal('')).default(L.web_listen),
    tls: z.boolean().default(true),
    public_url: z.url({ protocol: /^https?$/ }).or(z.literal('')).default(''),
    trusted_proxies: z.array(cidr).default([]),
    session_idle_minutes: positiveInt.max(24 * 60).default(L.web_session_idle_minutes),
    session_max_hours: positiveInt.max(24 * 30).default(L.web_session_max_hours),
    reauth_minutes: positiveInt.max(24 * 60).default(L.web_reauth_minutes),
    self_enroll: z.boolean().default(true),
  })
  .prefault({});

const controlSchema = z
  .strictObject({
    /** Empty: `mailgate.sock` in the store's folder (see controlSocketPath in server/control-protocol.ts). */
    socket: z.string().default(''),
  })
  .prefault({});

const proxySchema = z
  .strictObject({
    trusted: z.array(cidr).default([]),
  })
  .prefault({});

function upstreamSchema(defaultPort: number) {
  return z
    .strictObject({
      host: z.string().min(1).default('127.0.0.1'),
      port: port.default(defaultPort),
      tls: z.enum(['none', 'starttls', 'implicit']).default('starttls'),
      ca: z.string().default(''),
      verify: z.boolean().default(true),
      servername: z.string().default(''),
      forward_client_ip: z.boolean().default(true),
    })
    .prefault({});
}

const upstreamLoginSchema = z
  .strictObject({
    master_user: z.string().default('gwmaster'),
    master_password_file: z.string().default(''),
    master_style: z.enum(['authzid', 'separator']).default('authzid'),
    separator: z.string().min(1).max(8).default('*'),
    /** An account the readiness check logs in to as the master user (empty: that check does not run). */
    probe_account: z.string().default(''),
  })
  .prefault({});

const policySchema = z
  .strictObject({
    unknown_users: z.enum(['reject', 'passthrough']).default('reject'),
    main_password_without_2fa: z.enum(['passthrough', 'reject']).default('passthrough'),
    /** Empty: the self-service page's address when the page is on (see webPageUrl), else no link. */
    help_url: z.string().default(''),
    expected_upstream_refusal_ms: nonNegativeInt.max(10_000).default(2000),
  })
  .prefault({});

const timeoutsSchema = z
  .strictObject({
    tls_handshake_seconds: positiveInt.default(L.tls_handshake_seconds),
    prelogin_idle_seconds: positiveInt.default(L.prelogin_idle_seconds),
    prelogin_total_seconds: positiveInt.default(L.prelogin_total_seconds),
    upstream_connect_seconds: positiveInt.default(L.upstream_connect_seconds),
    upstream_response_seconds: positiveInt.default(L.upstream_response_seconds),
    session_idle_seconds: positiveInt.default(L.session_idle_seconds),
    shutdown_grace_seconds: nonNegativeInt.default(L.shutdown_grace_seconds),
    revocation_check_seconds: positiveInt.max(MAX.revocation_check_seconds).default(L.revocation_check_seconds),
  })
  .prefault({});

const limitsSchema = z
  .strictObject({
    max_connections: positiveInt.default(L.max_connections),
    max_connections_per_ip: positiveInt.default(L.max_connections_per_ip),
    max_bad_commands: positiveInt.default(L.max_bad_commands),
    max_login_failures_per_connection: positiveInt.default(L.max_login_failures_per_connection),
    imap_max_line_bytes: z.number().int().min(1024).max(1024 * 1024).default(L.imap_max_line_bytes),
    imap_max_literal_bytes: z.number().int().min(256).max(1024 * 1024).default(L.imap_max_literal_bytes),
    imap_max_nesting: z.number().int().min(1).max(64).default(L.imap_max_nesting),
    pop3_max_line_bytes: z.number().int().min(255).max(64 * 1024).default(L.pop3_max_line_bytes),
    ip_failure_window_seconds: positiveInt.default(L.ip_failure_window_seconds),
    ip_block_after: positiveInt.default(L.ip_block_after),
    ip_repeat_block_after: positiveInt.default(L.ip_repeat_block_after),
    account_failure_window_seconds: positiveInt.default(L.account_failure_window_seconds),
    account_block_after: positiveInt.default(L.account_block_after),
    block_seconds: positiveInt.default(L.block_seconds),
    failure_delay_base_ms: nonNegativeInt.default(L.failure_delay_base_ms),
    failure_delay_max_ms: nonNegativeInt.default(L.failure_delay_max_ms),
    max_concurrent_logins_per_ip: positiveInt.default(L.max_concurrent_logins_per_ip),
  })
  .prefault({});

export const configSchema = z
  .strictObject({
    store: storeSchema,
    auth: authSchema,
    totp: totpSchema,
    log: logSchema,
    tls: tlsSchema,
    listen: z.array(listenSchema).prefault([
      { protocol: 'imap', port: 1993, tls: 'implicit' },
      { protocol: 'imap', port: 1143, tls: 'starttls' },
      { protocol: 'pop3', port: 1995, tls: 'implicit' },
      { protocol: 'pop3', port: 1110, tls: 'starttls' },
    ]),
    upstream: z
      .strictObject({
        imap: upstreamSchema(143),
        pop3: upstreamSchema(110),
        login: upstreamLoginSchema,
      })
      .prefault({}),
    policy: policySchema,
    timeouts: timeoutsSchema,
    limits: limitsSchema,
    proxy: proxySchema,
    metrics: metricsSchema,
    web: webSchema,
    control: controlSchema,
  })
  .superRefine((config, ctx) => {
    if (config.limits.failure_delay_max_ms < config.limits.failure_delay_base_ms) {
      ctx.addIssue({ code: 'custom', path: ['limits', 'failure_delay_max_ms'], message: 'must be at least limits.failure_delay_base_ms' });
    }
    const seen = new Set<string>();
    config.listen.forEach((listener, index) => {
      const key = `${listener.host}:${listener.port}`;
      if (listener.port !== 0 && seen.has(key)) {
        ctx.addIssue({ code: 'custom', path: ['listen', index, 'port'], message: `${key} is used by two listeners` });
      }
      seen.add(key);
    });
  });

export type Config = z.infer<typeof configSchema>;

/**
 * Where users reach the self-service page: `web.public_url`, or derived from
 * `web.listen` (a wildcard host becomes this machine's name); null when the
 * page is off. The failed-login hint links here when `policy.help_url` is unset.
 */
export function webPageUrl(config: Pick<Config, 'web'>, hostname: () => string = osHostname): string | null {
  const { listen, tls, public_url: publicUrl } = config.web;
  if (!listen) return null;
  if (publicUrl) return publicUrl.endsWith('/') ? publicUrl : `${publicUrl}/`;
  const at = listen.lastIndexOf(':');
  let host = listen.slice(0, at);
  if (host === '0.0.0.0' || host === '[::]' || host === '::') host = hostname();
  return `${tls ? 'https' : 'http'}://${host}:${listen.slice(at + 1)}/`;
}

/** The page sessions' timeouts, in milliseconds ([web] session_idle_minutes, session_max_hours). */
export function webSessionLimits(config: Pick<Config, 'web'>): { idleMs: number; maxMs: number } {
  return { idleMs: config.web.session_idle_minutes * 60_000, maxMs: config.web.session_max_hours * 3_600_000 };
}

/** The link in failed-login messages: `policy.help_url`, or the self-service page, or none. */
export function helpUrl(config: Pick<Config, 'web' | 'policy'>): string {
  return config.policy.help_url || webPageUrl(config) || '';
}
/** A certificate the gateway serves, and the SNI names it is chosen for (none: only as the default). */
export interface CertificateConfig {
  cert: string;
  key: string;
  names: string[];
}

/** The certificates to serve, the default first: `[[tls.certificates]]`, or else `[tls] cert` and `key`. */
export function serverCertificates(tls: Config['tls']): CertificateConfig[] {
  return tls.certificates.length > 0 ? tls.certificates : [{ cert: tls.cert, key: tls.key, names: [] }];
}
export type ListenConfig = Config['listen'][number];
export type UpstreamConfig = Config['upstream']['imap'];
export type Protocol = ListenConfig['protocol'];
