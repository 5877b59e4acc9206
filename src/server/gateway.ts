/**
 * The running gateway: opens the store, loads TLS, binds every configured
 * listener and gives each accepted socket to an ImapSession or Pop3Session.
 * It also owns start-up checks and the graceful shutdown.
 */
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { AbuseGuard, abuseRules } from '../auth/abuse.js';
import { clientKey } from '../auth/client-key.js';
import { LoginCache } from '../auth/login-cache.js';
import { AuthPolicy } from '../auth/policy.js';
import { RefusalTiming } from '../auth/refusal-timing.js';
import type { Config, ListenConfig } from '../config/schema.js';
import { ConfigError, configPath } from '../config/load.js';
import { ErrorCodes, errorMessage, MailgateError } from '../errors.js';
import type { Logger } from '../log/logger.js';
import { RepeatedLines } from '../log/repeated-lines.js';
import { FIXED_LIMITS } from '../config/limits.js';
import { ImapSession } from '../session/imap-session.js';
import { Pop3Session } from '../session/pop3-session.js';
import { isTrusted, readProxyHeader, trustedProxies, type ProxiedOrigin } from '../session/proxy-header.js';
import { SessionRegistry } from '../session/registry.js';
import { RevocationWatcher } from '../session/revocation-watcher.js';
import type { GatewayServices, Session } from '../session/session.js';
import { loadServerTls, type ServerTls } from '../session/tls.js';
import { Housekeeping } from './housekeeping.js';
import { Metrics } from './metrics.js';
import { storeOptionsFromConfig, type Store, type StoreOptions } from '../store/store.js';
import { StoreHandle } from '../store/store-handle.js';
import { Checkpointer } from '../store/checkpointer.js';
import { storeFootprint } from '../store/footprint.js';
import { upstreamTarget } from '../upstream/connect.js';
import { probeImapCapabilities, probePop3Capabilities } from '../upstream/probe.js';

/** How often the background checkpointer copies the WAL into the database. */
const CHECKPOINT_INTERVAL_MS = 1000;

export interface GatewayOptions {
  config: Config;
  log: Logger;
  env?: NodeJS.ProcessEnv;
  /** Overrides for the store options (tests inject a clock or cheap argon2 settings). */
  storeOptions?: Partial<StoreOptions>;
}

export interface BoundListener {
  config: ListenConfig;
  host: string;
  port: number;
}

export class Gateway {
  readonly listeners: BoundListener[] = [];
  private readonly servers: net.Server[] = [];
  private stopping: Promise<void> | null = null;
  readonly revocations: RevocationWatcher;
  readonly housekeeping: Housekeeping;
  metricsAddress: { host: string; port: number } | null = null;
  private readonly trustedProxies: net.BlockList;

  private constructor(
    readonly services: GatewayServices,
    private readonly checkpointer: Checkpointer,
  ) {
    this.trustedProxies = trustedProxies(services.config.proxy.trusted);
    this.housekeeping = new Housekeeping(services.store, services.config, services.log);
    this.revocations = new RevocationWatcher(
      services.store,
      services.registry,
      services.log,
      services.config.timeouts.revocation_check_seconds * 1000,
      services.config.policy,
    );
    // A block started here does not move SQLite's data_version for this
    // connection: tell the watcher, so a blocked name's sessions close at once.
    services.guard.onBlock = () => this.revocations.changed();
  }

  /** The store as it is now (it may be reopened after the database recovers). */
  get store(): Store {
    return this.services.store.get();
  }

  /**
   * Everything that can fail without the store (the master password file,
   * the certificate, the upstreams' CA files) is checked before the store is
   * opened, so a misconfigured first start creates no store at all; a start
   * that fails later removes the store files it created.
   */
  static async start(options: GatewayOptions): Promise<Gateway> {
    const { config, log } = options;
    const masterPassword = readMasterPassword(config, options.env ?? process.env);
    const serverTls = await loadServerTls(config, log);
    const upstreams = { imap: upstreamTarget(config.upstream.imap, 'imap'), pop3: upstreamTarget(config.upstream.pop3, 'pop3') };
    // better-sqlite3 is synchronous: a write waiting for a lock blocks the event
    // loop, so the gateway waits far less than the CLI would.
    const storeOptions = storeOptionsFromConfig(config, {
      busyTimeoutMs: config.store.gateway_busy_timeout_ms,
      autoCheckpoint: false,
      ...options.storeOptions,
    });
    const footprint = storeFootprint(storeOptions);
    try {
      return await Gateway.startWithStore(options, { masterPassword, serverTls, upstreams, storeOptions });
    } catch (err) {
      const removed = footprint.removeCreated();
      if (removed.length > 0) log.info({ removed }, 'removed the new store this failed start had created');
      throw err;
    }
  }

  private static async startWithStore(options: GatewayOptions, checked: StartChecks): Promise<Gateway> {
    const { config, log } = options;
    const { masterPassword, storeOptions } = checked;
    const store = new StoreHandle(storeOptions, log);
    let gateway: Gateway | null = null;
    const checkpointer = new Checkpointer(storeOptions.path, CHECKPOINT_INTERVAL_MS, log, () => store.enableAutoCheckpoint());
    try {
      if (!masterPassword) {
        log.warn('no master password configured (upstream.login.master_password_file or MAILGATE_MASTER_PASSWORD): app-password logins will fail');
      }
      const registry = new SessionRegistry();
      const metrics = new Metrics({
        sessions: () => registry.counts(),
        argon2: () => {
          try {
            return store.get().hasher.stats;
          } catch {
            return { verifications: 0, running: 0, queued: 0 };
          }
        },
      });
      const services: GatewayServices = {
        config,
        log,
        store,
        policy: new AuthPolicy(store, config, masterPassword, {
          cache: new LoginCache(
            {
              ttlMs: config.auth.login_cache_ttl_seconds * 1000,
              maxEntries: config.auth.login_cache_max_entries,
              negativeTtlMs: config.auth.failed_login_cache_ttl_seconds * 1000,
              negativeMaxEntries: config.auth.failed_login_cache_max_entries,
            },
            options.storeOptions?.now,
          ),
          onCacheLookup: (result) => metrics.loginCache.inc({ result }),
        }),
        guard: new AbuseGuard(() => store.get(), abuseRules(config.limits), log, options.storeOptions?.now),
        serverTls: checked.serverTls,
        registry,
        metrics,
        refusalTiming: new RefusalTiming(
          // Only a configuration that lets passwords through to the upstream has two kinds of refusal to even out.
          config.policy.unknown_users === 'passthrough' || config.policy.main_password_without_2fa === 'passthrough'
            ? config.policy.expected_upstream_refusal_ms
            : 0,
          [...new Set(config.listen.map((l) => l.protocol))],
        ),
        upstreams: checked.upstreams,
        upstreamCapabilities: { imap: null, pop3: null },
        repeatedLines: new RepeatedLines(log, FIXED_LIMITS.repeated_failure_log_seconds * 1000, FIXED_LIMITS.repeated_failure_log_burst),
      };
      services.admission = (session) => admit(services, session);
      warnIfFewFileDescriptors(config, log);
      gateway = new Gateway(services, checkpointer);
      await gateway.probeUpstreams();
      for (const [index, listener] of config.listen.entries()) await gateway.listen(listener, index);
      gateway.revocations.start();
      gateway.housekeeping.start();
      checkpointer.start();
      if (config.metrics.listen) {
        const address = config.metrics.listen;
        gateway.metricsAddress = await metrics.listen(address, log).catch((err: unknown) => {
          throw listenError(err, 'metrics.listen', address);
        });
      }
      return gateway;
    } catch (err) {
      // Half started (a port taken, say): take down what did start, so the
      // process can exit instead of serving from a gateway that failed.
      if (gateway) await gateway.stop(0);
      else store.close();
      throw err;
    }
  }

  private listen(listener: ListenConfig, index: number): Promise<void> {
    const server = net.createServer((socket) => this.accept(socket, listener));
    return new Promise((resolve, reject) => {
      const failed = (err: Error) => reject(listenError(err, `listen[${index}]`, `${listener.host}:${listener.port}`));
      server.once('error', failed);
      server.listen({ host: listener.host, port: listener.port }, () => {
        server.removeListener('error', failed);
        // Errors on a listening socket (EMFILE under a flood, say) must not stop the gateway.
        server.on('error', (err) => this.services.log.error({ err, listener: `${listener.host}:${listener.port}` }, 'listener error'));
        const address = server.address() as net.AddressInfo;
        this.servers.push(server);
        this.listeners.push({ config: listener, host: address.address, port: address.port });
        this.services.log.info({ protocol: listener.protocol, host: address.address, port: address.port, tls: listener.tls }, 'listening');
        resolve();
      });
    });
  }

  private accept(socket: net.Socket, listener: ListenConfig): void {
    if (this.stopping) {
      socket.destroy();
      return;
    }
    if (this.overwhelmed(socket, listener)) {
      socket.destroy();
      return;
    }
    // Keep-alive finds dead phones on long IDLEs; no Nagle for snappy command turns.
    socket.setKeepAlive(true, 60_000);
    socket.setNoDelay(true);
    if (!listener.proxy_protocol) {
      this.startSession(socket, listener, null);
      return;
    }
    const peer = socket.remoteAddress ?? '';
    if (!isTrusted(this.trustedProxies, peer)) {
      this.services.log.warn({ peer, listener: `${listener.host}:${listener.port}` }, 'refused a connection to a PROXY listener from an untrusted peer');
      socket.destroy();
      return;
    }
    socket.on('error', () => socket.destroy());
    readProxyHeader(socket, this.services.config.timeouts.tls_handshake_seconds * 1000).then(
      (origin) => this.startSession(socket, listener, origin),
      (err: Error) => {
        this.services.log.warn({ peer, err: err.message }, 'bad PROXY header');
        socket.destroy();
      },
    );
  }

  /**
   * The connection limits answer politely (a one-line refusal, after the TLS
   * handshake on implicit-TLS listeners). Connections far past them, such as
   * a flood that never finishes its handshakes, are dropped on accept
   * instead, so they cannot hold descriptors for the handshake deadline.
   */
  private overwhelmed(socket: net.Socket, listener: ListenConfig): boolean {
    const { registry, config, metrics } = this.services;
    const hardGlobal = config.limits.max_connections + Math.max(10, Math.ceil(config.limits.max_connections / 10));
    // Behind a PROXY balancer the peer is the balancer: the per-IP count waits for the header.
    const hardPerIp = listener.proxy_protocol ? Infinity : 2 * config.limits.max_connections_per_ip;
    const reason =
      registry.size >= hardGlobal
        ? 'dropped-global-limit'
        : registry.unauthenticatedFor(clientKey(socket.remoteAddress ?? '')) >= hardPerIp
          ? 'dropped-per-ip-limit'
          : null;
    if (reason) metrics.refusedConnections.inc({ reason });
    return reason !== null;
  }

  private startSession(socket: net.Socket, listener: ListenConfig, origin: ProxiedOrigin | null): void {
    if (socket.destroyed) return;
    const session: Session =
      listener.protocol === 'imap'
        ? new ImapSession(socket, listener, this.services, origin)
        : new Pop3Session(socket, listener, this.services, origin);
    session.start();
  }

  private async probeUpstreams(): Promise<void> {
    const { upstreams, upstreamCapabilities, config, log } = this.services;
    const timeout = Math.min(3000, config.timeouts.upstream_connect_seconds * 1000);
    const protocols = new Set(config.listen.map((l) => l.protocol));
    await Promise.all([
      protocols.has('imap')
        ? probeImapCapabilities(upstreams.imap, timeout)
            .then((caps) => (upstreamCapabilities.imap ??= caps))
            .catch((err: Error) => log.warn({ err: err.message }, 'IMAP upstream not reachable at start-up'))
        : null,
      protocols.has('pop3')
        ? probePop3Capabilities(upstreams.pop3, timeout)
            .then((caps) => (upstreamCapabilities.pop3 ??= caps))
            .catch((err: Error) => log.warn({ err: err.message }, 'POP3 upstream not reachable at start-up'))
        : null,
    ]);
  }

  /**
   * Stops accepting, lets open sessions finish for up to `graceMs`, then ends
   * the rest and closes the store (so every write is committed).
   */
  stop(graceMs = this.services.config.timeouts.shutdown_grace_seconds * 1000): Promise<void> {
    this.stopping ??= this.shutdown(graceMs);
    return this.stopping;
  }

  private async shutdown(graceMs: number): Promise<void> {
    const { registry, log } = this.services;
    this.revocations.stop();
    this.housekeeping.stop();
    // close() stops listening at once, but its callback only fires when every
    // connection has ended: waiting for it would hold the grace period (and
    // the shutdown) hostage to any client that stays connected.
    for (const server of this.servers) server.close();
    log.info({ sessions: registry.size, graceMs }, 'stopped accepting connections');
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([registry.whenEmpty(), new Promise<void>((resolve) => (timer = setTimeout(resolve, graceMs)))]);
    clearTimeout(timer);
    if (registry.size > 0) {
      log.info({ sessions: registry.size }, 'closing the remaining sessions');
      for (const session of registry.all()) session.terminate('shutdown');
      await Promise.race([registry.whenEmpty(), new Promise<void>((resolve) => setTimeout(resolve, 3000).unref())]);
    }
    this.services.repeatedLines.flush();
    await this.services.metrics.close();
    await this.checkpointer.stop();
    this.services.store.close();
    log.info('stopped');
  }
}

/** What Gateway.start checks before the store is opened. */
interface StartChecks {
  masterPassword: Buffer | null;
  serverTls: ServerTls;
  upstreams: GatewayServices['upstreams'];
  storeOptions: StoreOptions;
}

/**
 * A socket that cannot listen, in one line: which configuration key, which
 * address, and what the operator can do about it.
 */
function listenError(err: unknown, key: string, address: string): Error {
  const code = (err as NodeJS.ErrnoException).code;
  const port = Number(address.slice(address.lastIndexOf(':') + 1));
  const why =
    code === 'EADDRINUSE'
      ? 'the port is already in use (another mailgate, or another server); stop that, or choose another port'
      : code === 'EACCES'
        ? port < 1024
          ? 'permission denied: ports below 1024 need root or CAP_NET_BIND_SERVICE (systemd: AmbientCapabilities=CAP_NET_BIND_SERVICE); or choose a port from 1024 up'
          : 'permission denied by the system (a security policy?); choose another port'
        : code === 'EADDRNOTAVAIL'
          ? "the address is not one of this host's; use one it has, or 0.0.0.0 / ::"
          : `cannot listen: ${errorMessage(err)}`;
  return new MailgateError(ErrorCodes.LISTEN, `${key} ${address}: ${why}`, { cause: err });
}

/**
 * Each session holds two sockets (client and upstream). A process limit below
 * what max_connections needs shows up as EMFILE at the worst moment, so say
 * so at start-up (Linux only; elsewhere the check is skipped).
 */
function warnIfFewFileDescriptors(config: Config, log: Logger): void {
  let limits: string;
  try {
    limits = readFileSync('/proc/self/limits', 'utf8');
  } catch {
    return;
  }
  const soft = /^Max open files\s+(\d+|unlimited)/m.exec(limits)?.[1];
  if (!soft || soft === 'unlimited') return;
  const needed = 2 * config.limits.max_connections + 100;
  if (Number(soft) < needed) {
    log.warn(
      { openFileLimit: Number(soft), needed, maxSessions: Math.floor((Number(soft) - 100) / 2) },
      'the open-file limit is too low for limits.max_connections (two sockets per session); raise it (systemd LimitNOFILE, ulimit -n)',
    );
  }
}

function readMasterPassword(config: Config, env: NodeJS.ProcessEnv): Buffer | null {
  const file = config.upstream.login.master_password_file;
  if (file) {
    let text: string;
    try {
      text = readFileSync(configPath(file), 'utf8');
    } catch (err) {
      // Said in the operator's terms: which key points at which file, and why it is unreadable.
      throw new ConfigError(`upstream.login.master_password_file: cannot read ${configPath(file)}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
    // A trailing newline is how editors save files, never part of the password.
    return Buffer.from(text.replace(/\r?\n$/, ''), 'utf8');
  }
  const fromEnv = env.MAILGATE_MASTER_PASSWORD;
  return fromEnv ? Buffer.from(fromEnv, 'utf8') : null;
}

/** Connection limits, checked once a session can be answered. */
function admit(services: GatewayServices, session: Session): string | null {
  const { registry, config, metrics } = services;
  const refusal =
    registry.size > config.limits.max_connections
      ? 'refused-global-limit'
      : registry.unauthenticatedFor(session.clientKey) > config.limits.max_connections_per_ip
        ? 'refused-per-ip-limit'
        : null;
  if (refusal) metrics.refusedConnections.inc({ reason: refusal });
  return refusal;
}
