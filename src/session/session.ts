/**
 * One client connection, from accept to close: the part both protocols share.
 *
 * It owns the socket, the TLS handshake (implicit or STARTTLS), the pre-login
 * timers, the misbehaviour counter, the login pipeline (policy, then upstream)
 * and the hand-over to the relay, and it writes the session's log line.
 * ImapSession and Pop3Session add the protocol: they feed the parser, answer
 * commands, and say how to log in upstream.
 */
import { randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import type { AbuseGuard, Admission } from '../auth/abuse.js';
import type { RefusalTiming } from '../auth/refusal-timing.js';
import type { AuthAttempt, AuthDecision, AuthPolicy } from '../auth/policy.js';
import { canonicalAddress, clientKey } from '../auth/client-key.js';
import { FIXED_LIMITS } from '../config/limits.js';
import type { Config, ListenConfig } from '../config/schema.js';
import { clipName, type Logger } from '../log/logger.js';
import type { RepeatedLines } from '../log/repeated-lines.js';
import type { StoreHandle } from '../store/store-handle.js';
import type { Metrics } from '../server/metrics.js';
import type { UpstreamTarget } from '../upstream/connect.js';
import type { ClientOrigin, UpstreamCredentials, UpstreamLoginResult } from '../upstream/credentials.js';
import { SaslExchange, type SaslCredentials, type SaslErrorReason, type SaslStep } from '../protocols/sasl.js';
import { Relay, type RelayResult } from './relay.js';
import type { SessionAuth, SessionRegistry, TerminationReason, TrackedSession } from './registry.js';
import { wrapServerTls, type ServerTls } from './tls.js';
import { errorMessage } from '../errors.js';

/** What every session needs from the gateway around it. */
export interface GatewayServices {
  config: Config;
  log: Logger;
  store: StoreHandle;
  policy: AuthPolicy;
  guard: AbuseGuard;
  refusalTiming: RefusalTiming;
  metrics: Metrics;
  serverTls: ServerTls;
  registry: SessionRegistry;
  upstreams: { imap: UpstreamTarget; pop3: UpstreamTarget };
  /** Last known capabilities of each upstream, for the pre-login answers. */
  upstreamCapabilities: { imap: string[] | null; pop3: string[] | null };
  /** Connection limits: null to admit the session, or the reason to refuse it. */
  admission?: (session: Session) => string | null;
  /** Lines a storm would repeat (repeated refusals, blocked and temporary attempts), summarised per address. */
  repeatedLines: RepeatedLines;
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

export type FarewellReason = TerminationReason | 'idle' | 'errors' | 'internal';

export type SessionState = 'handshake' | 'prelogin' | 'authenticating' | 'relaying' | 'closed';

export type LoginOutcome =
  | { ok: true; decision: Extract<AuthDecision, { outcome: 'accept' }>; upstream: Extract<UpstreamLoginResult, { ok: true }> }
  | { ok: false; kind: 'refused' }
  | { ok: false; kind: 'temporary' }
  /** The upstream said the mailbox is busy (RFC 2449 IN-USE or LOGIN-DELAY); not the client's fault. */
  | { ok: false; kind: 'in-use'; code: 'IN-USE' | 'LOGIN-DELAY' };

export interface Credentials {
  username: string;
  /** SASL PLAIN's authzid, as sent ('' when none). */
  authzid?: string;
  password: Buffer;
  /** How the client sent them, for the log: login, authenticate-plain, user-pass... */
  method: string;
}

/** Pause reading from a client that pipelines more than this before login. */
const MAX_PIPELINED_BYTES = FIXED_LIMITS.prelogin_pipeline_bytes;

export abstract class Session<E = unknown, P extends SessionParser<E> = SessionParser<E>> implements TrackedSession {
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
  private relay: Relay | null = null;
  /** Under TLS: the TCP socket beneath, until the relay takes over its listeners. */
  private tcpSocket: Socket | null = null;
  /** Set while a login runs; aborted when the client leaves, so the upstream dialogue stops too. */
  private loginAbort: AbortController | null = null;
  private sasl: { mechanism: string; exchange: SaslExchange } | null = null;
  private outcome = 'closed-before-login';
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
    protected readonly services: GatewayServices,
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
    return this.services.log.child({ session: this.id });
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
  /** Drops protocol state that only matters before login. */
  protected abstract releasePrelogin(): void;
  /** A SASL exchange (AUTHENTICATE / AUTH) produced credentials. */
  protected abstract saslDone(credentials: SaslCredentials, mechanism: string): void;
  /** A SASL exchange ended without credentials: answer the protocol's way. */
  protected abstract saslFailed(reason: SaslErrorReason): void;
  /** Logs in upstream with these credentials; gives up when `clientLeft` fires. */
  protected abstract loginUpstream(credentials: UpstreamCredentials, origin: ClientOrigin, clientLeft: AbortSignal): Promise<UpstreamLoginResult>;

  /**
   * The session's own socket listeners, one pair for the TCP socket and the
   * TLS socket over it; the relay replaces them (see startRelay).
   */
  private readonly socketError = (err: Error) => this.onSocketError(err);
  private readonly socketClosed = () => this.onClose();

  start(): void {
    this.services.registry.add(this);
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

  /** True when credentials may be sent: the connection is encrypted. */
  protected get loginAllowed(): boolean {
    return this.secure;
  }

  protected write(data: string | Buffer): void {
    if (this.state !== 'closed' && this.socket.writable) this.socket.write(data);
  }

  /** Writes a last line and closes. */
  protected closeWith(data: string, outcome: string): void {
    this.outcome = outcome;
    this.clearTimer();
    this.clearPreloginDeadline();
    this.state = 'closed';
    if (this.socket.writable) this.socket.end(data);
    // A peer that never reads must not keep the socket alive.
    setTimeout(() => this.socket.destroy(), 2000).unref();
  }

  /** Counts a command the client should not have sent; too many close the session. */
  protected countBadCommand(): boolean {
    this.badCommands += 1;
    if (this.badCommands >= this.services.config.limits.max_bad_commands) {
      this.closeWith(this.farewell('errors'), 'too-many-errors');
      return false;
    }
    return true;
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

  private beginTls(): void {
    this.state = 'handshake';
    const plain = this.socket;
    this.tcpSocket = plain;
    const secure = wrapServerTls(plain, { tls: this.services.serverTls, protocol: this.protocol });
    // Closing the TLS socket must close the TCP socket under it at once.
    // ('close' comes once: on() spares idle sessions once()'s wrapper.)
    secure.on('close', () => plain.destroy());
    this.socket = secure;
    this.armTimer(this.services.config.timeouts.tls_handshake_seconds, () => {
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
      const refusal = this.services.admission?.(this);
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
        this.services.config.timeouts.prelogin_total_seconds * 1000,
      );
      this.greet();
    }
    this.processInput();
  }

  private preloginDeadline: NodeJS.Timeout | null = null;

  private greeted = false;

  /** The one-line refusal for a connection over the limits. */
  protected abstract refusal(): string;

  /** Restarts the pre-login idle timer; called for every complete command. */
  protected touch(): void {
    this.armTimer(this.services.config.timeouts.prelogin_idle_seconds, () => this.closeWith(this.farewell('idle'), 'idle-timeout'));
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
  protected startSasl(mechanism: string, initialResponse: string | undefined): void {
    const exchange = new SaslExchange(mechanism);
    this.sasl = { mechanism: mechanism.toUpperCase(), exchange };
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
    const mechanism = this.sasl!.mechanism;
    if (step.type === 'challenge') {
      this.write(`+ ${step.data}\r\n`);
      this.parser.expectSaslResponse();
      return;
    }
    this.sasl = null;
    if (step.type === 'done') this.saslDone(step.credentials, mechanism);
    else this.saslFailed(step.reason);
  }

  /** Resumes reading after the parser was drained below the pipelining cap. */
  protected resumeIfDrained(): void {
    if (this.state === 'prelogin' && this.parser.bufferedBytes <= MAX_PIPELINED_BYTES && this.socket.isPaused()) this.socket.resume();
  }

  /**
   * The login pipeline shared by every mechanism of both protocols: the
   * policy decides, the upstream confirms, the store records.
   *
   * While it runs the session stays in the registry (and so counts against
   * the connection limits) even if the client hangs up, and the client's
   * credential-check slot is held until the verdict is in, the upstream's
   * included: a client cannot have more guesses in flight by closing
   * connections early, or by choosing passwords the upstream checks.
   */
  protected async login(credentials: Credentials): Promise<LoginOutcome> {
    this.state = 'authenticating';
    this.clearTimer();
    this.loginAbort = new AbortController();
    try {
      return await this.checkCredentials(credentials, this.loginAbort.signal);
    } finally {
      this.loginAbort = null;
      if (this.finished) this.services.registry.remove(this);
    }
  }

  private async checkCredentials(credentials: Credentials, clientLeft: AbortSignal): Promise<LoginOutcome> {
    const startedAt = Date.now();
    const attempt: AuthAttempt = {
      username: credentials.username,
      authzid: credentials.authzid ?? '',
      password: credentials.password,
      protocol: this.protocol,
      clientIp: this.clientAddress,
      client: this.clientId.name ? `${this.clientId.name}${this.clientId.version ? `/${this.clientId.version}` : ''}` : null,
    };
    const { guard, policy, store } = this.services;
    // Blocks and failures count against the account the attempt names, as the upstream would read it.
    const account = policy.penaltyAccount(credentials.username);
    const unavailable = (err: unknown) =>
      this.loginFailed(attempt, credentials, account, { outcome: 'temporary', reason: 'store-unavailable', username: credentials.username, detail: errorMessage(err) }, startedAt);
    try {
      // While the store cannot be written, no password is checked: a guesser's
      // failures could not be counted, nor a success recorded.
      store.writable();
    } catch (err) {
      return unavailable(err);
    }
    let admission: Admission;
    try {
      admission = await guard.admit(this.clientKey, account, credentials.password);
    } catch (err) {
      store.failed(err);
      return unavailable(err);
    }
    if (!admission.ok) return this.blocked(credentials, admission.blockedBy);

    let decision: AuthDecision;
    let upstream: UpstreamLoginResult | null = null;
    try {
      decision = await policy.decide(admission.appPasswordsOnly ? { ...attempt, appPasswordsOnly: true } : attempt);
      if (decision.outcome === 'accept' && !clientLeft.aborted) {
        upstream = await this.loginUpstream(decision.upstream, this.origin(), clientLeft);
      }
    } finally {
      admission.release();
    }
    if (decision.outcome !== 'accept') return this.loginFailed(attempt, credentials, account, decision, startedAt);
    const user = decision.upstream.user;
    if (!upstream || clientLeft.aborted || this.finished) {
      // The client hung up meanwhile: nobody to relay for, nothing to record.
      if (upstream?.ok) upstream.socket.destroy();
      return { ok: false, kind: 'temporary' };
    }
    if (upstream.ok) {
      // Recorded before the client hears OK: a login the store cannot record does not get in.
      if (!this.record(() => policy.recordSuccess(attempt, decision))) {
        upstream.socket.destroy();
        return this.unrecorded(attempt, credentials, account, user, startedAt);
      }
      this.services.metrics.logins.inc({ protocol: this.protocol, result: 'ok' });
      this.loginFields = {
        user: decision.account?.username ?? user,
        mode: decision.mode,
        method: credentials.method,
        ...(decision.mode === 'app-password' ? { appPasswordId: decision.appPassword.id, appPasswordName: decision.appPassword.name } : {}),
      };
      this.auth = {
        accountId: decision.account?.id ?? null,
        accountCreatedAt: decision.account?.createdAt ?? null,
        username: decision.account?.username ?? user,
        appPasswordId: decision.mode === 'app-password' ? decision.appPassword.id : null,
        appPasswordCreatedAt: decision.mode === 'app-password' ? decision.appPassword.createdAt : null,
        mode: decision.mode,
        loginAt: Date.now(),
      };
      return { ok: true, decision, upstream };
    }
    if (upstream.kind === 'rejected' && (upstream.code === 'IN-USE' || upstream.code === 'LOGIN-DELAY')) {
      // The credentials were right; the mailbox is busy. Not a failure to punish.
      this.log.info({ clientIp: this.clientAddress, user: clipName(user), protocol: this.protocol, upstream: upstream.reason }, 'mailbox in use upstream');
      return { ok: false, kind: 'in-use', code: upstream.code === 'LOGIN-DELAY' ? 'LOGIN-DELAY' : 'IN-USE' };
    }
    if (upstream.kind === 'rejected') {
      const refusal = { outcome: 'refuse', reason: 'upstream-rejected', username: user } as const;
      policy.rememberUpstreamRefusal(attempt, refusal);
      return this.loginFailed(attempt, credentials, account, refusal, startedAt, upstream.reason);
    }
    if (upstream.kind === 'no-such-account') {
      // The master login worked but the mail server has no such mailbox: the
      // user's problem to hear about as a failed login, the operator's to fix.
      this.log.warn({ clientIp: this.clientAddress, user: clipName(user), protocol: this.protocol, upstream: upstream.reason }, 'the mail server does not know this account');
      return this.loginFailed(attempt, credentials, account, { outcome: 'refuse', reason: 'unknown-upstream-account', username: user }, startedAt, upstream.reason);
    }
    this.log.warn({ clientIp: this.clientAddress, user: clipName(user), reason: upstream.reason }, 'upstream login failed');
    return this.loginFailed(attempt, credentials, account, { outcome: 'temporary', reason: 'upstream-unavailable', username: user }, startedAt);
  }

  /**
   * A blocked client or account: refused without the password being looked
   * at, answered like any temporary failure (see temporaryFailure).
   */
  private async blocked(credentials: Credentials, blockedBy: 'ip' | 'account'): Promise<LoginOutcome> {
    this.services.metrics.logins.inc({ protocol: this.protocol, result: 'blocked' });
    this.services.repeatedLines.write('warn', 'login blocked', `${blockedBy}\0${credentials.username}`, { clientIp: this.clientAddress, session: this.id, user: clipName(credentials.username), protocol: this.protocol, blockedBy });
    return this.temporaryFailure(true);
  }

  /**
   * Every temporary answer (blocked, hashing busy, store or upstream down, a
   * login that could not be recorded) waits the first-failure delay, so none
   * stands out from the others by its timing: the answer tells nothing about
   * the account or the password. Those a client can bring about at will
   * (blocked, hashing busy: refused without a check) also count as failed
   * logins on this connection, so they cannot be repeated fast on one; an
   * outage of the store or the upstream does not cut off the clients that
   * wait it out.
   */
  private async temporaryFailure(countsOnConnection: boolean): Promise<LoginOutcome> {
    if (countsOnConnection) this.failedLogins += 1;
    await delay(this.services.guard.delayFor(1));
    return { ok: false, kind: 'temporary' };
  }

  /**
   * The upstream accepted the login but the store could not record it. It
   * is answered like a refusal the store could not count (see loginFailed),
   * so neither the answer nor its timing tells the password was right.
   */
  private unrecorded(attempt: AuthAttempt, credentials: Credentials, account: string, user: string, startedAt: number): Promise<LoginOutcome> {
    return this.loginFailed(attempt, credentials, account, { outcome: 'temporary', reason: 'store-unavailable', username: user, detail: 'the login could not be recorded' }, startedAt);
  }

  private async loginFailed(
    attempt: AuthAttempt,
    credentials: Credentials,
    account: string,
    decision: Exclude<AuthDecision, { outcome: 'accept' }>,
    startedAt: number,
    upstreamText?: string,
  ): Promise<LoginOutcome> {
    const fields = {
      clientIp: this.clientAddress,
      clientPort: this.clientPort,
      // Named here too: summarised lines are written by the gateway's logger, not this session's.
      session: this.id,
      protocol: this.protocol,
      user: clipName(decision.username),
      method: credentials.method,
      reason: decision.reason,
      ...(upstreamText ? { upstream: upstreamText } : {}),
      ...(decision.outcome === 'temporary' && decision.detail ? { detail: decision.detail } : {}),
    };
    if (decision.outcome !== 'refuse') {
      this.services.metrics.logins.inc({ protocol: this.protocol, result: 'temporary' });
      this.services.repeatedLines.write('warn', 'login temporarily failed', decision.reason, fields);
      return this.temporaryFailure(decision.reason === 'hash-busy' || decision.reason === 'blocked');
    }
    this.failedLogins += 1;
    this.services.metrics.logins.inc({ protocol: this.protocol, result: 'failed' });
    // A stable message and field names: fail2ban's filter keys on them. A
    // repeat of a refusal goes to the summarised lines, and is not audited again.
    if (decision.repeat) this.services.repeatedLines.write('info', 'login failed', `${decision.reason}\0${decision.username}`, { ...fields, repeat: true });
    else this.services.log.info(fields, 'login failed');
    // Answer no sooner than a refusal decided elsewhere would be (timing must
    // not tell which accounts mailgate knows), then add the penalty delay.
    const source = decision.reason === 'upstream-rejected' || decision.reason === 'unknown-upstream-account' ? 'upstream' : 'local';
    let delayMs = this.services.refusalTiming.settle(this.protocol, source, Date.now() - startedAt);
    // If the penalty store cannot be written, still delay as for a first failure.
    let penaltyMs = this.services.guard.delayFor(1);
    // The audit write failing (locked, read-only) means the counters would fail
    // too: not tried, each attempt could hold the event loop for the busy timeout.
    const counted =
      (decision.repeat === true || this.record(() => this.services.policy.recordFailure(attempt, clipName(decision.username), decision.reason))) &&
      this.record(() => {
        penaltyMs = this.services.guard.recordFailure(this.clientKey, account, credentials.password);
      });
    delayMs += penaltyMs;
    // The answer waits: cheap for a person, expensive for a guesser.
    await delay(delayMs);
    // A failure that could not be counted is answered as temporary, like the
    // logins refused meanwhile without a check (see checkCredentials).
    return counted ? { ok: false, kind: 'refused' } : { ok: false, kind: 'temporary' };
  }

  /** After a failed login, go back to reading commands. */
  protected resumePrelogin(): void {
    if (this.state !== 'authenticating') return;
    this.state = 'prelogin';
    this.touch();
    this.resumeIfDrained();
    this.processInput();
  }

  /** After the protocol wrote its success line: relay from now on. */
  protected startRelay(upstream: Extract<UpstreamLoginResult, { ok: true }>): void {
    if (this.state === 'closed' || this.socket.destroyed) {
      upstream.socket.destroy();
      return;
    }
    this.state = 'relaying';
    this.outcome = 'relayed';
    this.services.registry.markAuthenticated(this);
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
      idleTimeoutMs: this.services.config.timeouts.session_idle_seconds * 1000,
      onClose: (result) => this.onRelayClosed(result),
    });
    this.log.info({ clientIp: this.clientAddress, ...this.loginFields }, 'login ok');
  }

  terminate(reason: TerminationReason): void {
    if (this.state === 'closed') return;
    this.outcome = reason === 'shutdown' || reason === 'blocked' ? reason : 'revoked';
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

  private finished = false;

  private finish(bytesIn: number, bytesOut: number): void {
    if (this.finished) return;
    this.finished = true;
    this.state = 'closed';
    this.clearTimer();
    this.clearPreloginDeadline();
    // A login still running keeps its place until it settles (see login()).
    if (this.loginAbort) this.loginAbort.abort();
    else this.services.registry.remove(this);
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

  private origin(): ClientOrigin {
    return {
      clientIp: this.clientAddress,
      clientPort: this.clientPort,
      localIp: this.localAddress,
      localPort: this.localPort,
      sessionId: this.id,
    };
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

  /**
   * A login's bookkeeping: false if it could not be committed, and the store
   * then refuses logins until its writes work again. Never throws: a store
   * error must not take the session down.
   */
  private record(work: () => void): boolean {
    try {
      work();
      return true;
    } catch (err) {
      this.log.warn({ err: errorMessage(err) }, 'could not record the login in the store');
      this.services.store.writeFailed(err);
      return false;
    }
  }
}



function delay(ms: number): Promise<void> {
  return ms > 0 ? new Promise((resolve) => setTimeout(resolve, ms)) : Promise.resolve();
}

const NO_CLIENT_ID: Readonly<{ name?: string; version?: string }> = Object.freeze({});


export type { TLSSocket };
