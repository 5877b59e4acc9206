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
import type { AuthAttempt, AuthDecision, AuthPolicy } from '../auth/policy.js';
import { clientKey } from '../auth/client-key.js';
import type { Config, ListenConfig } from '../config/schema.js';
import type { Logger } from '../log/logger.js';
import type { UpstreamTarget } from '../upstream/connect.js';
import type { ClientOrigin, UpstreamCredentials, UpstreamLoginResult } from '../upstream/credentials.js';
import { Relay, type RelayResult } from './relay.js';
import type { SessionAuth, SessionRegistry, TerminationReason, TrackedSession } from './registry.js';
import { wrapServerTls, type ServerTls } from './tls.js';

/** What every session needs from the gateway around it. */
export interface GatewayServices {
  config: Config;
  log: Logger;
  policy: AuthPolicy;
  serverTls: ServerTls;
  registry: SessionRegistry;
  upstreams: { imap: UpstreamTarget; pop3: UpstreamTarget };
  /** Last known capabilities of each upstream, for the pre-login answers. */
  upstreamCapabilities: { imap: string[] | null; pop3: string[] | null };
  /** Connection limits: null to admit the session, or the reason to refuse it. */
  admission?: (session: Session) => string | null;
}

/** The parts of a protocol parser the shared session drives. */
export interface SessionParser {
  push(chunk: Buffer): void;
  discardBuffered(): number;
  takeBuffered(): Buffer;
  readonly bufferedBytes: number;
}

export type FarewellReason = TerminationReason | 'idle' | 'errors' | 'internal';

export type SessionState = 'handshake' | 'prelogin' | 'authenticating' | 'starttls' | 'relaying' | 'closed';

export type LoginOutcome =
  | { ok: true; decision: Extract<AuthDecision, { outcome: 'accept' }>; upstream: Extract<UpstreamLoginResult, { ok: true }> }
  | { ok: false; kind: 'refused' }
  | { ok: false; kind: 'temporary' }
  | { ok: false; kind: 'in-use' };

export interface Credentials {
  username: string;
  password: Buffer;
  /** How the client sent them, for the log: login, authenticate-plain, user-pass... */
  method: string;
}

/** Pause reading from a client that pipelines more than this before login. */
const MAX_PIPELINED_BYTES = 64 * 1024;

export abstract class Session implements TrackedSession {
  readonly id = randomBytes(6).toString('base64url');
  readonly clientKey: string;
  auth: SessionAuth | null = null;
  protected socket: Socket;
  protected state: SessionState = 'handshake';
  protected secure = false;
  protected badCommands = 0;
  protected failedLogins = 0;
  protected clientId: { name?: string; version?: string } = {};
  protected readonly log: Logger;
  private readonly startedAt = Date.now();
  private timer: NodeJS.Timeout | null = null;
  private relay: Relay | null = null;
  private outcome = 'closed-before-login';
  private loginFields: Record<string, unknown> = {};
  private tlsVersion: string | null = null;
  private readonly clientAddress: string;
  private readonly clientPort: number;
  private readonly listenerLabel: string;

  abstract readonly protocol: 'imap' | 'pop3';
  protected abstract readonly parser: SessionParser;

  constructor(
    socket: Socket,
    protected readonly listener: ListenConfig,
    protected readonly services: GatewayServices,
  ) {
    this.socket = socket;
    this.clientAddress = socket.remoteAddress ?? 'unknown';
    this.clientPort = socket.remotePort ?? 0;
    this.listenerLabel = `${listener.protocol}/${listener.tls}@${socket.localAddress ?? listener.host}:${socket.localPort ?? listener.port}`;
    this.clientKey = clientKey(this.clientAddress);
    this.log = services.log.child({ session: this.id });
  }

  /** Pre-login: the greeting. */
  protected abstract greet(): void;
  /** Pre-login: take events from the parser and answer them while the state allows. */
  protected abstract processInput(): void;
  /** The protocol's last words when mailgate ends a session. */
  protected abstract farewell(reason: FarewellReason): string;
  /** Logs in upstream with these credentials. */
  protected abstract loginUpstream(credentials: UpstreamCredentials, origin: ClientOrigin): Promise<UpstreamLoginResult>;

  start(): void {
    this.services.registry.add(this);
    this.socket.on('error', (err) => this.onSocketError(err));
    this.socket.on('close', () => this.onClose());
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
    this.state = 'starttls';
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
    const secure = wrapServerTls(plain, { tls: this.services.serverTls, protocol: this.protocol });
    this.socket = secure;
    this.armTimer(this.services.config.timeouts.tls_handshake_seconds, () => {
      this.outcome = 'tls-handshake-timeout';
      this.destroy();
    });
    secure.once('secure', () => {
      this.secure = true;
      this.tlsVersion = secure.getProtocol();
      this.attachReader();
      this.enterPrelogin();
    });
    secure.on('error', (err) => this.onSocketError(err));
    secure.on('close', () => this.onClose());
  }

  private attachReader(): void {
    this.socket.on('data', (chunk: Buffer) => {
      if (this.state === 'closed' || this.state === 'relaying') return;
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
      this.greet();
    }
    this.processInput();
  }

  private greeted = false;

  /** The one-line refusal for a connection over the limits. */
  protected abstract refusal(): string;

  /** Restarts the pre-login idle timer; called for every complete command. */
  protected touch(): void {
    this.armTimer(this.services.config.timeouts.prelogin_idle_seconds, () => this.closeWith(this.farewell('idle'), 'idle-timeout'));
  }

  /** Resumes reading after the parser was drained below the pipelining cap. */
  protected resumeIfDrained(): void {
    if (this.parser.bufferedBytes <= MAX_PIPELINED_BYTES && this.socket.isPaused() && this.state === 'prelogin') this.socket.resume();
  }

  /**
   * The login pipeline shared by every mechanism of both protocols: the
   * policy decides, the upstream confirms, the store records.
   */
  protected async login(credentials: Credentials): Promise<LoginOutcome> {
    this.state = 'authenticating';
    this.clearTimer();
    const attempt: AuthAttempt = {
      username: credentials.username,
      password: credentials.password,
      protocol: this.protocol,
      clientIp: this.clientAddress,
      client: this.clientId.name ? `${this.clientId.name}${this.clientId.version ? `/${this.clientId.version}` : ''}` : null,
    };
    const decision = await this.services.policy.decide(attempt);
    if (decision.outcome !== 'accept') return this.loginFailed(attempt, credentials, decision);

    const upstream = await this.loginUpstream(decision.upstream, this.origin());
    if (upstream.ok) {
      this.safely(() => this.services.policy.recordSuccess(attempt, decision));
      this.loginFields = {
        user: decision.account?.username ?? decision.upstream.user,
        mode: decision.mode,
        method: credentials.method,
        ...(decision.mode === 'app-password' ? { appPasswordId: decision.appPassword.id, appPasswordName: decision.appPassword.name } : {}),
      };
      this.auth = {
        accountId: decision.account?.id ?? null,
        username: decision.account?.username ?? decision.upstream.user,
        appPasswordId: decision.mode === 'app-password' ? decision.appPassword.id : null,
        mode: decision.mode,
        loginAt: Date.now(),
      };
      return { ok: true, decision, upstream };
    }
    if (upstream.kind === 'rejected') {
      const inUse = upstream.code === 'IN-USE' || upstream.code === 'LOGIN-DELAY';
      return this.loginFailed(attempt, credentials, { outcome: 'refuse', reason: 'upstream-rejected', username: decision.upstream.user }, inUse ? 'in-use' : 'refused', upstream.reason);
    }
    this.log.warn({ clientIp: this.clientAddress, user: decision.upstream.user, reason: upstream.reason }, 'upstream login failed');
    return this.loginFailed(attempt, credentials, { outcome: 'temporary', reason: 'upstream-unavailable', username: decision.upstream.user });
  }

  private loginFailed(
    attempt: AuthAttempt,
    credentials: Credentials,
    decision: Exclude<AuthDecision, { outcome: 'accept' }>,
    kind: 'refused' | 'in-use' = 'refused',
    upstreamText?: string,
  ): LoginOutcome {
    const fields = {
      clientIp: this.clientAddress,
      clientPort: this.clientPort,
      protocol: this.protocol,
      user: decision.username,
      method: credentials.method,
      reason: decision.reason,
      ...(upstreamText ? { upstream: upstreamText } : {}),
      ...(decision.outcome === 'temporary' && decision.detail ? { detail: decision.detail } : {}),
    };
    if (decision.outcome === 'refuse') {
      this.failedLogins += 1;
      // A stable message and field names: fail2ban's filter keys on them.
      this.log.info(fields, 'login failed');
      this.safely(() => this.services.policy.recordFailure(attempt, decision.username, decision.reason));
      return { ok: false, kind };
    }
    this.log.warn(fields, 'login temporarily failed');
    return { ok: false, kind: 'temporary' };
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
    this.socket.removeAllListeners('data');
    const pipelined = this.parser.takeBuffered();
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
    this.outcome = reason === 'revoked' ? 'revoked' : 'shutdown';
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
    this.services.registry.remove(this);
    this.log.info(
      {
        clientIp: this.clientAddress,
        clientPort: this.clientPort,
        listener: this.listenerLabel,
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
      clientIp: this.clientAddress.startsWith('::ffff:') ? this.clientAddress.slice(7) : this.clientAddress,
      clientPort: this.clientPort,
      localIp: this.socket.localAddress ?? '',
      localPort: this.socket.localPort ?? 0,
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

  /** Store writes after the fact must never take a session down with them. */
  private safely(work: () => void): void {
    try {
      work();
    } catch (err) {
      this.log.warn({ err: err instanceof Error ? err.message : String(err) }, 'could not record the login in the store');
    }
  }
}

export type { TLSSocket };
