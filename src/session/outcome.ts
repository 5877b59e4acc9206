/**
 * A session's state, and how it ended: the `outcome` field of its
 * `session closed` log line. Dashboards and alerts count by these names
 * (docs/logs.md lists them); change one only with the docs.
 */
import type { ImapParseErrorReason } from '../protocols/imap/parser.js';
import type { Pop3ParseErrorReason } from '../protocols/pop3/parser.js';
import type { RelayResult } from './relay.js';

/**
 * handshake: TLS (implicit, or after STARTTLS) is being negotiated;
 * prelogin: commands are read and answered;
 * authenticating: a login is being decided (input waits);
 * relaying: bytes flow between client and upstream;
 * closed: over.
 */
export type SessionState = 'handshake' | 'prelogin' | 'authenticating' | 'relaying' | 'closed';

export type SessionOutcome =
  /** The client left (or the connection broke) before logging in. */
  | 'closed-before-login'
  | 'tls-handshake-timeout'
  | 'tls-handshake-failed'
  /** Over a connection limit: told so in one line, and closed. */
  | 'refused-global-limit'
  | 'refused-per-ip-limit'
  /** Before login: no command for `prelogin_idle_seconds`; after login: no traffic for `session_idle_seconds`. */
  | 'idle-timeout'
  /** Not logged in within `prelogin_total_seconds`, however busy. */
  | 'prelogin-deadline'
  | 'too-many-errors'
  | 'too-many-login-failures'
  /** A parse error the connection cannot recover from (the reason is the parser's). */
  | `protocol-error:${ImapParseErrorReason | Pop3ParseErrorReason}`
  | 'logout'
  | 'quit'
  /** A bug: logged in full; the client was told little. */
  | 'internal-error'
  /** While relaying (never the final word: replaced by how the relay ended). */
  | 'relayed'
  /** How a relayed session ended. */
  | Exclude<RelayResult['reason'], 'idle-timeout'>
  /** Ended by mailgate: credentials revoked (or changed), the name blocked, an administrator's `mailgate kick`, or shutdown. */
  | 'revoked'
  | 'blocked'
  | 'kicked'
  | 'shutdown';
