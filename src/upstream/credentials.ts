/**
 * How mailgate logs in upstream for a session, independent of protocol:
 * as the master user on the account's behalf, or with the client's own
 * credentials (passthrough).
 */

export type UpstreamCredentials =
  | { kind: 'master'; user: string; style: 'authzid' | 'separator'; masterUser: string; masterPassword: Buffer; separator: string }
  | { kind: 'passthrough'; user: string; password: Buffer };

/** Where the client really is, for the upstream's logs and its own IP checks. */
export interface ClientOrigin {
  clientIp: string;
  clientPort: number;
  localIp: string;
  localPort: number;
  sessionId: string;
}

export type UpstreamLoginResult =
  | {
      ok: true;
      socket: import('node:net').Socket;
      /** The upstream's line that confirmed the login, e.g. `mg3 OK [CAPABILITY ...] Logged in`. */
      confirmation: string;
      /** Capabilities after login (IMAP), or the CAPA list (POP3). */
      capabilities: string[];
      /** Bytes the upstream sent after its confirmation; the relay forwards them first. */
      leftover: Buffer;
    }
  /** The upstream refused the client's own credentials (passthrough only). */
  | { ok: false; kind: 'rejected'; reason: string; code: string | null }
  /**
   * The master login was accepted as such, but the mail server has no such
   * account (Dovecot: IMAP `NO [AUTHORIZATIONFAILED]`, POP3 `-ERR [AUTH]
   * Authorization failed`): the user's login fails, nothing is wrong with the
   * master password.
   */
  | { ok: false; kind: 'no-such-account'; reason: string; code: string | null }
  /** Anything else: unreachable, TLS, timeouts, protocol errors, master login refused. */
  | { ok: false; kind: 'unavailable'; reason: string; code: string | null };

/**
 * The SASL PLAIN message (authzid NUL authcid NUL password) for these
 * credentials, or null when a part contains NUL and so cannot be framed.
 */
export function saslPlainMessage(credentials: UpstreamCredentials): Buffer | null {
  const parts =
    credentials.kind === 'master' && credentials.style === 'authzid'
      ? [Buffer.from(credentials.user, 'utf8'), Buffer.from(credentials.masterUser, 'utf8'), credentials.masterPassword]
      : (({ user, password }) => [Buffer.alloc(0), Buffer.from(user, 'utf8'), password])(loginPair(credentials));
  if (parts.some((part) => part.includes(0))) return null;
  return Buffer.concat([parts[0]!, NUL, parts[1]!, NUL, parts[2]!]);
}

/** The (user, password) pair for a plain LOGIN / USER+PASS. */
export function loginPair(credentials: UpstreamCredentials): { user: string; password: Buffer } {
  if (credentials.kind === 'passthrough') return { user: credentials.user, password: credentials.password };
  if (credentials.style === 'separator') {
    return { user: `${credentials.user}${credentials.separator}${credentials.masterUser}`, password: credentials.masterPassword };
  }
  // authzid style over LOGIN is impossible; callers use SASL PLAIN for it.
  throw new Error('master login with authzid needs SASL PLAIN');
}

const NUL = Buffer.from([0]);
