/**
 * Shared pieces of the hostile-client suite (test/attack): penalty settings
 * that turn the brute-force defences on with delays small enough for tests,
 * a CLI configuration pointing at a running gateway's database, a check of
 * the log for internal errors, and a one-call IMAPS login.
 */
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import type { GatewayHandle } from './gateway.js';
import { imapQuote, imaps, type ImapClient } from './imap-client.js';
import type { ConnectAs } from './raw-client.js';
import { isErrorLevel } from './log-levels.js';

/**
 * Penalties on, scaled down: 50 ms first delay doubling to 400 ms, a block
 * after 10 failures per IP. startGateway's defaults turn them off.
 */
export const PENALTIES_ON = {
  failure_delay_base_ms: 50,
  failure_delay_max_ms: 400,
  ip_block_after: 10,
  account_block_after: 20,
  block_seconds: 120,
  max_connections_per_ip: 50,
  max_concurrent_logins_per_ip: 4,
} as const;

/**
 * A TOML file for the built `mailgate` CLI that opens the gateway's own
 * database and key (as an administrator on the same host would).
 */
export function cliConfigFor(gw: GatewayHandle, extra = ''): string {
  const file = path.join(gw.dir, `cli-${Math.random().toString(36).slice(2)}.toml`);
  writeFileSync(
    file,
    `[store]
path = ${JSON.stringify(gw.config.store.path)}
key_file = ${JSON.stringify(gw.config.store.key_file)}
busy_timeout_ms = 2000

[auth]
argon2_memory_kib = 1024
argon2_iterations = 1
${extra}
`,
  );
  return file;
}

/** The gateway's log has no error-level line and no sign of an uncaught exception. */
export function assertNoInternalErrors(gw: GatewayHandle): void {
  const bad = gw.logs().filter((l) => isErrorLevel(l) || /uncaught|unhandled|internal error/i.test(String(l.msg)));
  if (bad.length > 0) throw new Error(`gateway logged errors: ${JSON.stringify(bad.slice(0, 5))}`);
}

/** Logs in over IMAPS (tag L1); returns the client (still open), the whole answer and how long it took. */
export async function imapsLogin(gw: GatewayHandle, user: string, password: string, as: ConnectAs = {}): Promise<{ c: ImapClient; answer: string; ms: number }> {
  const c = await imaps(gw, as);
  const started = performance.now();
  const answer = await c.command('L1', `LOGIN ${imapQuote(user)} ${imapQuote(password)}`, as.timeoutMs ?? 10_000);
  return { c, answer, ms: performance.now() - started };
}
