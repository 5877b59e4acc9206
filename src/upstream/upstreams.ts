/**
 * The configured upstream mail servers, one per protocol: logging in to them
 * for a client, and what they are known to offer (their capabilities, for
 * the gateway's own pre-login answers), learnt by a probe at start-up and
 * refreshed by every login dialogue.
 */
import { FIXED_LIMITS } from '../config/limits.js';
import type { Config } from '../config/schema.js';
import { errorMessage } from '../errors.js';
import type { Logger } from '../log/logger.js';
import type { UpstreamTarget } from './connect.js';
import type { ClientOrigin, UpstreamCredentials, UpstreamLoginResult } from './credentials.js';
import { loginImapUpstream } from './imap-login.js';
import { loginPop3Upstream } from './pop3-login.js';
import { checkUpstream, probeImapCapabilities, probePop3Capabilities, type UpstreamReport } from './probe.js';

export type UpstreamProtocol = 'imap' | 'pop3';


/** What logging in upstream needs; the login service depends on this, not on sockets. */
export interface UpstreamLogin {
  login(protocol: UpstreamProtocol, credentials: UpstreamCredentials, origin: ClientOrigin, clientLeft: AbortSignal): Promise<UpstreamLoginResult>;
  /** Ends an IMAP session logged in only to prove a password (the self-service page). */
  logout(session: Extract<UpstreamLoginResult, { ok: true }>): void;
}

export class Upstreams implements UpstreamLogin {
  /** Last known capabilities of each upstream (IMAP: pre-login; POP3: CAPA), or null before the first contact. */
  readonly capabilities: Record<UpstreamProtocol, string[] | null> = { imap: null, pop3: null };

  constructor(
    private readonly targets: Record<UpstreamProtocol, UpstreamTarget>,
    private readonly config: Pick<Config, 'timeouts' | 'upstream'>,
  ) {}

  login(protocol: UpstreamProtocol, credentials: UpstreamCredentials, origin: ClientOrigin, clientLeft: AbortSignal): Promise<UpstreamLoginResult> {
    const { timeouts, upstream } = this.config;
    const common = {
      target: this.targets[protocol],
      connectTimeoutMs: timeouts.upstream_connect_seconds * 1000,
      responseTimeoutMs: timeouts.upstream_response_seconds * 1000,
      forward: upstream[protocol].forward_client_ip ? origin : null,
      credentials,
      clientLeft,
    };
    if (protocol === 'imap') {
      return loginImapUpstream({ ...common, onGreetingCapabilities: (caps) => (this.capabilities.imap = caps) });
    }
    return loginPop3Upstream({ ...common, onCapabilities: (caps) => (this.capabilities.pop3 = caps) });
  }

  logout(session: Extract<UpstreamLoginResult, { ok: true }>, protocol: UpstreamProtocol = 'imap'): void {
    const { socket } = session;
    // A private tag, as every command mailgate sends upstream; the answer is not needed.
    if (socket.writable) socket.end(protocol === 'imap' ? 'mgz LOGOUT\r\n' : 'QUIT\r\n');
    setTimeout(() => socket.destroy(), FIXED_LIMITS.upstream_logout_grace_ms).unref();
  }

  /**
   * Whether the upstream of `protocol` can be reached as a login would reach
   * it (TLS and certificate verification as configured), without logging in.
   * What it learns refreshes the known capabilities, if none were known.
   */
  async reachable(protocol: UpstreamProtocol, timeoutMs: number, signal?: AbortSignal): Promise<UpstreamReport> {
    const report = await checkUpstream(protocol, this.targets[protocol], timeoutMs, signal);
    if (protocol === 'pop3' || report.capabilities.length > 0) this.capabilities[protocol] ??= report.capabilities;
    return report;
  }

  /**
   * Logs in as the master user for `account` and out again: proves that the
   * master password works, without any user's password. Resolves with the
   * login's result (the session is already closed when it is a success).
   */
  async masterLogin(protocol: UpstreamProtocol, account: string, masterPassword: Buffer, timeoutMs: number, signal?: AbortSignal): Promise<UpstreamLoginResult> {
    const { login } = this.config.upstream;
    const credentials: UpstreamCredentials = { kind: 'master', user: account, style: login.master_style, masterUser: login.master_user, masterPassword, separator: login.separator };
    const common = {
      target: this.targets[protocol],
      connectTimeoutMs: timeoutMs,
      responseTimeoutMs: timeoutMs,
      // The gateway's own login: there is no client address to forward.
      forward: null,
      credentials,
      clientLeft: signal ?? new AbortController().signal,
    };
    const result = protocol === 'imap' ? await loginImapUpstream(common) : await loginPop3Upstream(common);
    if (result.ok) this.logout(result, protocol);
    return result;
  }

  /** Learns the capabilities of the upstreams in use, best effort, so the first greeting can list them. */
  async probe(protocols: ReadonlySet<UpstreamProtocol>, log: Logger): Promise<void> {
    const timeout = Math.min(3000, this.config.timeouts.upstream_connect_seconds * 1000);
    const learn = async (protocol: UpstreamProtocol, probe: (target: UpstreamTarget, timeoutMs: number) => Promise<string[] | null>) => {
      if (!protocols.has(protocol)) return;
      try {
        const caps = await probe(this.targets[protocol], timeout);
        this.capabilities[protocol] ??= caps;
      } catch (err) {
        const target = this.targets[protocol];
        // Said so that the first start explains itself: which keys point at the mail server, and what else to look at.
        log.warn(
          { err: errorMessage(err), host: target.host, port: target.port, tls: target.tls },
          `${protocol === 'imap' ? 'IMAP' : 'POP3'} upstream not reachable at start-up; logins fail until it is: point upstream.${protocol}.host and upstream.${protocol}.port at the mail server (and upstream.${protocol}.tls, .ca at its TLS), or start it`,
        );
      }
    };
    await Promise.all([learn('imap', probeImapCapabilities), learn('pop3', probePop3Capabilities)]);
  }
}
