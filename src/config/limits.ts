/**
 * Every abuse limit's default, in one place, with why it is what it is.
 * Most are keys of [limits]; the ones that belong to another section say so.
 * The schema (schema.ts) takes its defaults from here; docs/configuration.md
 * and docs/security.md describe the same keys for operators.
 */
export const LIMIT_DEFAULTS = {
  /** [timeouts] A TLS handshake takes milliseconds; 10 s covers a phone on a bad link, not a slowloris. */
  tls_handshake_seconds: 10,
  /** [timeouts] Mail programs send their login within a second of the greeting; a minute is generous. */
  prelogin_idle_seconds: 60,
  /** [timeouts] Total time to log in, however busy a client keeps itself with NOOP or CAPABILITY. */
  prelogin_total_seconds: 300,
  /** [auth] argon2 runs at once; 0 = cores - 1 (at least 1), so a storm leaves a core to the event loop. */
  hash_concurrency: 0,
  /** [auth] Logins waiting for a hashing slot: 64 × ~40 ms is under 3 s of backlog per core; more fail fast. */
  hash_queue: 64,

  /** Sessions at once, all listeners. Each idle TLS session costs tens of KiB; 10,000 fits a small VM. */
  max_connections: 10_000,
  /** Unauthenticated connections per client IP (IPv6 /64). A household behind NAT with a few
   * phones and laptops opening 2-5 connections each stays well below it; a scanner does not. */
  max_connections_per_ip: 20,
  /** Invalid commands before the session is closed. Real clients send none; scanners send many. */
  max_bad_commands: 3,
  /** Failed logins on one connection before it is closed. Thunderbird retries a wrong password
   * three ways (AUTHENTICATE PLAIN, AUTHENTICATE LOGIN, LOGIN): all three get their answer. */
  max_login_failures_per_connection: 3,
  /** IMAP line: RFC 7162 recommends accepting at least 8192 octets. */
  imap_max_line_bytes: 8192,
  /** IMAP literal before login: usernames and passwords; RFC 7888 LITERAL- caps at 4096 too. */
  imap_max_literal_bytes: 4096,
  /** Parenthesis depth before login: only ID uses a list, one level deep. */
  imap_max_nesting: 8,
  /** POP3 command line: RFC 2449 caps commands at 255 octets; some slack for long SASL lines. */
  pop3_max_line_bytes: 512,

  /** Failures counted per client IP (IPv6 /64) within this window. */
  ip_failure_window_seconds: 600,
  /** 10 distinct wrong passwords in 10 minutes from one address is no typo. */
  ip_block_after: 10,
  /** Per account: higher, since several devices and a shared NAT can each fail a few times. */
  account_failure_window_seconds: 600,
  account_block_after: 20,
  /** How long a block lasts: long enough to make guessing pointless, short enough to heal by itself. */
  block_seconds: 900,
  /** First failure answered after 2 s, doubling (4, 8, ...): invisible to a human, ruinous for a guesser. */
  failure_delay_base_ms: 2000,
  /** Cap on the delay: beyond 15 s mail programs start timing out. */
  failure_delay_max_ms: 15_000,
  /** Credential checks in flight per client; the rest wait. A household's devices reconnecting at once fit. */
  max_concurrent_logins_per_ip: 4,
} as const;

/**
 * Fixed limits (not configurable), here so every bound is in one place.
 */
export const FIXED_LIMITS = {
  /** Bytes a client may pipeline before login before mailgate stops reading from it:
   * a whole Thunderbird login burst is a few hundred bytes, and this is per session. */
  prelogin_pipeline_bytes: 64 * 1024,
  /** Arguments in one pre-login IMAP command (ID has at most 60 = 30 pairs; LOGIN has 2). */
  imap_max_args: 128,
  /** Longest line the upstream may send during the login dialogue (its CAPABILITY line is the longest). */
  upstream_max_line_bytes: 64 * 1024,
} as const;

/** A whole pre-login IMAP command: room for a full line and a full literal, twice over. */
export function imapMaxCommandBytes(lineBytes: number, literalBytes: number): number {
  return 2 * (lineBytes + literalBytes);
}
