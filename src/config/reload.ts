/**
 * What a reload (SIGHUP) may change in a running gateway, and what waits for
 * a restart. Every key of the configuration is in exactly one of the two
 * lists (test/config/reload.test.ts checks it), by section or by key; a key
 * in neither is treated as needing a restart, the safe side.
 *
 * A changed restart key keeps its running value until the restart, so the
 * configuration in force always describes what the process really does
 * (the page's origin and the help link, say, never disagree).
 */
import type { Config } from './schema.js';

/** Applied by a reload, to new work: new connections, new logins, new handshakes, the next timer. */
export const LIVE_KEYS: readonly string[] = [
  'log.level',
  'tls',
  'upstream',
  'policy',
  'timeouts',
  'limits',
  'proxy',
  'auth.login_cache_ttl_seconds',
  'auth.login_cache_max_entries',
  'auth.failed_login_cache_ttl_seconds',
  'auth.failed_login_cache_max_entries',
  'store.audit_retention_days',
  'web.reauth_minutes',
  'web.self_enroll',
];

/** Read once at start: the sockets, the store and its hasher, the page's server. */
export const RESTART_KEYS: readonly string[] = [
  'listen',
  // The log's destination stream is chosen at start.
  'log.format',
  'metrics.listen',
  'store.backend',
  'store.path',
  'store.key_file',
  'store.url',
  'store.password_file',
  'store.pool_size',
  'store.busy_timeout_ms',
  'store.gateway_busy_timeout_ms',
  'auth.argon2_memory_kib',
  'auth.argon2_iterations',
  'auth.argon2_parallelism',
  'auth.max_app_passwords',
  'auth.hash_concurrency',
  'auth.hash_queue',
  'totp.issuer',
  'web.listen',
  'web.tls',
  'web.public_url',
  'web.trusted_proxies',
  'web.session_idle_minutes',
  'web.session_max_hours',
  'control.socket',
];

export interface Reconciled {
  /** The configuration to run with: the new one, with the restart keys' running values. */
  config: Config;
  /** Keys whose change takes effect now. */
  applied: string[];
  /** Keys whose change waits for a restart. */
  needRestart: string[];
}

type Table = Record<string, unknown>;
const isTable = (value: unknown): value is Table => typeof value === 'object' && value !== null && !Array.isArray(value);

/** Every leaf of a configuration as a dotted path (arrays, such as `listen`, are one leaf). */
export function leafKeys(value: Table, prefix = ''): string[] {
  return Object.entries(value).flatMap(([key, child]) => {
    const here = prefix ? `${prefix}.${key}` : key;
    return isTable(child) ? leafKeys(child, here) : [here];
  });
}

function at(root: Table, dotted: string): unknown {
  return dotted.split('.').reduce<unknown>((node, part) => (isTable(node) ? node[part] : undefined), root);
}

function setAt(root: Table, dotted: string, value: unknown): void {
  const parts = dotted.split('.');
  const last = parts.pop()!;
  let node = root;
  for (const part of parts) node = node[part] as Table;
  node[last] = value;
}

/** Which list covers a key: by its own name or one of its sections. */
function listed(key: string, list: readonly string[]): boolean {
  return list.some((entry) => key === entry || key.startsWith(`${entry}.`));
}

/** Whether a reload applies this key; unlisted keys wait for a restart. */
export function appliesLive(key: string): boolean {
  return listed(key, LIVE_KEYS) && !listed(key, RESTART_KEYS);
}

/** Compares the running configuration with a newly read one. */
export function reconcile(running: Config, next: Config): Reconciled {
  const config = structuredClone(next) as unknown as Table;
  const applied: string[] = [];
  const needRestart: string[] = [];
  const keys = new Set([...leafKeys(running as unknown as Table), ...leafKeys(next as unknown as Table)]);
  for (const key of keys) {
    const before = at(running as unknown as Table, key);
    if (JSON.stringify(before) === JSON.stringify(at(next as unknown as Table, key))) continue;
    if (appliesLive(key)) {
      applied.push(key);
    } else {
      needRestart.push(key);
      setAt(config, key, structuredClone(before));
    }
  }
  return { config: config as unknown as Config, applied, needRestart };
}
