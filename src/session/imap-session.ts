/**
 * The IMAP side of a session before login (RFC 9051/3501): greeting,
 * CAPABILITY, NOOP, LOGOUT, STARTTLS, ID, LOGIN and AUTHENTICATE. Everything
 * else is refused with the client's tag. After login the shared Session
 * relays bytes and this class is out of the picture.
 */
import { ACCOUNT_BLOCKED, APP_PASSWORD_REVOKED, appPasswordRequiredFarewell, IDLE_TIMEOUT, loginFailedAlert, MAILBOX_IN_USE, SHUTTING_DOWN, TEMPORARY_FAILURE, TOO_MANY_ERRORS, twoFactorEnabledFarewell } from '../auth/messages.js';
import { preloginCapabilities } from '../protocols/imap/capabilities.js';
import { continuation, tagged, untagged, untaggedData } from '../protocols/imap/compiler.js';
import { clientIdSummary, parseIdArgs } from '../protocols/imap/id.js';
import { ImapParser, type ImapArg, type ImapParseEvent } from '../protocols/imap/parser.js';
import { SUPPORTED_SASL_MECHANISMS, type SaslCredentials, type SaslErrorReason } from '../protocols/sasl.js';
import type { ClientOrigin, UpstreamCredentials, UpstreamLoginResult } from '../upstream/credentials.js';
import { loginImapUpstream } from '../upstream/imap-login.js';
import type { ProxiedOrigin } from './proxy-header.js';
import { Session, type Credentials, type FarewellReason, type GatewayServices } from './session.js';
import { FIXED_LIMITS, imapMaxCommandBytes } from '../config/limits.js';
import type { ListenConfig } from '../config/schema.js';
import type { Socket } from 'node:net';

type Command = Extract<ImapParseEvent, { type: 'command' }>;

/** Commands of the authenticated and selected states: right command, wrong time. */
const AFTER_LOGIN_COMMANDS = new Set([
  'SELECT', 'EXAMINE', 'CREATE', 'DELETE', 'RENAME', 'SUBSCRIBE', 'UNSUBSCRIBE', 'LIST', 'LSUB', 'STATUS',
  'APPEND', 'CHECK', 'CLOSE', 'UNSELECT', 'EXPUNGE', 'SEARCH', 'FETCH', 'STORE', 'COPY', 'MOVE', 'UID',
  'IDLE', 'ENABLE', 'NAMESPACE', 'GETQUOTA', 'GETQUOTAROOT', 'SETQUOTA', 'GETACL', 'SETACL', 'MYRIGHTS',
  'LISTRIGHTS', 'GETMETADATA', 'SETMETADATA', 'COMPRESS', 'NOTIFY', 'SORT', 'THREAD', 'ESEARCH', 'REPLACE',
]);

const UTF8 = new TextDecoder('utf-8', { fatal: true });

export class ImapSession extends Session<ImapParseEvent, ImapParser> {
  readonly protocol = 'imap' as const;
  /** The tag of the AUTHENTICATE command whose exchange is running. */
  private saslTag = '';

  constructor(socket: Socket, listener: ListenConfig, services: GatewayServices, origin?: ProxiedOrigin | null) {
    const limits = services.config.limits;
    const parser = new ImapParser({
      maxLineBytes: limits.imap_max_line_bytes,
      maxLiteralBytes: limits.imap_max_literal_bytes,
      maxCommandBytes: imapMaxCommandBytes(limits.imap_max_line_bytes, limits.imap_max_literal_bytes),
      maxNesting: limits.imap_max_nesting,
      maxArgs: FIXED_LIMITS.imap_max_args,
    });
    super(socket, listener, services, parser, origin);
  }

  protected releasePrelogin(): void {
    this.saslTag = '';
  }

  protected greet(): void {
    this.write(untagged('OK', 'mailgate ready', `CAPABILITY ${this.capabilities().join(' ')}`));
  }

  protected refusal(): string {
    return untagged('BYE', 'Too many connections; try again later.', 'UNAVAILABLE');
  }

  protected farewell(reason: FarewellReason): string {
    switch (reason) {
      case 'revoked':
        return untagged('BYE', APP_PASSWORD_REVOKED, 'UNAVAILABLE');
      case 'two-factor-enabled':
        return untagged('BYE', twoFactorEnabledFarewell(this.services.config.policy.help_url), 'UNAVAILABLE');
      case 'app-password-required':
        return untagged('BYE', appPasswordRequiredFarewell(this.services.config.policy.help_url), 'UNAVAILABLE');
      case 'blocked':
        return untagged('BYE', ACCOUNT_BLOCKED, 'UNAVAILABLE');
      case 'shutdown':
        return untagged('BYE', SHUTTING_DOWN, 'UNAVAILABLE');
      case 'idle':
        return untagged('BYE', IDLE_TIMEOUT);
      case 'errors':
        return untagged('BYE', TOO_MANY_ERRORS);
      case 'internal':
        return untagged('BYE', TEMPORARY_FAILURE, 'UNAVAILABLE');
    }
  }

  protected loginUpstream(credentials: UpstreamCredentials, origin: ClientOrigin, clientLeft: AbortSignal): Promise<UpstreamLoginResult> {
    const { config, upstreams, upstreamCapabilities } = this.services;
    return loginImapUpstream({
      target: upstreams.imap,
      connectTimeoutMs: config.timeouts.upstream_connect_seconds * 1000,
      responseTimeoutMs: config.timeouts.upstream_response_seconds * 1000,
      forward: config.upstream.imap.forward_client_ip ? origin : null,
      credentials,
      clientLeft,
      onGreetingCapabilities: (caps) => {
        upstreamCapabilities.imap = caps;
      },
    });
  }

  private capabilities(): string[] {
    return preloginCapabilities({
      starttlsOffered: this.listener.tls === 'starttls' && !this.secure,
      loginAllowed: this.loginAllowed,
      upstream: this.services.upstreamCapabilities.imap,
      mechanisms: SUPPORTED_SASL_MECHANISMS,
    });
  }

  protected handleEvent(event: ImapParseEvent): void {
    switch (event.type) {
      case 'literal-continuation':
        // Never invite credentials in clear text: refuse a login before TLS
        // instead of asking for its literal.
        if ((event.name === 'LOGIN' || event.name === 'AUTHENTICATE') && !this.loginAllowed) {
          this.parser.refuseLiteral();
          this.refusePlaintext(event.tag);
          return;
        }
        this.write(continuation('Ready for literal data'));
        return;
      case 'sasl-response':
        this.continueSasl(event.line);
        return;
      case 'error':
        this.onParseError(event);
        return;
      case 'command':
        this.touch();
        this.dispatch(event);
    }
  }

  private onParseError(event: Extract<ImapParseEvent, { type: 'error' }>): void {
    this.abandonSasl();
    // An invalid tag is never echoed: it may be another protocol's bytes (ALPACA).
    const line = event.tag ? tagged(event.tag, 'BAD', event.message) : untagged('BAD', event.message);
    if (event.fatal) {
      this.closeWith(line + untagged('BYE', 'Closing the connection after a protocol error.'), `protocol-error:${event.reason}`);
      return;
    }
    this.write(line);
    this.countBadCommand();
  }

  private dispatch(command: Command): void {
    const { tag, name, args } = command;
    switch (name) {
      case 'CAPABILITY':
        this.write(untaggedData(`CAPABILITY ${this.capabilities().join(' ')}`) + tagged(tag, 'OK', 'CAPABILITY completed'));
        return;
      case 'NOOP':
        this.write(tagged(tag, 'OK', 'NOOP completed'));
        return;
      case 'LOGOUT':
        this.closeWith(untagged('BYE', 'Logging out') + tagged(tag, 'OK', 'LOGOUT completed'), 'logout');
        return;
      case 'ID':
        return this.idCommand(tag, args);
      case 'STARTTLS':
        return this.starttls(tag, args);
      case 'LOGIN':
        return this.loginCommand(tag, args);
      case 'AUTHENTICATE':
        return this.authenticate(tag, args);
      default:
        if (AFTER_LOGIN_COMMANDS.has(name)) this.write(tagged(tag, 'NO', 'Log in first.'));
        else this.write(tagged(tag, 'BAD', 'Unknown command.'));
        this.countBadCommand();
    }
  }

  private idCommand(tag: string, args: ImapArg[]): void {
    const parsed = parseIdArgs(args);
    if (!parsed.ok) {
      this.write(tagged(tag, 'BAD', parsed.message));
      this.countBadCommand();
      return;
    }
    // Remembered for the log and the app password's last use. Whatever the
    // client says here (x-originating-ip included) is never forwarded upstream.
    this.clientId = clientIdSummary(parsed.fields);
    this.write(untaggedData('ID ("name" "mailgate")') + tagged(tag, 'OK', 'ID completed'));
  }

  private starttls(tag: string, args: ImapArg[]): void {
    if (args.length > 0) {
      this.write(tagged(tag, 'BAD', 'STARTTLS takes no arguments.'));
      this.countBadCommand();
      return;
    }
    if (this.listener.tls !== 'starttls' || this.secure) {
      this.write(tagged(tag, 'BAD', this.secure ? 'The connection is already encrypted.' : 'STARTTLS is not offered here.'));
      this.countBadCommand();
      return;
    }
    this.write(tagged(tag, 'OK', 'Begin TLS negotiation now'));
    this.startTls();
  }

  private refusePlaintext(tag: string): boolean {
    if (this.loginAllowed) return false;
    this.write(tagged(tag, 'NO', 'Use STARTTLS first: credentials are not accepted over an unencrypted connection.', 'PRIVACYREQUIRED'));
    return true;
  }

  private loginCommand(tag: string, args: ImapArg[]): void {
    if (this.refusePlaintext(tag)) return;
    const [user, pass] = args;
    if (args.length !== 2 || !isStringish(user) || !isStringish(pass)) {
      this.write(tagged(tag, 'BAD', 'LOGIN needs a username and a password.'));
      this.countBadCommand();
      return;
    }
    const username = decodeUtf8(argBytes(user));
    if (username === null) {
      this.write(tagged(tag, 'BAD', 'The username is not valid UTF-8.'));
      this.countBadCommand();
      return;
    }
    this.runLogin(tag, { username, password: argBytes(pass), method: 'login' });
  }

  private authenticate(tag: string, args: ImapArg[]): void {
    if (this.refusePlaintext(tag)) return;
    const [mechanism, initial] = args;
    if (args.length < 1 || args.length > 2 || mechanism?.kind !== 'atom' || (initial !== undefined && !isStringish(initial))) {
      this.write(tagged(tag, 'BAD', 'AUTHENTICATE needs a mechanism and at most one initial response.'));
      this.countBadCommand();
      return;
    }
    this.saslTag = tag;
    this.startSasl(mechanism.value, initial === undefined ? undefined : argBytes(initial).toString('latin1'));
  }

  protected saslDone(credentials: SaslCredentials, mechanism: string): void {
    this.runLogin(this.saslTag, { username: credentials.username, authzid: credentials.authzid, password: credentials.password, method: `authenticate-${mechanism.toLowerCase()}` });
  }

  protected saslFailed(reason: SaslErrorReason): void {
    const tag = this.saslTag;
    switch (reason) {
      case 'cancelled':
        this.write(tagged(tag, 'BAD', 'Authentication cancelled.'));
        return;
      case 'unsupported-mechanism':
        this.write(tagged(tag, 'NO', `Unsupported mechanism; use ${SUPPORTED_SASL_MECHANISMS.join(' or ')}.`));
        break;
      case 'bad-base64':
        this.write(tagged(tag, 'BAD', 'Invalid base64 in the authentication data.'));
        break;
      case 'malformed':
      case 'too-long':
        this.write(tagged(tag, 'BAD', 'Malformed authentication data.'));
        break;
    }
    this.countBadCommand();
  }

  private runLogin(tag: string, credentials: Credentials): void {
    this.login(credentials)
      .then((outcome) => {
        if (outcome.ok) {
          const caps = outcome.upstream.capabilities;
          this.write(tagged(tag, 'OK', 'Logged in', `CAPABILITY ${caps.join(' ')}`));
          this.startRelay(outcome.upstream);
          return;
        }
        if (outcome.kind === 'temporary' || outcome.kind === 'in-use') {
          const text = outcome.kind === 'in-use' ? MAILBOX_IN_USE : TEMPORARY_FAILURE;
          this.write(tagged(tag, 'NO', text, outcome.kind === 'in-use' ? 'INUSE' : 'UNAVAILABLE'));
        } else {
          this.refuseCredentials(tag);
        }
        if (this.closeIfTooManyFailures()) return;
        this.resumePrelogin();
      })
      .catch((err: unknown) => this.internalError(err));
  }

  /** The one answer to every credential failure: it never tells why. */
  private refuseCredentials(tag: string): void {
    // The ALERT line is what Thunderbird shows the user; the tagged text it does not.
    this.write(untagged('NO', loginFailedAlert(this.services.config.policy.help_url), 'ALERT'));
    this.write(tagged(tag, 'NO', 'Authentication failed.', 'AUTHENTICATIONFAILED'));
  }

  private closeIfTooManyFailures(): boolean {
    if (this.failedLogins < this.services.config.limits.max_login_failures_per_connection) return false;
    this.closeWith(untagged('BYE', 'Too many failed logins.'), 'too-many-login-failures');
    return true;
  }
}

function isStringish(arg: ImapArg | undefined): arg is Extract<ImapArg, { kind: 'atom' | 'string' }> {
  return arg?.kind === 'atom' || arg?.kind === 'string';
}

function argBytes(arg: Extract<ImapArg, { kind: 'atom' | 'string' }>): Buffer {
  return arg.kind === 'atom' ? Buffer.from(arg.value, 'latin1') : arg.value;
}

function decodeUtf8(bytes: Buffer): string | null {
  try {
    return UTF8.decode(bytes);
  } catch {
    return null;
  }
}
