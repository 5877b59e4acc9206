/**
 * One client connection, from accept to close: the part both protocols share.
 *
 * It owns the socket, the TLS handshake (implicit or STARTTLS), the pre-login
 * timers, the command table's guards and the misbehaviour counter, the SASL
 * exchange, the login's tail (asking the login service, counting failures on
 * the connection) and the hand-over to the relay, and it writes the session's
 * log line. ImapSession and Pop3Session add the protocol: they feed the
 * parser, declare their commands, and choose the words of every answer.
 * Who may log in is not decided here: the LoginService decides, socket-free.
 */
import { randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
import { canonicalAddress, clientKey } from '../auth/client-key.js';
import type { LoggedIn, LoginOutcome, LoginService } from '../auth/login-service.js';
import { FIXED_LIMITS } from '../config/limits.js';
import type { Config, ListenConfig } from '../config/schema.js';
import type { Logger } from '../log/logger.js';
import { SaslExchange, type SaslCredentials, type SaslErrorReason, type SaslStep } from '../protocols/sasl.js';
import type { Upstreams } from '../upstream/upstreams.js';
import type { SessionOutcome, SessionState } from './outcome.js';
import { Relay, type RelayResult } from './relay.js';
import type { SessionAuth, SessionRegistry, TerminationReason, TrackedSession } from './registry.js';
import { wrapServerTls, type ServerTls } from './tls.js';

/** What every session needs from the gateway around it (built in server/gateway.ts). */
export interface SessionContext {
  config: Config;
  log: Logger;
  logins: LoginService;
  serverTls: ServerTls;
  registry: SessionRegistry;
  /** The upstreams' last known capabilities, for the pre-login answers. */
  upstreams: Pick<Upstreams, 'capabilities'>;
  /** Connection limits: null to admit the session, or the reason to refuse it. */
  admission: (session: TrackedSession) => 'refused-global-limit' | 'refused-per-ip-limit' | null;
}

/** The parts of a protocol parser the shared session drives. */
export interface SessionParser<E = unknown> {
  push(chunk: Buffer): void;
  next(): E | null;
  expectSaslResponse(): void;
  discardBuffered(): number;
  takeBuffered(): Buffer;
  readonly bufferedBytes: number;
}

export type FarewellReason = TerminationReason | 'idle' | 'errors' | 'internal' | 'login-failures';

export type { SessionState };

export interface Credentials {
  username: string;
  /** SASL PLAIN's authzid, as sent ('' when none). */
  authzid?: string;
  password: Buffer;
  /** How the client sent them, for the log: login, authenticate-plain, user-pass... */
  method: string;
}

/**
 * One pre-login command, as WildDuck's imap-core and Dovecot's
 * imap_login_commands[] declare them: the dispatcher checks where it may be
 * used and whether it needs TLS, once, before any handler runs.
 */
export interface CommandSpec<S, C> {
  /**
   * 'prelogin': handled here. 'after-login': a real command of the logged-in
   * states, answered "log in first" (right command, wrong time).
   */
  state: 'prelogin' | 'after-login';
  /** Carries credentials: refused on a connection that is not encrypted yet. */
  needsTls?: boolean;
  /** Static, one table per protocol: the session is passed in, so idle sessions hold no bound copies. */
  handler?: (session: S, command: C) => CommandResult;
}

/** A handler's verdict: done (it answered), or malformed, answered by the dispatcher and counted. */
export type CommandResult = void | { bad: string };

/** Why the dispatcher refused a command: each protocol words it its own way. */
export type CommandRefusal = { why: 'unknown' } | { why: 'log-in-first' } | { why: 'needs-tls' } | { why: 'bad'; message: string };

/** Pause reading from a client that pipelines more than this before login. */
const MAX_PIPELINED_BYTES = FIXED_LIMITS.prelogin_pipeline_bytes;

export abstract class Session<E = unknown, P extends SessionParser<E> = SessionParser<E>, C = unknown> implements TrackedSession {
  readonly id = randomBytes(6).toString('base64url');
  readonly clientKey: string;
  auth: SessionAuth | null = null;
  protected socket: Socket;
  protected state: SessionState = 'handshake';
  protected secure = false;
  protected badCommands = 0;
  protected failedLogins = 0;
  /** Shared until an ID command names the client: most never do, and it is never mutated. */
  protected clientId: Readonly<{ name?: string; version?: string }> = NO_CLIENT_ID;
  private readonly startedAt = Date.now();
  private timer: NodeJS.Timeout | null = null;
  private preloginDeadline: NodeJS.Timeout | null = null;
  private greeted = false;
  private finished = false;
  private relay: Relay | null = null;
  /** Under TLS: the TCP socket beneath, until the relay takes over its listeners. */
  private tcpSocket: Socket | null = null;
  /** Set while a login runs; aborted when the client leaves, so the upstream dialogue stops too. */
  private loginAbort: AbortController | null = null;
  private sasl: { mechanism: string; exchange: SaslExchange } | null = null;
  private outcome: SessionOutcome = 'closed-before-login';
  private loginFields: Record<string, unknown> = {};
  private tlsVersion: string | null = null;
  private readonly clientAddress: string;
  private readonly clientPort: number;
  /** For the log's listener label, built when the session ends rather than kept as a string. */
  private readonly localAddress: string;
  private readonly localPort: number;

  abstract readonly protocol: 'imap' | 'pop3';
  /** Pre-login only: dropped once the session relays, so idle sessions stay small. */
  private currentParser: P | null;

  constructor(
    socket: Socket,
    protected readonly listener: ListenConfig,
    protected readonly context: SessionContext,
    parser: P,
    /** The real client, when a trusted proxy named it in a PROXY header. */
    origin?: { address: string; port: number } | null,
  ) {
    this.currentParser = parser;
    this.socket = socket;
    // IPv4 clients of a dual-stack listener appear as ::ffff:a.b.c.d; logs,
    // limits and fail2ban want the plain IPv4 form.
    this.clientAddress = canonicalAddress(origin?.address ?? socket.remoteAddress ?? 'unknown');
    this.clientPort = origin?.port ?? socket.remotePort ?? 0;
    this.localAddress = socket.localAddress ?? listener.host;
    this.localPort = socket.localPort ?? listener.port;
    this.clientKey = clientKey(this.clientAddress);
  }

  /**
   * A logger that tags every line with the session id. Made on demand rather
   * than kept: a pino child holds a dozen bound functions, and a session logs
   * a handful of lines in hours of idling.
   */
  protected get log(): Logger {
    return this.context.log.child({ session: this.id });
  }

  protected get parser(): P {
    if (!this.currentParser) throw new Error('the parser is gone once the session relays');
    return this.currentParser;
  }

  /** Pre-login: the greeting. */
  protected abstract greet(): void;
  /** Pre-login: answer one event from the parser. */
  protected abstract handleEvent(event: E): void;
  /** The protocol's last words when mailgate ends a session. */
  protected abstract farewell(reason: FarewellReason): string;
  /** The one-line refusal for a connection over the limits. */
  protected abstract refusal(): string;
  /** Drops protocol state that only matters before login. */
  protected abstract releasePrelogin(): void;
  /** Answers a command the dispatcher refused, in the protocol's words. */
  protected abstract answerRefusedCommand(command: C, refusal: CommandRefusal): void;
  /** Answers how a login ended (not a success: that is `answerLoggedIn`). */
  protected abstract answerLogin(outcome: Exclude<LoginOutcome, { kind: 'logged-in' | 'abandoned' }>): void;
  /** Confirms a login, in the protocol's words, before the relay starts. */
  protected abstract answerLoggedIn(upstream: LoggedIn): void;
  /** Answers a SASL exchange that ended without credentials. */
  protected abstract answerSaslError(reason: SaslErrorReason): void;

  /**
   * The session's own socket listeners, one pair for the TCP socket and the
   * TLS socket over it; the relay replaces them (see startRelay).
   */
  private readonly socketError = (err: Error) => this.onSocketError(err);
  private readonly socketClosed = () => this.onClose();

  start(): void {
    this.context.registry.add(this);
    this.listen(this.socket);
    if (this.listener.tls === 'implicit') {
      this.beginTls();
    } else {
      this.attachReader();
      this.enterPrelogin();
    }
  }

  get clientIp(): string {
    return this.clientAddress;
  }

  get client(): { address: string; port: number } {
    return { address: this.clientAddress, port: this.clientPort };
  }

  /** True when credentials may be sent: the connection is encrypted. */
  protected get loginAllowed(): boolean {
    return this.secure;
  }

  protected write(data: string | Buffer): void {
    if (this.state !== 'closed' && this.socket.writable) this.socket.write(data);
  }

  /** Writes a last line and closes. */
  protected closeWith(data: string, outcome: SessionOutcome): void {
    this.outcome = outcome;
    this.clearTimer();
    this.clearPreloginDeadline();
    this.state = 'closed';
    if (this.socket.writable) this.socket.end(data);
    // A peer that never reads must not keep the socket alive.
    setTimeout(() => this.socket.destroy(), 2000).unref();
  }

  /**
   * Runs a command through its table entry: unknown, out of place, or
   * carrying credentials in clear, it is refused and counted here, once,
   * whatever the protocol; otherwise its handler answers.
   */
  protected dispatch<S extends Session<E, P, C>>(this: S, name: string, command: C, table: ReadonlyMap<string, CommandSpec<S, C>>): void {
    const spec = table.get(name);
    const refusal: CommandRefusal | null = !spec
      ? { why: 'unknown' }
      : spec.state === 'after-login'
        ? { why: 'log-in-first' }
        : spec.needsTls && !this.loginAllowed
          ? { why: 'needs-tls' }
          : null;
    if (refusal) {
      this.refuseCommand(command, refusal);
      return;
    }
    const result = spec!.handler?.(this, command);
    if (result) this.refuseCommand(command, { why: 'bad', message: result.bad });
  }

  /**
   * Whether credentials sent before STARTTLS count as a bad command. IMAP
   * announces LOGINDISABLED and answers PRIVACYREQUIRED, which tells a client
   * what to do next, so it does not; POP3 has no such signal, and does.
   */
  protected abstract readonly plaintextLoginIsBad: boolean;

  /** Answers a refused command and counts it; too many close the session. */
  protected refuseCommand(command: C, refusal: CommandRefusal): void {
    this.answerRefusedCommand(command, refusal);
    if (refusal.why !== 'needs-tls' || this.plaintextLoginIsBad) this.countBadCommand();
  }

  /** Counts a command the client should not have sent; too many close the session. */
  protected countBadCommand(): void {
    this.badCommands += 1;
    if (this.badCommands >= this.context.config.limits.max_bad_commands) this.closeWith(this.farewell('errors'), 'too-many-errors');
  }

  /** STARTTLS/STLS, after the protocol wrote its go-ahead. */
  protected startTls(): void {
    this.clearTimer();
    // Anything after the STARTTLS line arrived in clear text before the
    // handshake could start: it is an injection attempt or garbage, never a
    // command (CVE-2011-0411 class). Drop what the parser and the stream hold.
    let dropped = this.parser.discardBuffered();
    this.socket.removeAllListeners('data');
    this.socket.pause();
    for (let chunk: Buffer | null; (chunk = this.socket.read() as Buffer | null) !== null; ) dropped += chunk.length;
    if (dropped > 0) this.log.warn({ clientIp: this.clientAddress, bytes: dropped }, 'dropped plaintext sent after STARTTLS');
    this.beginTls();
  }

  /** Whether STARTTLS/STLS may start here: a STARTTLS listener, not encrypted yet. */
  protected get starttlsOffered(): boolean {
    return this.listener.tls === 'starttls' && !this.secure;
  }

  private beginTls(): void {
    this.state = 'handshake';
    const plain = this.socket;
    this.tcpSocket = plain;
    const secure = wrapServerTls(plain, { tls: this.context.serverTls, protocol: this.protocol });
    // Closing the TLS socket must close the TCP socket under it at once.
    // ('close' comes once: on() spares idle sessions once()'s wrapper.)
    secure.on('close', () => plain.destroy());
    this.socket = secure;
    this.armTimer(this.context.config.timeouts.tls_handshake_seconds, () => {
      this.outcome = 'tls-handshake-timeout';
      this.destroy();
    });
    secure.once('secure', () => {
      // Ended (shutdown, say) while the handshake was running: stay ended.
      if (this.state === 'closed') return;
      this.secure = true;
      this.tlsVersion = secure.getProtocol();
      this.attachReader();
      this.enterPrelogin();
    });
    this.listen(secure);
  }

  private listen(socket: Socket): void {
    socket.on('error', this.socketError);
    socket.on('close', this.socketClosed);
  }

  /** The relay handles errors and closes from now on, of the TLS socket and the TCP socket under it. */
  private unlisten(): void {
    for (const socket of [this.socket, this.tcpSocket]) {
      socket?.removeListener('error', this.socketError);
      socket?.removeListener('close', this.socketClosed);
    }
    this.tcpSocket = null;
  }

  private attachReader(): void {
    this.socket.on('data', (chunk: Buffer) => {
      if (this.state === 'closed' || this.state === 'relaying' || !this.currentParser) return;
      this.parser.push(chunk);
      if (this.parser.bufferedBytes > MAX_PIPELINED_BYTES) this.socket.pause();
      if (this.state === 'prelogin') this.processInput();
    });
    this.socket.resume();
  }

  private enterPrelogin(): void {
    this.state = 'prelogin';
    this.touch();
    if (!this.greeted) {
      this.greeted = true;
      const refusal = this.context.admission(this);
      if (refusal) {
        // Over a connection limit: say so in the protocol, now that the client
        // can read us (after the handshake on implicit TLS), and close.
        this.closeWith(this.refusal(), refusal);
        return;
      }
      // However busy it keeps itself (NOOP, CAPABILITY...), a connection gets
      // only so long to log in.
      this.preloginDeadline = setTimeout(
        () => this.closeWith(this.farewell('idle'), 'prelogin-deadline'),
        this.context.config.timeouts.prelogin_total_seconds * 1000,
      );
      this.greet();
    }
    this.processInput();
  }

  /** Restarts the pre-login idle timer; called for every complete command. */
  protected touch(): void {
    this.armTimer(this.context.config.timeouts.prelogin_idle_seconds, () => this.closeWith(this.farewell('idle'), 'idle-timeout'));
  }

  /** Pre-login: takes events from the parser and answers them while the state allows. */
  protected processInput(): void {
    while (this.state === 'prelogin') {
      const event = this.parser.next();
      if (event === null) break;
      this.handleEvent(event);
    }
    this.resumeIfDrained();
  }

  /**
   * Drives a SASL exchange; both protocols frame its challenges the same way
   * ("+ " and base64, RFC 4422 profiles in RFC 9051 and RFC 5034).
   */
  protected startSasl(mechanism: string, initialResponse: string | undefined, method: (mechanism: string) => string): void {
    const exchange = new SaslExchange(mechanism);
    this.sasl = { mechanism: method(mechanism.toUpperCase()), exchange };
    this.onSaslStep(exchange.start(initialResponse));
  }

  /** A continuation line from the client, while an exchange is running. */
  protected continueSasl(line: Buffer): void {
    if (!this.sasl) return;
    this.onSaslStep(this.sasl.exchange.respond(line));
  }

  /** Abandons a running exchange (the parser reported an error instead of a response). */
  protected abandonSasl(): void {
    this.sasl = null;
  }

  private onSaslStep(step: SaslStep): void {
    const method = this.sasl!.mechanism;
    if (step.type === 'challenge') {
      this.write(`+ ${step.data}\r\n`);
      this.parser.expectSaslResponse();
      return;
    }
    this.sasl = null;
    if (step.type === 'done') {
      this.runLogin(saslCredentials(step.credentials, method));
      return;
    }
    this.answerSaslError(step.reason);
    // "*" is how a client takes back an exchange it started: not a misbehaviour.
    if (step.reason !== 'cancelled') this.countBadCommand();
  }

  /** Resumes reading after the parser was drained below the pipelining cap. */
  protected resumeIfDrained(): void {
    if (this.state === 'prelogin' && this.parser.bufferedBytes <= MAX_PIPELINED_BYTES && this.socket.isPaused()) this.socket.resume();
  }

  /**
   * The login's tail, the same for every mechanism of both protocols: the
   * login service decides; this answers in the protocol's words, counts
   * failures on the connection (too many close it), and relays on success.
   */
  protected runLogin(credentials: Credentials): void {
    this.login(credentials)
      .then((outcome) => {
        if (outcome.kind === 'abandoned') return;
        if (outcome.kind === 'logged-in') {
          this.loggedIn(outcome, credentials.method);
          return;
        }
        if (outcome.kind === 'refused' || (outcome.kind === 'temporary' && outcome.countsAsFailure)) this.failedLogins += 1;
        this.answerLogin(outcome);
        if (this.failedLogins >= this.context.config.limits.max_login_failures_per_connection) {
          this.closeWith(this.farewell('login-failures'), 'too-many-login-failures');
          return;
        }
        this.resumePrelogin();
      })
      .catch((err: unknown) => this.internalError(err));
  }

  /**
   * While a login runs the session stays in the registry (and so counts
   * against the connection limits) even if the client hangs up: a client
   * cannot have more guesses in flight by closing connections early.
   */
  private async login(credentials: Credentials): Promise<LoginOutcome> {
    this.state = 'authenticating';
    this.clearTimer();
    this.loginAbort = new AbortController();
    try {
      return await this.context.logins.login({
        channel: this.protocol,
        username: credentials.username,
        authzid: credentials.authzid ?? '',
        password: credentials.password,
        method: credentials.method,
        client: { address: this.clientAddress, port: this.clientPort },
        local: { address: this.localAddress, port: this.localPort },
        clientId: this.clientId,
        sessionId: this.id,
        signal: this.loginAbort.signal,
      });
    } finally {
      this.loginAbort = null;
      if (this.finished) this.context.registry.remove(this);
    }
  }

  private loggedIn(outcome: Extract<LoginOutcome, { kind: 'logged-in' }>, method: string): void {
    if (this.state === 'closed' || this.socket.destroyed) {
      outcome.upstream.socket.destroy();
      return;
    }
    const user = outcome.account?.username ?? outcome.user;
    this.loginFields = {
      user,
      mode: outcome.mode,
      method,
      ...(outcome.appPassword ? { appPasswordId: outcome.appPassword.id, appPasswordName: outcome.appPassword.name } : {}),
    };
    this.auth = {
      accountId: outcome.account?.id ?? null,
      accountCreatedAt: outcome.account?.createdAt ?? null,
      username: user,
      appPasswordId: outcome.appPassword?.id ?? null,
      appPasswordCreatedAt: outcome.appPassword?.createdAt ?? null,
      appPasswordName: outcome.appPassword?.name ?? null,
      mode: outcome.mode,
      loginAt: Date.now(),
    };
    this.answerLoggedIn(outcome.upstream);
    this.startRelay(outcome.upstream);
  }

  /** After a failed login, go back to reading commands. */
  private resumePrelogin(): void {
    if (this.state !== 'authenticating') return;
    this.state = 'prelogin';
    this.touch();
    this.resumeIfDrained();
    this.processInput();
  }

  /** After the protocol wrote its success line: relay from now on. */
  private startRelay(upstream: LoggedIn): void {
    this.state = 'relaying';
    this.outcome = 'relayed';
    this.context.registry.markAuthenticated(this);
    this.clearTimer();
    this.clearPreloginDeadline();
    this.socket.removeAllListeners('data');
    this.unlisten();
    const pipelined = this.parser.takeBuffered();
    this.currentParser = null;
    this.sasl = null;
    this.releasePrelogin();
    this.relay = new Relay(this.socket, upstream.socket, {
      toUpstream: pipelined,
      toClient: upstream.leftover,
      idleTimeoutMs: this.context.config.timeouts.session_idle_seconds * 1000,
      onClose: (result) => this.onRelayClosed(result),
    });
    this.log.info({ clientIp: this.clientAddress, ...this.loginFields }, 'login ok');
  }

  terminate(reason: TerminationReason): void {
    if (this.state === 'closed') return;
    this.outcome = reason === 'shutdown' || reason === 'blocked' || reason === 'kicked' ? reason : 'revoked';
    if (this.relay) {
      this.relay.terminate(this.farewell(reason));
    } else {
      this.closeWith(this.farewell(reason), this.outcome);
    }
  }

  private onRelayClosed(result: RelayResult): void {
    if (this.outcome === 'relayed') this.outcome = result.reason;
    this.finish(result.clientBytesIn, result.clientBytesOut);
  }

  private onSocketError(err: Error & { code?: string }): void {
    // Resets and broken pipes are how mail clients hang up; not worth a warning.
    const quiet = err.code === 'ECONNRESET' || err.code === 'EPIPE' || err.code === 'ETIMEDOUT';
    if (!quiet && this.state !== 'relaying') this.log.debug({ clientIp: this.clientAddress, err: err.message, code: err.code }, 'client socket error');
    if (this.state === 'handshake' && this.outcome === 'closed-before-login') this.outcome = 'tls-handshake-failed';
    this.destroy();
  }

  private onClose(): void {
    if (this.relay) return; // the relay reports when both sides are gone
    this.finish(this.socket.bytesRead, this.socket.bytesWritten);
  }

  private finish(bytesIn: number, bytesOut: number): void {
    if (this.finished) return;
    this.finished = true;
    this.state = 'closed';
    this.clearTimer();
    this.clearPreloginDeadline();
    // A login still running keeps its place until it settles (see login()).
    if (this.loginAbort) this.loginAbort.abort();
    else this.context.registry.remove(this);
    this.log.info(
      {
        clientIp: this.clientAddress,
        clientPort: this.clientPort,
        listener: `${this.listener.protocol}/${this.listener.tls}@${this.localAddress}:${this.localPort}`,
        protocol: this.protocol,
        tls: this.tlsVersion,
        ...this.loginFields,
        client: this.clientId.name ?? null,
        clientVersion: this.clientId.version ?? null,
        outcome: this.outcome,
        bytesIn,
        bytesOut,
        durationMs: Date.now() - this.startedAt,
      },
      'session closed',
    );
  }

  /** A bug, not the client's doing: log it in full, tell the client little, close. */
  protected internalError(err: unknown): void {
    this.log.error({ err }, 'internal error in session');
    this.closeWith(this.farewell('internal'), 'internal-error');
  }

  protected destroy(): void {
    this.clearTimer();
    if (this.state !== 'relaying') this.state = 'closed';
    this.socket.destroy();
  }

  private armTimer(seconds: number, fire: () => void): void {
    this.clearTimer();
    this.timer = setTimeout(fire, seconds * 1000);
  }

  private clearTimer(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  private clearPreloginDeadline(): void {
    if (this.preloginDeadline) clearTimeout(this.preloginDeadline);
    this.preloginDeadline = null;
  }
}

function saslCredentials(credentials: SaslCredentials, method: string): Credentials {
  return { username: credentials.username, authzid: credentials.authzid, password: credentials.password, method };
}

const NO_CLIENT_ID: Readonly<{ name?: string; version?: string }> = Object.freeze({});
