/**
 * The POP3 side of a session before login (RFC 1939, 2449 CAPA, 2595 STLS,
 * 5034 AUTH, 3206 response codes): greeting, CAPA, STLS, USER/PASS, AUTH and
 * QUIT, declared in a command table. Everything else gets -ERR. After login
 * the shared Session relays bytes.
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
import { err, multiline, ok } from '../protocols/pop3/compiler.js';
import { Pop3Parser, pop3ParserLimits, type Pop3ParseEvent } from '../protocols/pop3/parser.js';
import { SUPPORTED_SASL_MECHANISMS, type SaslErrorReason } from '../protocols/sasl.js';
import { decodeUtf8 } from '../protocols/utf8.js';
import type { ProxiedOrigin } from './proxy-header.js';
import { Session, type CommandRefusal, type CommandSpec, type FarewellReason, type SessionContext } from './session.js';

type Command = Extract<Pop3ParseEvent, { type: 'command' }>;

/** Transaction-state commands (RFC 1939): right command, wrong time. */
const AFTER_LOGIN_COMMANDS = ['STAT', 'LIST', 'RETR', 'DELE', 'NOOP', 'RSET', 'TOP', 'UIDL', 'LAST'];

/** Upstream CAPA tags that describe the mailbox service and are passed on (RFC 2449). */
const UPSTREAM_CAPABILITIES = new Set(['TOP', 'UIDL', 'PIPELINING', 'EXPIRE', 'LOGIN-DELAY']);

export class Pop3Session extends Session<Pop3ParseEvent, Pop3Parser, Command> {
  readonly protocol = 'pop3' as const;
  protected readonly plaintextLoginIsBad = true;
  private pendingUser: string | null = null;

  /** The pre-login commands: one table for all POP3 sessions. */
  private static readonly COMMANDS: ReadonlyMap<string, CommandSpec<Pop3Session, Command>> = new Map<string, CommandSpec<Pop3Session, Command>>([
    ['CAPA', { state: 'prelogin', handler: (s) => s.write(ok('Capability list follows') + multiline(s.capaLines())) }],
    ['QUIT', { state: 'prelogin', handler: (s) => s.closeWith(ok('Bye'), 'quit') }],
    ['STLS', { state: 'prelogin', handler: (s) => s.stls() }],
    ['USER', { state: 'prelogin', needsTls: true, handler: (s, c) => s.user(c) }],
    ['PASS', { state: 'prelogin', needsTls: true, handler: (s, c) => s.pass(c) }],
    ['AUTH', { state: 'prelogin', needsTls: true, handler: (s, c) => s.authCommand(c) }],
    // No APOP timestamp is offered: APOP needs the plaintext password on the server side.
    ['APOP', { state: 'prelogin', handler: () => ({ bad: 'APOP is not supported; use USER/PASS or AUTH.' }) }],
    ...AFTER_LOGIN_COMMANDS.map((name): [string, CommandSpec<Pop3Session, Command>] => [name, { state: 'after-login' }]),
  ]);

  constructor(socket: Socket, listener: ListenConfig, context: SessionContext, origin?: ProxiedOrigin | null) {
    super(socket, listener, context, new Pop3Parser(pop3ParserLimits(context.config.limits)), origin);
  }

  protected releasePrelogin(): void {
    this.pendingUser = null;
  }

  protected greet(): void {
    this.write(ok('mailgate ready'));
  }

  protected refusal(): string {
    return err('Too many connections; try again later.', 'SYS/TEMP');
  }

  protected farewell(reason: FarewellReason): string {
    // In the middle of a relayed multi-line answer any text would corrupt it,
    // so a relayed POP3 session is simply closed.
    if (this.state === 'relaying') return '';
    const help = helpUrl(this.context.config);
    switch (reason) {
      case 'revoked':
        return err(APP_PASSWORD_REVOKED, 'AUTH');
      case 'two-factor-enabled':
        return err(twoFactorEnabledFarewell(help), 'AUTH');
      case 'app-password-required':
        return err(appPasswordRequiredFarewell(help), 'AUTH');
      case 'blocked':
        return err(ACCOUNT_BLOCKED, 'AUTH');
      case 'kicked':
        return err(SESSION_KICKED, 'SYS/TEMP');
      case 'shutdown':
      case 'internal':
        return err(reason === 'shutdown' ? SHUTTING_DOWN : TEMPORARY_FAILURE, 'SYS/TEMP');
      case 'idle':
        return err(IDLE_TIMEOUT);
      case 'errors':
        return err(TOO_MANY_ERRORS);
      case 'login-failures':
        // The last failure's -ERR was the answer; POP3 has no farewell line to add.
        return '';
    }
  }

  protected handleEvent(event: Pop3ParseEvent): void {
    switch (event.type) {
      case 'sasl-response':
        this.continueSasl(event.line);
        return;
      case 'error':
        this.abandonSasl();
        if (event.fatal) {
          this.closeWith(err(event.message), `protocol-error:${event.reason}`);
          return;
        }
        this.write(err(event.message));
        this.countBadCommand();
        return;
      case 'command':
        this.touch();
        this.dispatch(event.name, event, Pop3Session.COMMANDS);
    }
  }

  protected answerRefusedCommand(_command: Command, refusal: CommandRefusal): void {
    switch (refusal.why) {
      case 'unknown':
        return this.write(err('Unknown command.'));
      case 'log-in-first':
        return this.write(err('Log in first.'));
      case 'needs-tls':
        return this.write(err('Use STLS first: credentials are not accepted over an unencrypted connection.'));
      case 'bad':
        return this.write(err(refusal.message));
    }
  }

  private capaLines(): string[] {
    const upstream = (this.context.upstreams.capabilities.pop3 ?? []).filter((line) => UPSTREAM_CAPABILITIES.has(line.split(' ')[0]!.toUpperCase()));
    const lines = [...upstream, 'RESP-CODES', 'AUTH-RESP-CODE'];
    if (this.starttlsOffered) lines.push('STLS');
    if (this.loginAllowed) lines.push('USER', `SASL ${SUPPORTED_SASL_MECHANISMS.join(' ')}`);
    return lines;
  }

  private stls(): { bad: string } | void {
    if (!this.starttlsOffered) return { bad: this.secure ? 'The connection is already encrypted.' : 'STLS is not offered here.' };
    this.write(ok('Begin TLS negotiation'));
    this.startTls();
  }

  private user(command: Command): { bad: string } | void {
    const name = decodeUtf8(command.rest)?.trim();
    if (!name) return { bad: 'USER needs a name.' };
    this.pendingUser = name;
    // The same answer for every name: USER must not reveal which accounts exist.
    this.write(ok('Send PASS'));
  }

  private pass(command: Command): { bad: string } | void {
    const user = this.pendingUser;
    this.pendingUser = null;
    if (user === null) return { bad: 'Send USER first.' };
    this.runLogin({ username: user, password: command.rest, method: 'user-pass' });
  }

  private authCommand(command: Command): { bad: string } | void {
    if (command.args.length === 0) {
      this.write(ok('Supported mechanisms follow') + multiline([...SUPPORTED_SASL_MECHANISMS]));
      return;
    }
    if (command.args.length > 2) return { bad: 'AUTH takes a mechanism and at most one initial response.' };
    const [mechanism, initial] = command.args as [string, string | undefined];
    this.startSasl(mechanism, initial, (name) => `auth-${name.toLowerCase()}`);
  }

  protected answerSaslError(reason: SaslErrorReason): void {
    switch (reason) {
      case 'cancelled':
        return this.write(err('Authentication cancelled.'));
      case 'unsupported-mechanism':
        return this.write(err(`Unsupported mechanism; use ${SUPPORTED_SASL_MECHANISMS.join(' or ')}.`));
      case 'bad-base64':
        return this.write(err('Invalid base64 in the authentication data.'));
      case 'malformed':
      case 'too-long':
        return this.write(err('Malformed authentication data.'));
    }
  }

  protected answerLoggedIn(upstream: LoggedIn): void {
    this.write(`${upstream.confirmation}\r\n`);
  }

  protected answerLogin(outcome: Exclude<LoginOutcome, { kind: 'logged-in' | 'abandoned' }>): void {
    switch (outcome.kind) {
      case 'refused':
        return this.write(err(loginFailedAlert(helpUrl(this.context.config)), 'AUTH'));
      case 'temporary':
        return this.write(err(TEMPORARY_FAILURE, 'SYS/TEMP'));
      case 'in-use':
        return this.write(err(MAILBOX_IN_USE, outcome.code));
    }
  }
}
