/**
 * The POP3 side of a session before login (RFC 1939, 2449 CAPA, 2595 STLS,
 * 5034 AUTH, 3206 response codes): greeting, CAPA, STLS, USER/PASS, AUTH and
 * QUIT. Everything else gets -ERR. After login the shared Session relays bytes.
 */
import type { Socket } from 'node:net';
import { ACCOUNT_BLOCKED, APP_PASSWORD_REVOKED, appPasswordRequiredFarewell, IDLE_TIMEOUT, loginFailedAlert, MAILBOX_IN_USE, SHUTTING_DOWN, TEMPORARY_FAILURE, TOO_MANY_ERRORS, twoFactorEnabledFarewell } from '../auth/messages.js';
import type { ListenConfig } from '../config/schema.js';
import { err, multiline, ok } from '../protocols/pop3/compiler.js';
import { Pop3Parser, type Pop3ParseEvent } from '../protocols/pop3/parser.js';
import { SUPPORTED_SASL_MECHANISMS, type SaslCredentials, type SaslErrorReason } from '../protocols/sasl.js';
import type { ClientOrigin, UpstreamCredentials, UpstreamLoginResult } from '../upstream/credentials.js';
import { loginPop3Upstream } from '../upstream/pop3-login.js';
import type { ProxiedOrigin } from './proxy-header.js';
import { Session, type Credentials, type FarewellReason, type GatewayServices } from './session.js';

type Command = Extract<Pop3ParseEvent, { type: 'command' }>;

/** Transaction-state commands (RFC 1939): right command, wrong time. */
const AFTER_LOGIN_COMMANDS = new Set(['STAT', 'LIST', 'RETR', 'DELE', 'NOOP', 'RSET', 'TOP', 'UIDL', 'LAST']);

/** Upstream CAPA tags that describe the mailbox service and are passed on (RFC 2449). */
const UPSTREAM_CAPABILITIES = new Set(['TOP', 'UIDL', 'PIPELINING', 'EXPIRE', 'LOGIN-DELAY']);

const UTF8 = new TextDecoder('utf-8', { fatal: true });

export class Pop3Session extends Session<Pop3ParseEvent, Pop3Parser> {
  readonly protocol = 'pop3' as const;
  private pendingUser: string | null = null;

  constructor(socket: Socket, listener: ListenConfig, services: GatewayServices, origin?: ProxiedOrigin | null) {
    super(socket, listener, services, new Pop3Parser({ maxLineBytes: services.config.limits.pop3_max_line_bytes }), origin);
  }

  protected releasePrelogin(): void {
    this.pendingUser = null;
  }

  protected greet(): void {
    // No APOP timestamp: APOP needs the plaintext password on the server side.
    this.write(ok('mailgate ready'));
  }

  protected refusal(): string {
    return err('Too many connections; try again later.', 'SYS/TEMP');
  }

  protected farewell(reason: FarewellReason): string {
    // In the middle of a relayed multi-line answer any text would corrupt it,
    // so a relayed POP3 session is simply closed.
    if (this.state === 'relaying') return '';
    switch (reason) {
      case 'revoked':
        return err(APP_PASSWORD_REVOKED, 'AUTH');
      case 'two-factor-enabled':
        return err(twoFactorEnabledFarewell(this.services.config.policy.help_url), 'AUTH');
      case 'app-password-required':
        return err(appPasswordRequiredFarewell(this.services.config.policy.help_url), 'AUTH');
      case 'blocked':
        return err(ACCOUNT_BLOCKED, 'AUTH');
      case 'shutdown':
      case 'internal':
        return err(reason === 'shutdown' ? SHUTTING_DOWN : TEMPORARY_FAILURE, 'SYS/TEMP');
      case 'idle':
        return err(IDLE_TIMEOUT);
      case 'errors':
        return err(TOO_MANY_ERRORS);
    }
  }

  protected loginUpstream(credentials: UpstreamCredentials, origin: ClientOrigin, clientLeft: AbortSignal): Promise<UpstreamLoginResult> {
    const { config, upstreams, upstreamCapabilities } = this.services;
    return loginPop3Upstream({
      target: upstreams.pop3,
      connectTimeoutMs: config.timeouts.upstream_connect_seconds * 1000,
      responseTimeoutMs: config.timeouts.upstream_response_seconds * 1000,
      forward: config.upstream.pop3.forward_client_ip ? origin : null,
      credentials,
      clientLeft,
      onCapabilities: (caps) => {
        upstreamCapabilities.pop3 = caps;
      },
    });
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
        this.dispatch(event);
    }
  }

  private capaLines(): string[] {
    const upstream = (this.services.upstreamCapabilities.pop3 ?? []).filter((line) =>
      UPSTREAM_CAPABILITIES.has(line.split(' ')[0]!.toUpperCase()),
    );
    const lines = [...upstream, 'RESP-CODES', 'AUTH-RESP-CODE'];
    if (this.listener.tls === 'starttls' && !this.secure) lines.push('STLS');
    if (this.loginAllowed) lines.push('USER', `SASL ${SUPPORTED_SASL_MECHANISMS.join(' ')}`);
    return lines;
  }

  private dispatch(command: Command): void {
    switch (command.name) {
      case 'CAPA':
        this.write(ok('Capability list follows') + multiline(this.capaLines()));
        return;
      case 'QUIT':
        this.closeWith(ok('Bye'), 'quit');
        return;
      case 'STLS':
        return this.stls();
      case 'USER':
        return this.user(command);
      case 'PASS':
        return this.pass(command);
      case 'AUTH':
        return this.authCommand(command);
      case 'APOP':
        this.write(err('APOP is not supported; use USER/PASS or AUTH.'));
        this.countBadCommand();
        return;
      default:
        this.write(err(AFTER_LOGIN_COMMANDS.has(command.name) ? 'Log in first.' : 'Unknown command.'));
        this.countBadCommand();
    }
  }

  private stls(): void {
    if (this.listener.tls !== 'starttls' || this.secure) {
      this.write(err(this.secure ? 'The connection is already encrypted.' : 'STLS is not offered here.'));
      this.countBadCommand();
      return;
    }
    this.write(ok('Begin TLS negotiation'));
    this.startTls();
  }

  /** Credentials before STLS on a STARTTLS listener: refuse, and say what to do. */
  private refusePlaintext(): boolean {
    if (this.loginAllowed) return false;
    this.write(err('Use STLS first: credentials are not accepted over an unencrypted connection.'));
    this.countBadCommand();
    return true;
  }

  private user(command: Command): void {
    if (this.refusePlaintext()) return;
    const name = decodeUtf8(command.rest)?.trim();
    if (!name) {
      this.write(err('USER needs a name.'));
      this.countBadCommand();
      return;
    }
    this.pendingUser = name;
    // The same answer for every name: USER must not reveal which accounts exist.
    this.write(ok('Send PASS'));
  }

  private pass(command: Command): void {
    if (this.refusePlaintext()) return;
    const user = this.pendingUser;
    this.pendingUser = null;
    if (user === null) {
      this.write(err('Send USER first.'));
      this.countBadCommand();
      return;
    }
    this.runLogin({ username: user, password: command.rest, method: 'user-pass' });
  }

  private authCommand(command: Command): void {
    if (this.refusePlaintext()) return;
    if (command.args.length === 0) {
      this.write(ok('Supported mechanisms follow') + multiline([...SUPPORTED_SASL_MECHANISMS]));
      return;
    }
    if (command.args.length > 2) {
      this.write(err('AUTH takes a mechanism and at most one initial response.'));
      this.countBadCommand();
      return;
    }
    const [mechanism, initial] = command.args as [string, string | undefined];
    this.startSasl(mechanism, initial);
  }

  protected saslDone(credentials: SaslCredentials, mechanism: string): void {
    this.runLogin({ username: credentials.username, authzid: credentials.authzid, password: credentials.password, method: `auth-${mechanism.toLowerCase()}` });
  }

  protected saslFailed(reason: SaslErrorReason): void {
    switch (reason) {
      case 'cancelled':
        this.write(err('Authentication cancelled.'));
        return;
      case 'unsupported-mechanism':
        this.write(err(`Unsupported mechanism; use ${SUPPORTED_SASL_MECHANISMS.join(' or ')}.`));
        break;
      case 'bad-base64':
        this.write(err('Invalid base64 in the authentication data.'));
        break;
      case 'malformed':
      case 'too-long':
        this.write(err('Malformed authentication data.'));
        break;
    }
    this.countBadCommand();
  }

  private runLogin(credentials: Credentials): void {
    this.login(credentials)
      .then((outcome) => {
        if (outcome.ok) {
          this.write(`${outcome.upstream.confirmation}\r\n`);
          this.startRelay(outcome.upstream);
          return;
        }
        if (outcome.kind === 'temporary') this.write(err(TEMPORARY_FAILURE, 'SYS/TEMP'));
        else if (outcome.kind === 'in-use') this.write(err(MAILBOX_IN_USE, outcome.code));
        else this.write(err(loginFailedAlert(this.services.config.policy.help_url), 'AUTH'));
        if (this.closeIfTooManyFailures()) return;
        this.resumePrelogin();
      })
      .catch((error: unknown) => this.internalError(error));
  }

  private closeIfTooManyFailures(): boolean {
    if (this.failedLogins < this.services.config.limits.max_login_failures_per_connection) return false;
    this.closeWith('', 'too-many-login-failures');
    return true;
  }
}

function decodeUtf8(bytes: Buffer): string | null {
  try {
    return UTF8.decode(bytes);
  } catch {
    return null;
  }
}
