/**
 * Every limit in one place, with why each default is what it is: timeouts,
 * sizes, counts and caches, configurable (LIMIT_DEFAULTS, LIMIT_MAXIMA) or
 * fixed (FIXED_LIMITS). Most configurable ones are keys of [limits]; the ones
 * that belong to another section say so.
 * The schema (schema.ts) takes its defaults from here; docs/configuration.md
 * and docs/security.md describe the same keys for operators.
 * test/config/limits.test.ts checks that every entry has its why-line and that
 * the schema's defaults are these.
 */
export const LIMIT_DEFAULTS = {
  /** [timeouts] A TLS handshake takes milliseconds; 10 s covers a phone on a bad link, not a slowloris. */
  tls_handshake_seconds: 10,
  /** [timeouts] Mail programs send their login within a second of the greeting; a minute is generous. */
  prelogin_idle_seconds: 60,
  /** [timeouts] Total time to log in, however busy a client keeps itself with NOOP or CAPABILITY. */
  prelogin_total_seconds: 300,
  /** [timeouts] Connect and TLS to an upstream on the same host or LAN takes milliseconds; 10 s rides out
   * a busy server without leaving the client, or its login slot, waiting on a dead one. */
  upstream_connect_seconds: 10,
  /** [timeouts] Each upstream answer while logging in. Dovecot holds a refusal back by auth_failure_delay
   * (2 s) and may hash too; 20 s covers a loaded server while bounding how long a hung one holds a login slot. */
  upstream_response_seconds: 20,
  /** [timeouts] After login: clients re-issue IMAP IDLE every 29 minutes (RFC 2177) and RFC 9051 asks
   * for an autologout timer of at least 30; 35 minutes never cuts an idle client, and still reaps dead ones. */
  session_idle_seconds: 35 * 60,
  /** [timeouts] On SIGTERM: a login or a short command finishes within seconds; IDLE sessions would
   * wait forever, and mail programs reconnect anyway. 10 s is well inside systemd's 90 s stop timeout. */
  shutdown_grace_seconds: 10,
  /** [timeouts] How often open sessions are re-checked for revocation: one cheap look at the store's change marker (SQLite's data_version)
   * per tick when nothing changed, so 2 s keeps the "closed within 5 s" promise with room to spare. */
  revocation_check_seconds: 2,
  /** [store] How long a gateway write waits for the database lock. SQLite calls block the event loop,
   * so every session stalls while it waits: 100 ms is far above a normal commit and short enough to be felt by no one. */
  gateway_busy_timeout_ms: 100,
  /** [store] PostgreSQL connections per node: a login holds one for a few round trips (under a millisecond on a
   * LAN), so 10 serve thousands of logins a second, and 10 nodes stay within PostgreSQL's default 100. */
  pool_size: 10,
  /** [auth] argon2 runs at once; 0 = cores - 1 (at least 1), so a storm leaves a core to the event loop. */
  hash_concurrency: 0,
  /** [auth] Logins waiting for a hashing slot: 64 × ~40 ms is under 3 s of backlog per core; more fail fast. */
  hash_queue: 64,
  /** [auth] Verified-login cache lifetime: a working day's reconnects mostly fall within 15 minutes of
   * each other, and a hit still re-reads the app password's row, so a longer life costs no revocation delay. */
  login_cache_ttl_seconds: 900,
  /** [auth] Verified logins remembered: one per (account, app password) in use, so 10,000 covers the
   * devices of a few thousand users, at a few hundred bytes each (a few MiB). */
  login_cache_max_entries: 10_000,
  /** [auth] Refused logins remembered (account, password, protocol: any password, not only app-password
   * shaped ones): a mail program with an old saved password retries it every few minutes, and a storm
   * repeats one guess from many addresses, so 5 minutes catches the next repeat without hashing it again
   * or asking the upstream. */
  failed_login_cache_ttl_seconds: 300,
  /** [auth] About 200 bytes each, so 10,000 is 2 MiB: room for the stale passwords of every device of a few
   * thousand users, and for a storm's repeated guesses; distinct guesses (which do not repeat) are evicted first. */
  failed_login_cache_max_entries: 10_000,

  /** [web] The self-service page, on by default so `npm start` shows it; loopback, like the mail listeners' defaults. */
  web_listen: '127.0.0.1:8443',
  /** [web] A page session unused this long ends: an unattended browser on a shared computer stops being a way in. */
  web_session_idle_minutes: 15,
  /** [web] However active, a page session ends after a working day: the password is asked again. */
  web_session_max_hours: 8,
  /** [web] Creating, revoking, turning 2-step verification off need a password confirmed this recently. */
  web_reauth_minutes: 10,
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
  /** Repeats of a wrong password already counted (a stale saved password, or a storm repeating one guess) from one
   * address in the window. A stale Thunderbird fails 3 ways per check, every few minutes: under 10 per window per
   * device, so a household with several stale devices stays far below 60, while an address repeating one guess
   * through the answer delays (at least 2 s each, a few at once) reaches it within a minute. */
  ip_repeat_block_after: 60,
  /** Per account, the same window as per IP: the two counters then tell the same story in the log. */
  account_failure_window_seconds: 600,
  /** Per account: higher than per IP, since several devices and a shared NAT can each fail a few times. */
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
 * Upper bounds the schema enforces on configurable values, where a larger
 * value would break a promise mailgate makes.
 */
export const LIMIT_MAXIMA = {
  /** [timeouts] Sessions of a revoked app password are closed "within 5 seconds" (issue 5, docs/security.md):
   * a check interval longer than that would break the promise. */
  revocation_check_seconds: 5,
  /** [store] A gateway write blocks every session while it waits for the lock; 5 s is the longest freeze tolerated. */
  gateway_busy_timeout_ms: 5000,
  /** [store] PostgreSQL's own default max_connections is 100: one node cannot usefully hold more than that. */
  pool_size: 100,
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
  /** Decoded SASL response at any step: PLAIN is authzid, authcid and password of at most 255 octets
   * each (RFC 4616) plus two NULs, 767 octets; 1024 is that rounded up, and nothing larger is buffered. */
  sasl_max_decoded_bytes: 1024,
  /** Each SASL PLAIN field (authzid, authcid, passwd): RFC 4616 section 2 caps them at 255 octets. */
  sasl_max_field_bytes: 255,
  /** IMAP tag: clients use a few characters ("A0001", "1.23"); 64 fits any of them and bounds what
   * is echoed back in a tagged answer. */
  imap_max_tag_bytes: 64,
  /** (account, wrong password) fingerprints kept so that a repeated stale password escalates nothing:
   * at about 100 bytes each, 50,000 is 5 MiB at most, and more than the distinct failures the
   * per-IP and per-account blocks let through in one window from any realistic number of sources. */
  abuse_max_fingerprints: 50_000,
  /** Repeated refusals (the same wrong password again) and attempts refused by a block are written to the log
   * once per address per this many seconds, with a count, instead of once per attempt: a storm of repeats
   * otherwise writes megabytes a minute. fail2ban still sees every such address once per period. */
  repeated_failure_log_seconds: 10,
  /** ...of which the first few of each kind (same address, user and reason) are still written one by one:
   * Thunderbird retries a stale password three ways (AUTHENTICATE PLAIN, AUTHENTICATE LOGIN, LOGIN), and each
   * of those is worth its own line; a storm's hundredth repeat is not. */
  repeated_failure_log_burst: 3,
  /** After LOGOUT/QUIT to the upstream (the start-up probe, the page's password check), how long its answer may
   * take before the socket is closed anyway: a second is plenty on a LAN, and nothing waits on it. */
  upstream_logout_grace_ms: 1000,
  /** How often expired failure counters and old audit events are removed: every 10 minutes keeps the tables
   * small under a steady trickle of guesses, at the cost of one indexed DELETE each. */
  housekeeping_interval_seconds: 600,
  /** How often the gateway's worker copies the WAL into the database (SQLite): often enough that the WAL stays
   * small under a storm of failed logins, each a few row writes. */
  checkpoint_interval_seconds: 1,
  /** While the database is unusable, or its writes fail, how often a login may try it again (a reopen or a
   * write probe): once a second recovers fast without hammering a broken file. */
  store_retry_seconds: 1,
  /** PostgreSQL: how long a connection attempt or a statement may take before it counts as a failure (and
   * logins fail closed): a database on the LAN answers in milliseconds, and a login must not hang for the
   * kernel's TCP timeout when the database host vanished. */
  postgres_timeout_seconds: 5,
  /** PostgreSQL: the longest wait between attempts to reconnect the connection that LISTENs for other nodes'
   * changes (it starts at a quarter second and doubles): polling keeps the 5-second revocation promise meanwhile. */
  postgres_listen_retry_max_seconds: 5,
  /** Refusal durations remembered per protocol and source, to draw the answer time of the other kind from:
   * 32 follows a change in the upstream's speed within a minute of refusals, and costs nothing. */
  refusal_timing_samples: 32,
  /** The longest a refusal is held back to look like an upstream one: Dovecot's own delay is 2 s, and a stuck
   * upstream (timeouts of 20 s) must not stall every refusal with it. */
  refusal_timing_max_floor_ms: 5000,
  /** PROXY protocol v1 header: the spec (section 2.1) caps it at 107 bytes, CRLF included. */
  proxy_v1_max_bytes: 107,
  /** PROXY protocol v2 header: the 16-byte fixed part plus 536 bytes of addresses and TLVs. The largest
   * address block (AF_UNIX) is 216 bytes, which leaves room for the few TLVs a load balancer adds. */
  proxy_v2_max_bytes: 16 + 536,
  /** POP3 SASL continuation line (after a bare AUTH): the base64 of the largest decoded response
   * (sasl_max_decoded_bytes) is 1,368 characters, so 2048 leaves room for SASL's own "too long" answer
   * (the connection stays), and anything longer ends the connection before more of it is buffered. */
  pop3_max_sasl_line_bytes: 2048,
  /** Longest command line sent to the upstream POP3 server, CRLF included: RFC 2449 section 4 caps it at
   * 255 octets. A password that would make it longer is refused rather than sent to a server that may cut it. */
  pop3_upstream_max_command_bytes: 255,
  /** IMAP strings sent upstream longer than this go as literals: some servers cap quoted strings, none
   * caps literals this small, and a pre-login value (a password, an ID value) is never near it. */
  imap_upstream_max_quoted_bytes: 1024,
  /** ID field/value pairs, from a client or sent upstream: RFC 2971 section 3.3 allows at most 30. */
  imap_id_max_pairs: 30,
  /** ID field name: RFC 2971 section 3.3 caps it at 30 octets. */
  imap_id_max_field_bytes: 30,
  /** ID value: RFC 2971 section 3.3 caps it at 1024 octets. */
  imap_id_max_value_bytes: 1024,
  /** A certificate that expires within this many days is warned about at start and at every reload, and fails
   * `mailgate check`: Let's Encrypt renews 30 days ahead and warns at 20, so a certificate still this close to its
   * end means renewal has failed, and two weeks leave time to fix it. */
  certificate_expiry_warning_days: 14,
  /** A client's ID name and version in the log, in characters each: "Thunderbird" and "153.0.1" fit many
   * times over, and a 1 KiB value repeated on every session line would not. */
  imap_id_log_max_chars: 64,
  /** One request on the control socket (`mailgate who`, `kick`): a short JSON line with at most a username
   * (256 bytes); 4 KiB holds any of them, and bounds what a local client can make the gateway buffer. */
  control_request_bytes: 4096,
  /** How long a control-socket connection may take to send its request, and the CLI waits for the answer:
   * both sides are on one host and answer in milliseconds; a client that stalls is dropped. */
  control_timeout_seconds: 5,
  /** Audit events `mailgate audit` shows without --limit: the newest hundred fill a screen or two, and more is
   * what --since or --limit are for. */
  audit_default_rows: 100,
  /** The most `mailgate audit --limit` takes: a busy year's trail fits, and one answer never holds more in memory. */
  audit_max_rows: 1_000_000,
  /** Open files the process needs besides two sockets per session (the listeners, the store's database, -wal and
   * -shm, the log, Node's own descriptors, the page's and the metrics' connections): 100 covers them with room. */
  file_descriptor_margin: 100,
  /** How often the readiness checks of /readyz run in the background (a write probe of the store, each upstream's
   * connect and TLS, the master login): a load balancer asks every few seconds and gets the last results, so the
   * mail server sees one connection and one login per protocol every 10 s, and an outage shows within 10 s. */
  health_check_interval_seconds: 10,
  /** Each readiness probe of an upstream (connect, TLS, each answer): a mail server that takes longer than 5 s to
   * greet or answer a CAPABILITY is not ready for users either, and the next round is not held up for long. */
  health_check_timeout_seconds: 5,
  /** A passing readiness result older than this no longer counts ("the master login worked in the last minute"):
   * the checks run every 10 s, so only a check that hangs or stopped running leaves a result this old. */
  health_check_max_age_seconds: 60,
} as const;

/** A whole pre-login IMAP command: room for a full line and a full literal, twice over. */
export function imapMaxCommandBytes(lineBytes: number, literalBytes: number): number {
  return 2 * (lineBytes + literalBytes);
}
