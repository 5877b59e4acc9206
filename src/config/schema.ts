/**
 * The configuration file's shape, defaults and validation rules.
 *
 * Every key is documented in docs/configuration.md; keep the two in step.
 * Objects are strict so that a misspelt key is reported instead of silently
 * falling back to a default, which is the usual way a security setting gets lost.
 */
import { z } from 'zod';
import { LIMIT_DEFAULTS as L } from './limits.js';

const port = z.number().int().min(1).max(65535);
/** Listeners may use 0 to take any free port (tests do; the log says which). */
const listenPort = z.number().int().min(0).max(65535);
const nonNegativeInt = z.number().int().min(0);
const positiveInt = z.number().int().min(1);

const storeSchema = z
  .strictObject({
    path: z.string().min(1).default('data/mailgate.db'),
    key_file: z.string().min(1).default('data/mailgate.key'),
    busy_timeout_ms: nonNegativeInt.default(5000),
  })
  .prefault({});

const authSchema = z
  .strictObject({
    argon2_memory_kib: z.number().int().min(1024).max(4 * 1024 * 1024).default(19456),
    argon2_iterations: z.number().int().min(1).max(100).default(2),
    argon2_parallelism: z.number().int().min(1).max(64).default(1),
    max_app_passwords: positiveInt.max(1000).default(25),
    hash_concurrency: nonNegativeInt.max(256).default(0),
    hash_queue: nonNegativeInt.default(64),
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
  })
  .prefault({});

const tlsSchema = z
  .strictObject({
    cert: z.string().min(1).default('certs/mailgate.crt'),
    key: z.string().min(1).default('certs/mailgate.key'),
    self_signed: z.boolean().default(true),
    min_version: z.enum(['TLSv1.2', 'TLSv1.3']).default('TLSv1.2'),
  })
  .prefault({});

const listenSchema = z.strictObject({
  protocol: z.enum(['imap', 'pop3']),
  host: z.string().min(1).default('127.0.0.1'),
  port: listenPort,
  tls: z.enum(['implicit', 'starttls']).default('implicit'),
});

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
  })
  .prefault({});

const policySchema = z
  .strictObject({
    unknown_users: z.enum(['reject', 'passthrough']).default('reject'),
    main_password_without_2fa: z.enum(['passthrough', 'reject']).default('passthrough'),
    help_url: z.string().default('https://example.com/app-passwords'),
  })
  .prefault({});

const timeoutsSchema = z
  .strictObject({
    tls_handshake_seconds: positiveInt.default(10),
    prelogin_idle_seconds: positiveInt.default(60),
    upstream_connect_seconds: positiveInt.default(10),
    upstream_response_seconds: positiveInt.default(20),
    session_idle_seconds: positiveInt.default(35 * 60),
    shutdown_grace_seconds: nonNegativeInt.default(10),
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
  })
  .prefault({});

export const configSchema = z
  .strictObject({
    store: storeSchema,
    auth: authSchema,
    totp: totpSchema,
    log: logSchema,
    tls: tlsSchema,
    listen: z
      .array(listenSchema)
      .default([
        { protocol: 'imap', host: '127.0.0.1', port: 1993, tls: 'implicit' },
        { protocol: 'pop3', host: '127.0.0.1', port: 1995, tls: 'implicit' },
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
  })
  .superRefine((config, ctx) => {
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
export type ListenConfig = Config['listen'][number];
export type UpstreamConfig = Config['upstream']['imap'];
export type Protocol = ListenConfig['protocol'];
