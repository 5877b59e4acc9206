/**
 * Shared pieces of the hostile-client suite (test/attack): penalty settings
 * that turn the brute-force defences on with delays small enough for tests,
 * a CLI configuration pointing at a running gateway's database, log queries,
 * and one-call logins over the raw client.
 */
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import type { GatewayHandle } from './gateway.js';
import { generateSync } from 'otplib';
import { RawClient, until } from './raw-client.js';

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

export type LogLine = Record<string, unknown>;

/** Log lines of the gateway with this message and these field values. */
export function logsWith(gw: GatewayHandle, msg: string, fields: LogLine = {}): LogLine[] {
  return gw.logs().filter((l) => l.msg === msg && Object.entries(fields).every(([k, v]) => l[k] === v));
}

/** Waits for the `session closed` line of the client whose source port was `port`. */
export function sessionClosedLine(gw: GatewayHandle, port: number, timeoutMs = 5_000): Promise<LogLine> {
  return until(() => logsWith(gw, 'session closed', { clientPort: port })[0], `session closed for port ${port}`, timeoutMs);
}

/** The gateway's log has no error-level line and no sign of an uncaught exception. */
export function assertNoInternalErrors(gw: GatewayHandle): void {
  const bad = gw.logs().filter((l) => (typeof l.level === 'number' && l.level >= 50) || /uncaught|unhandled|internal error/i.test(String(l.msg)));
  if (bad.length > 0) throw new Error(`gateway logged errors: ${JSON.stringify(bad.slice(0, 5))}`);
}

export interface ConnectAs {
  /** Source address (127.0.0.x). */
  from?: string;
  timeoutMs?: number;
}

/** IMAPS connection with its greeting read. */
export async function imaps(gw: GatewayHandle, opts: ConnectAs = {}): Promise<RawClient> {
  const c = await RawClient.connect({ port: gw.ports.imaps, tls: true, ca: gw.caCert, ...(opts.from ? { localAddress: opts.from } : {}), ...(opts.timeoutMs ? { timeoutMs: opts.timeoutMs } : {}) });
  await c.readLine();
  return c;
}

/** POP3S connection with its greeting read. */
export async function pop3s(gw: GatewayHandle, opts: ConnectAs = {}): Promise<RawClient> {
  const c = await RawClient.connect({ port: gw.ports.pop3s, tls: true, ca: gw.caCert, ...(opts.from ? { localAddress: opts.from } : {}), ...(opts.timeoutMs ? { timeoutMs: opts.timeoutMs } : {}) });
  await c.readLine();
  return c;
}

/** An IMAP string argument that is always safe to send quoted. */
export function imapQuote(text: string): string {
  return `"${text.replace(/[\\"]/g, (c) => `\\${c}`)}"`;
}

/** Logs in over IMAPS; returns the client (still open) and the tagged answer. */
export async function imapsLogin(gw: GatewayHandle, user: string, password: string, opts: ConnectAs = {}): Promise<{ c: RawClient; answer: string; ms: number }> {
  const c = await imaps(gw, opts);
  const started = performance.now();
  const answer = await c.imap('L1', `LOGIN ${imapQuote(user)} ${imapQuote(password)}`, opts.timeoutMs ?? 10_000);
  return { c, answer, ms: performance.now() - started };
}

/** The tagged line of an IMAP answer. */
export function taggedLine(answer: string, tag: string): string {
  return answer.split('\r\n').find((l) => l.startsWith(`${tag} `)) ?? '';
}

/** Turns two-step verification on for an existing account of `store`; returns the TOTP secret. */
export function enableTotp(store: { totp: { enroll(u: string): { secret: string }; confirm(u: string, code: string): unknown } }, user: string): string {
  const { secret } = store.totp.enroll(user);
  store.totp.confirm(user, generateSync({ secret, epoch: Math.floor(Date.now() / 1000) }));
  return secret;
}
