/**
 * The IMAP side of a session before login (RFC 9051/3501): greeting,
 * CAPABILITY, NOOP, LOGOUT, STARTTLS, ID, LOGIN and AUTHENTICATE, declared
 * in a command table. Everything else is refused with the client's tag.
 * After login the shared Session relays bytes and this class is out of the
 * picture.
 */
import type { Socket } from 'node:net';
import type { LoggedIn, LoginOutcome } from '../auth/login-service.js';
import {
  ACCOUNT_BLOCKED,
  APP_PASSWORD_REVOKED,
  appPasswordRequiredFarewell,
  IDLE_TIMEOUT,
  loginFailedAlert,
  MAILBOX_IN_USE,
  SESSION_KICKED,
  SHUTTING_DOWN,
  TEMPORARY_FAILURE,
  TOO_MANY_ERRORS,
  twoFactorEnabledFarewell,
} from '../auth/messages.js';
import { helpUrl, type ListenConfig } from '../config/schema.js';
import { preloginCapabilities } from '../protocols/imap/capabilities.js';
import { continuation, tagged, untagged, untaggedData } from '../protocols/imap/compiler.js';
import { clientIdSummary, parseIdArgs } from '../protocols/imap/id.js';
import { ImapParser, imapParserLimits, type ImapArg, type ImapParseEvent } from '../protocols/imap/parser.js';
import { SUPPORTED_SASL_MECHANISMS, type SaslErrorReason } from '../protocols/sasl.js';
import { decodeUtf8 } from '../protocols/utf8.js';
import type { ProxiedOrigin } from './proxy-header.js';
import { Session, type CommandRefusal, type CommandSpec, type FarewellReason, type SessionContext } from './session.js';

type Command = Extract<ImapParseEvent, { type: 'command' }>;

/** Commands of the authenticated and selected states: right command, wrong time. */
const AFTER_LOGIN_COMMANDS = [
  'SELECT', 'EXAMINE', 'CREATE', 'DELETE', 'RENAME', 'SUBSCRIBE', 'UNSUBSCRIBE', 'LIST', 'LSUB', 'STATUS',
  'APPEND', 'CHECK', 'CLOSE', 'UNSELECT', 'EXPUNGE', 'SEARCH', 'FETCH', 'STORE', 'COPY', 'MOVE', 'UID',
  'IDLE', 'ENABLE', 'NAMESPACE', 'GETQUOTA', 'GETQUOTAROOT', 'SETQUOTA', 'GETACL', 'SETACL', 'MYRIGHTS',
  'LISTRIGHTS', 'GETMETADATA', 'SETMETADATA', 'COMPRESS', 'NOTIFY', 'SORT', 'THREAD', 'ESEARCH', 'REPLACE',
];

export class ImapSession extends Session<ImapParseEvent, ImapParser, Command> {
  readonly protocol = 'imap' as const;
  protected readonly plaintextLoginIsBad = false;
  /** The tag of the LOGIN or AUTHENTICATE whose answer is pending. */
  private loginTag = '';

  /** The pre-login commands: one table for all IMAP sessions. */
  private static readonly COMMANDS: ReadonlyMap<string, CommandSpec<ImapSession, Command>> = new Map<string, CommandSpec<ImapSession, Command>>([
    ['CAPABILITY', { state: 'prelogin', handler: (s, c) => s.capability(c) }],
    ['NOOP', { state: 'prelogin', handler: (s, c) => s.write(tagged(c.tag, 'OK', 'NOOP completed')) }],
    ['LOGOUT', { state: 'prelogin', handler: (s, c) => s.closeWith(untagged('BYE', 'Logging out') + tagged(c.tag, 'OK', 'LOGOUT completed'), 'logout') }],
    ['ID', { state: 'prelogin', handler: (s, c) => s.idCommand(c) }],
    ['STARTTLS', { state: 'prelogin', handler: (s, c) => s.starttls(c) }],
    ['LOGIN', { state: 'prelogin', needsTls: true, handler: (s, c) => s.loginCommand(c) }],
    ['AUTHENTICATE', { state: 'prelogin', needsTls: true, handler: (s, c) => s.authenticate(c) }],
    ...AFTER_LOGIN_COMMANDS.map((name): [string, CommandSpec<ImapSession, Command>] => [name, { state: 'after-login' }]),
  ]);

  constructor(socket: Socket, listener: ListenConfig, context: SessionContext, origin?: ProxiedOrigin | null) {
    super(socket, listener, context, new ImapParser(imapParserLimits(context.config.limits)), origin);
  }

  protected releasePrelogin(): void {
    this.loginTag = '';
  }

  protected greet(): void {
    this.write(untagged('OK', 'mailgate ready', `CAPABILITY ${this.capabilities().join(' ')}`));
  }

  protected refusal(): string {
    return untagged('BYE', 'Too many connections; try again later.', 'UNAVAILABLE');
  }

  protected farewell(reason: FarewellReason): string {
    const help = helpUrl(this.context.config);
    switch (reason) {
      case 'revoked':
        return untagged('BYE', APP_PASSWORD_REVOKED, 'UNAVAILABLE');
      case 'two-factor-enabled':
        return untagged('BYE', twoFactorEnabledFarewell(help), 'UNAVAILABLE');
      case 'app-password-required':
        return untagged('BYE', appPasswordRequiredFarewell(help), 'UNAVAILABLE');
      case 'blocked':
        return untagged('BYE', ACCOUNT_BLOCKED, 'UNAVAILABLE');
      case 'kicked':
        return untagged('BYE', SESSION_KICKED, 'UNAVAILABLE');
      case 'shutdown':
        return untagged('BYE', SHUTTING_DOWN, 'UNAVAILABLE');
      case 'idle':
        return untagged('BYE', IDLE_TIMEOUT);
      case 'errors':
        return untagged('BYE', TOO_MANY_ERRORS);
      case 'login-failures':
        return untagged('BYE', 'Too many failed logins.');
      case 'internal':
        return untagged('BYE', TEMPORARY_FAILURE, 'UNAVAILABLE');
    }
  }

  private capabilities(): string[] {
    return preloginCapabilities({
      starttlsOffered: this.starttlsOffered,
      loginAllowed: this.loginAllowed,
      upstream: this.context.upstreams.capabilities.imap,
      mechanisms: SUPPORTED_SASL_MECHANISMS,
    });
  }

  protected handleEvent(event: ImapParseEvent): void {
    switch (event.type) {
      case 'literal-continuation':
        // Never invite credentials in clear text: refuse a login before TLS
        // instead of asking for its literal.
        if (ImapSession.COMMANDS.get(event.name)?.needsTls && !this.loginAllowed) {
          this.parser.refuseLiteral();
          this.refuseCommand({ type: 'command', tag: event.tag, name: event.name, args: [] }, { why: 'needs-tls' });
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
        this.dispatch(event.name, event, ImapSession.COMMANDS);
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

  protected answerRefusedCommand(command: Command, refusal: CommandRefusal): void {
    const { tag } = command;
    switch (refusal.why) {
      case 'unknown':
        return this.write(tagged(tag, 'BAD', 'Unknown command.'));
      case 'log-in-first':
        return this.write(tagged(tag, 'NO', 'Log in first.'));
      case 'needs-tls':
        return this.write(tagged(tag, 'NO', 'Use STARTTLS first: credentials are not accepted over an unencrypted connection.', 'PRIVACYREQUIRED'));
      case 'bad':
        return this.write(tagged(tag, 'BAD', refusal.message));
    }
  }

  private capability(command: Command): void {
    this.write(untaggedData(`CAPABILITY ${this.capabilities().join(' ')}`) + tagged(command.tag, 'OK', 'CAPABILITY completed'));
  }

  private idCommand(command: Command): { bad: string } | void {
    const parsed = parseIdArgs(command.args);
    if (!parsed.ok) return { bad: parsed.message };
    // Remembered for the log and the app password's last use. Whatever the
    // client says here (x-originating-ip included) is never forwarded upstream.
    this.clientId = clientIdSummary(parsed.fields);
    this.write(untaggedData('ID ("name" "mailgate")') + tagged(command.tag, 'OK', 'ID completed'));
  }

  private starttls(command: Command): { bad: string } | void {
    if (command.args.length > 0) return { bad: 'STARTTLS takes no arguments.' };
    if (!this.starttlsOffered) return { bad: this.secure ? 'The connection is already encrypted.' : 'STARTTLS is not offered here.' };
    this.write(tagged(command.tag, 'OK', 'Begin TLS negotiation now'));
    this.startTls();
  }

  private loginCommand(command: Command): { bad: string } | void {
    const [user, pass] = command.args;
    if (command.args.length !== 2 || !isStringish(user) || !isStringish(pass)) return { bad: 'LOGIN needs a username and a password.' };
    const username = decodeUtf8(argBytes(user));
    if (username === null) return { bad: 'The username is not valid UTF-8.' };
    this.loginTag = command.tag;
    this.runLogin({ username, password: argBytes(pass), method: 'login' });
  }

  private authenticate(command: Command): { bad: string } | void {
    const [mechanism, initial] = command.args;
    if (command.args.length < 1 || command.args.length > 2 || mechanism?.kind !== 'atom' || (initial !== undefined && !isStringish(initial))) {
      return { bad: 'AUTHENTICATE needs a mechanism and at most one initial response.' };
    }
    this.loginTag = command.tag;
    this.startSasl(mechanism.value, initial === undefined ? undefined : argBytes(initial).toString('latin1'), (name) => `authenticate-${name.toLowerCase()}`);
  }

  protected answerSaslError(reason: SaslErrorReason): void {
    const tag = this.loginTag;
    switch (reason) {
      case 'cancelled':
        return this.write(tagged(tag, 'BAD', 'Authentication cancelled.'));
      case 'unsupported-mechanism':
        return this.write(tagged(tag, 'NO', `Unsupported mechanism; use ${SUPPORTED_SASL_MECHANISMS.join(' or ')}.`));
      case 'bad-base64':
        return this.write(tagged(tag, 'BAD', 'Invalid base64 in the authentication data.'));
      case 'malformed':
      case 'too-long':
        return this.write(tagged(tag, 'BAD', 'Malformed authentication data.'));
    }
  }

  protected answerLoggedIn(upstream: LoggedIn): void {
    this.write(tagged(this.loginTag, 'OK', 'Logged in', `CAPABILITY ${upstream.capabilities.join(' ')}`));
  }

  /** The one answer to every credential failure: it never tells why. */
  protected answerLogin(outcome: Exclude<LoginOutcome, { kind: 'logged-in' | 'abandoned' }>): void {
    const tag = this.loginTag;
    switch (outcome.kind) {
      case 'refused':
        // The ALERT line is what Thunderbird shows the user; the tagged text it does not.
        this.write(untagged('NO', loginFailedAlert(helpUrl(this.context.config)), 'ALERT'));
        return this.write(tagged(tag, 'NO', 'Authentication failed.', 'AUTHENTICATIONFAILED'));
      case 'temporary':
        return this.write(tagged(tag, 'NO', TEMPORARY_FAILURE, 'UNAVAILABLE'));
      case 'in-use':
        return this.write(tagged(tag, 'NO', MAILBOX_IN_USE, 'INUSE'));
    }
  }
}

function isStringish(arg: ImapArg | undefined): arg is Extract<ImapArg, { kind: 'atom' | 'string' }> {
  return arg?.kind === 'atom' || arg?.kind === 'string';
}

function argBytes(arg: Extract<ImapArg, { kind: 'atom' | 'string' }>): Buffer {
  return arg.kind === 'atom' ? Buffer.from(arg.value, 'latin1') : arg.value;
}
