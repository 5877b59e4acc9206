/**
 * The running gateway, and the composition root: every service is built
 * here, in order, from the configuration (nothing is declared elsewhere and
 * patched afterwards); then the listeners are bound and each accepted socket
 * becomes an ImapSession or Pop3Session. It also owns start-up checks and
 * the graceful shutdown.
 */
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { AbuseGuard, abuseRules } from '../auth/abuse.js';
import { clientKey } from '../auth/client-key.js';
import { LoginCache } from '../auth/login-cache.js';
import { LoginService } from '../auth/login-service.js';
import { AuthPolicy } from '../auth/policy.js';
import { RefusalTiming } from '../auth/refusal-timing.js';
import { FIXED_LIMITS } from '../config/limits.js';
import type { Config, ListenConfig } from '../config/schema.js';
import { ConfigError, configPath } from '../config/load.js';
import { reconcile } from '../config/reload.js';
import { ErrorCodes, errorMessage, MailgateError } from '../errors.js';
import type { Logger } from '../log/logger.js';
import { RepeatedLines } from '../log/repeated-lines.js';
import { ImapSession } from '../session/imap-session.js';
import { Pop3Session } from '../session/pop3-session.js';
import { isTrusted, readProxyHeader, trustedProxies, type ProxiedOrigin } from '../session/proxy-header.js';
import { SessionRegistry, type TrackedSession } from '../session/registry.js';
import { RevocationWatcher } from '../session/revocation-watcher.js';
import type { Session, SessionContext } from '../session/session.js';
import { logCertificates, type CertificateSet } from '../session/certificates.js';
import { loadServerCertificates, ServerTls } from '../session/tls.js';
import type { PasswordHasher } from '../store/hasher.js';
import { createHasher, openStore, readStoreKey } from '../store/open.js';
import type { Store } from '../store/store.js';
import type { Clock } from '../store/types.js';
import { upstreamTarget } from '../upstream/connect.js';
import { Upstreams, type UpstreamProtocol } from '../upstream/upstreams.js';
import { mailServers, WebServer, type PageTls } from '../web/server.js';
import { controlSocketPath } from './control-protocol.js';
import { ControlServer } from './control-server.js';
import { fileLimit, RAISE_FILE_LIMIT_ADVICE } from './file-limits.js';
import { HealthMonitor, type HealthTargets } from './health.js';
import { Housekeeping } from './housekeeping.js';
import { Metrics } from './metrics.js';

export interface GatewayOptions {
  config: Config;
  log: Logger;
  env?: NodeJS.ProcessEnv;
  /** Tests: cheaper argon2 than the configuration's, and a clock they control. */
  argon2?: { memoryKib: number; iterations: number; parallelism: number };
  now?: Clock;
  /** Tests: the readiness checks' pace, faster than health_check_interval_seconds. */
  healthIntervalMs?: number;
}

export interface BoundListener {
  config: ListenConfig;
  host: string;
  port: number;
}

/** Everything the running gateway is made of (the tests look at some of it). */
export interface GatewayServices extends SessionContext {
  store: Store;
  hasher: PasswordHasher;
  policy: AuthPolicy;
  guard: AbuseGuard;
  metrics: Metrics;
  /** The readiness checks behind /readyz (run while the metrics listener is on). */
  health: HealthMonitor;
  upstreams: Upstreams;
  repeatedLines: RepeatedLines;
  cache: LoginCache;
  refusalTiming: RefusalTiming;
  /** The clock of the store, the caches and the page (tests pass one they move). */
  now: Clock;
}

/** What lives as long as the process: a reload keeps these, and builds the rest anew around them. */
type Lasting = Pick<GatewayServices, 'log' | 'store' | 'hasher' | 'registry' | 'metrics' | 'health' | 'repeatedLines' | 'guard' | 'serverTls' | 'now'>;

/**
 * What the configuration points at outside itself (the master password
 * file, the certificates, the upstreams' CA files), read before anything
 * changes: a start that fails here creates no store, a reload that fails
 * here changes nothing.
 */
interface Loaded {
  masterPassword: Buffer | null;
  certificates: CertificateSet;
  upstreams: Upstreams;
}

/** What a reload did, as its log lines say it. */
export interface ReloadResult {
  /** Keys whose change is in force now. */
  applied: string[];
  /** Keys whose change waits for a restart (their running values stay). */
  needRestart: string[];
  /** Certificate files now served with another certificate than before. */
  certificatesChanged: string[];
}

export class Gateway {
  readonly listeners: BoundListener[] = [];
  private readonly servers: net.Server[] = [];
  private stopping: Promise<void> | null = null;
  /** Reloads run one after the other (two quick SIGHUPs must not interleave). */
  private reloading: Promise<unknown> = Promise.resolve();
  readonly revocations: RevocationWatcher;
  readonly housekeeping: Housekeeping;
  metricsAddress: { host: string; port: number } | null = null;
  /** The self-service page, when `web.listen` is set. */
  web: WebServer | null = null;
  /** The control socket (`mailgate who`, `mailgate kick`). */
  control: ControlServer | null = null;
  private trustedProxies: net.BlockList;

  private constructor(
    private current: GatewayServices,
    private readonly env: NodeJS.ProcessEnv,
  ) {
    this.trustedProxies = trustedProxies(current.config.proxy.trusted);
    this.housekeeping = new Housekeeping(current.store, current.config, current.log);
    this.revocations = new RevocationWatcher(
      current.store,
      current.registry,
      current.log,
      current.config.timeouts.revocation_check_seconds * 1000,
      current.config.policy,
    );
  }

  /**
   * The services in force: new sessions are handed these. A reload replaces
   * them; a session keeps the ones it started with.
   */
  get services(): GatewayServices {
    return this.current;
  }

  /** The store (the tests use it to make changes "in the gateway's own process"). */
  get store(): Store {
    return this.current.store;
  }

  /**
   * Everything that can fail without the store (the master password file,
   * the certificates, the upstreams' CA files) is checked before the store is
   * opened, so a misconfigured first start creates no store at all; a start
   * that fails later removes the store files it created.
   */
  static async start(options: GatewayOptions): Promise<Gateway> {
    const { config, log } = options;
    const env = options.env ?? process.env;
    const loaded = await load(config, log, env);
    logCertificates(loaded.certificates, log);
    const hasher = createHasher(config, options.argon2);
    const opened = await openStore(config, { log, role: 'gateway', hasher, ...(options.now ? { now: options.now } : {}), ...(options.argon2 ? { argon2: options.argon2 } : {}) });
    let gateway: Gateway | null = null;
    try {
      const registry = new SessionRegistry();
      const serverTls = new ServerTls(loaded.certificates);
      const health = new HealthMonitor({
        store: opened.store,
        protocols: [...new Set(config.listen.map((l) => l.protocol))],
        log,
        ...(options.healthIntervalMs ? { intervalMs: options.healthIntervalMs } : {}),
      });
      const lasting: Lasting = {
        log,
        store: opened.store,
        hasher,
        registry,
        serverTls,
        health,
        metrics: new Metrics({ sessions: () => registry.counts(), argon2: () => hasher.stats, certificates: () => servedCertificates(serverTls), health }),
        repeatedLines: new RepeatedLines(log, FIXED_LIMITS.repeated_failure_log_seconds * 1000, FIXED_LIMITS.repeated_failure_log_burst),
        guard: new AbuseGuard(opened.store, abuseRules(config.limits), log, options.now),
        now: options.now ?? Date.now,
      };
      if (!loaded.masterPassword) warnNoMasterPassword(log);
      health.configure(healthTargets(config, loaded));
      gateway = new Gateway(compose(config, lasting, loaded, null), env);
      await gateway.open();
      return gateway;
    } catch (err) {
      // Half started (a port taken, say): take down what did start, so the
      // process can exit instead of serving from a gateway that failed.
      if (gateway) await gateway.stop(0);
      else await opened.store.close();
      const removed = opened.removeCreated();
      if (removed.length > 0) log.info({ removed }, 'removed the new store this failed start had created');
      throw err;
    }
  }

  /**
   * Applies a newly read configuration (SIGHUP). Everything it points at is
   * read and checked first: a bad certificate, an unreadable master password
   * or CA file refuses the whole reload (it throws, and nothing changed).
   * Then the services that depend on the configuration are built anew and
   * handed to new sessions; open sessions keep the ones they started with,
   * and a TLS session keeps its certificate. Keys that need a restart keep
   * their running values (see config/reload.ts).
   */
  reload(next: Config): Promise<ReloadResult> {
    const run = this.reloading.then(() => this.applyReload(next));
    this.reloading = run.catch(() => undefined);
    return run;
  }

  private async applyReload(next: Config): Promise<ReloadResult> {
    if (this.stopping) throw new Error('the gateway is stopping');
    const before = this.current;
    const { config, applied, needRestart } = reconcile(before.config, next);
    const loaded = await load(config, before.log, this.env);
    // From here on nothing fails: the new services are built and swapped in.
    const certificatesChanged = changedCertificates(before.serverTls.set, loaded.certificates);
    await learnCapabilities(before, config, loaded.upstreams);
    const log = before.log;
    // The reload's own lines are written at the old level or the new one, whichever shows more: they say what happened to it.
    log.level = log.levels.values[config.log.level]! < log.levels.values[log.level]! ? config.log.level : log.level;
    before.serverTls.replace(loaded.certificates);
    before.guard.useRules(abuseRules(config.limits));
    this.current = compose(config, before, loaded, before);
    before.health.configure(healthTargets(config, loaded));
    this.trustedProxies = trustedProxies(config.proxy.trusted);
    this.housekeeping.config = config;
    this.revocations.reconfigure(config.timeouts.revocation_check_seconds * 1000, config.policy);
    this.web?.reload({ config, logins: this.current.logins, mailServers: mailServers(config, this.listeners) }, pageTls(before.serverTls));
    logCertificates(loaded.certificates, log);
    if (!loaded.masterPassword) warnNoMasterPassword(log);
    log.info({ applied, certificatesChanged, sessions: this.current.registry.size }, 'configuration reloaded');
    if (needRestart.length > 0) log.warn({ keys: needRestart }, 'configuration changes that need a restart: the running values stay until then');
    log.level = config.log.level;
    return { applied, needRestart, certificatesChanged };
  }

  /** Learns the upstreams, binds every listener, starts the background work. */
  private async open(): Promise<void> {
    const { config, log, upstreams, metrics } = this.current;
    // First: a gateway already running on this store answers there, and this start stops before binding anything.
    this.control = await ControlServer.start(controlSocketPath(config), this.current.registry, log);
    warnIfFewFileDescriptors(config, log);
    await upstreams.probe(new Set<UpstreamProtocol>(config.listen.map((l) => l.protocol)), log);
    for (const [index, listener] of config.listen.entries()) await this.listen(listener, index);
    this.revocations.start();
    this.housekeeping.start();
    if (config.web.listen) {
      this.web = await WebServer.start(
        { config, log, store: this.current.store, logins: this.current.logins, mailServers: mailServers(config, this.listeners), now: this.current.now },
        // The page's cookies are signed with a key derived from the store key, so every node sharing the store accepts them.
        { storeKey: readStoreKey(config), tls: pageTls(this.current.serverTls) },
      );
    }
    if (config.metrics.listen) {
      const address = config.metrics.listen;
      this.metricsAddress = await metrics.listen(address, log).catch((err: unknown) => {
        throw listenError(err, 'metrics.listen', address);
      });
      this.current.health.start();
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
        server.on('error', (err) => this.current.log.error({ err, listener: `${listener.host}:${listener.port}` }, 'listener error'));
        const address = server.address() as net.AddressInfo;
        this.servers.push(server);
        this.listeners.push({ config: listener, host: address.address, port: address.port });
        this.current.log.info({ protocol: listener.protocol, host: address.address, port: address.port, tls: listener.tls }, 'listening');
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
      this.current.log.warn({ peer, listener: `${listener.host}:${listener.port}` }, 'refused a connection to a PROXY listener from an untrusted peer');
      socket.destroy();
      return;
    }
    socket.on('error', () => socket.destroy());
    readProxyHeader(socket, this.current.config.timeouts.tls_handshake_seconds * 1000).then(
      (origin) => this.startSession(socket, listener, origin),
      (err: Error) => {
        this.current.log.warn({ peer, err: err.message }, 'bad PROXY header');
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
    const { registry, config, metrics } = this.current;
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
        ? new ImapSession(socket, listener, this.current, origin)
        : new Pop3Session(socket, listener, this.current, origin);
    session.start();
  }

  /**
   * Stops accepting, lets open sessions finish for up to `graceMs`, then ends
   * the rest and closes the store (so every write is committed).
   */
  stop(graceMs = this.current.config.timeouts.shutdown_grace_seconds * 1000): Promise<void> {
    this.stopping ??= this.shutdown(graceMs);
    return this.stopping;
  }

  private async shutdown(graceMs: number): Promise<void> {
    const { registry, log } = this.current;
    // Load balancers see it first, and send no new clients while the rest shuts down.
    this.current.metrics.markStopping();
    this.revocations.stop();
    this.housekeeping.stop();
    const health = this.current.health.stop();
    // close() stops listening at once, but its callback only fires when every
    // connection has ended: waiting for it would hold the grace period (and
    // the shutdown) hostage to any client that stays connected.
    for (const server of this.servers) server.close();
    // The page's requests are short: closing waits for those in flight, then no more are taken.
    const web = this.web?.close();
    log.info({ sessions: registry.size, graceMs }, 'stopped accepting connections');
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([registry.whenEmpty(), new Promise<void>((resolve) => (timer = setTimeout(resolve, graceMs)))]);
    clearTimeout(timer);
    if (registry.size > 0) {
      log.info({ sessions: registry.size }, 'closing the remaining sessions');
      for (const session of registry.all()) session.terminate('shutdown');
      await Promise.race([registry.whenEmpty(), new Promise<void>((resolve) => setTimeout(resolve, 3000).unref())]);
    }
    await web;
    await health;
    this.current.repeatedLines.flush();
    await this.current.metrics.close();
    // Open until the sessions are gone: `mailgate who` shows who is left during the grace period.
    await this.control?.close();
    // Closing the store runs its last checkpoint: every write is on disk.
    await this.current.store.close();
    log.info('stopped');
  }
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
  const limit = fileLimit(config);
  if (!limit || limit.ok) return;
  log.warn(
    { openFileLimit: limit.soft, needed: limit.needed, maxSessions: limit.maxSessions },
    `the open-file limit is too low for limits.max_connections (two sockets per session); ${RAISE_FILE_LIMIT_ADVICE}`,
  );
}

/** The master password: from upstream.login.master_password_file, else MAILGATE_MASTER_PASSWORD; null without either. */
export function readMasterPassword(config: Config, env: NodeJS.ProcessEnv): Buffer | null {
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

/** The served certificates, for the page's HTTPS server: the default pair, and the same SNI choice as the mail listeners. */
function pageTls(tls: ServerTls): PageTls {
  const { cert, privateKey } = tls.defaultCertificate;
  return { cert, key: privateKey, minVersion: tls.minVersion === 'TLSv1.3' ? 'TLSv1.3' : 'TLSv1.2', SNICallback: tls.sniCallback };
}

/** The certificates served now, for the expiry metric. */
function servedCertificates(tls: ServerTls): Array<{ file: string; notAfter: number }> {
  return tls.set.certificates.map((c) => ({ file: c.certFile, notAfter: Date.parse(c.leaf.validTo) }));
}

/** Certificate files whose certificate is new (another one, or a file not served before). */
function changedCertificates(before: CertificateSet, after: CertificateSet): string[] {
  const known = new Set(before.certificates.map((c) => `${c.certFile}\0${c.leaf.fingerprint256}`));
  return after.certificates.filter((c) => !known.has(`${c.certFile}\0${c.leaf.fingerprint256}`)).map((c) => c.certFile);
}

function warnNoMasterPassword(log: Logger): void {
  log.warn(
    'no master password configured: app-password logins will fail; put the password of the master user (upstream.login.master_user) in a file named by upstream.login.master_password_file (mode 0600), or in MAILGATE_MASTER_PASSWORD',
  );
}

/** What the readiness checks log in with, from a configuration and what it points at. */
function healthTargets(config: Config, loaded: Loaded): HealthTargets {
  return { upstreams: loaded.upstreams, masterUser: config.upstream.login.master_user, masterPassword: loaded.masterPassword, probeAccount: config.upstream.login.probe_account };
}

/** Reads and checks what the configuration points at; throws a one-line error naming the key. */
async function load(config: Config, log: Logger, env: NodeJS.ProcessEnv): Promise<Loaded> {
  return {
    masterPassword: readMasterPassword(config, env),
    certificates: await loadServerCertificates(config, log),
    upstreams: new Upstreams({ imap: upstreamTarget(config.upstream.imap, 'imap'), pop3: upstreamTarget(config.upstream.pop3, 'pop3') }, config),
  };
}

/**
 * A reload's new upstreams start with what the old ones knew when their
 * settings did not change; a changed upstream is asked afresh (best effort,
 * a few seconds at most), so the next greeting lists its capabilities.
 */
async function learnCapabilities(before: GatewayServices, config: Config, upstreams: Upstreams): Promise<void> {
  const changed = new Set<UpstreamProtocol>();
  for (const protocol of ['imap', 'pop3'] as const) {
    if (JSON.stringify(before.config.upstream[protocol]) === JSON.stringify(config.upstream[protocol])) upstreams.capabilities[protocol] = before.upstreams.capabilities[protocol];
    else if (config.listen.some((l) => l.protocol === protocol)) changed.add(protocol);
  }
  if (changed.size > 0) await upstreams.probe(changed, before.log);
}

/**
 * Builds the services that depend on the configuration, each from the ones
 * before it, around the lasting ones. On a reload (`previous`), the login
 * cache and the refusal timings are kept when nothing they depend on
 * changed: a refusal remembered under another policy must not be repeated.
 */
function compose(config: Config, lasting: Lasting, loaded: Loaded, previous: GatewayServices | null): GatewayServices {
  const { store, hasher, metrics, health, registry, guard, log, repeatedLines, now } = lasting;
  const cacheInputs = (c: Config) => JSON.stringify([c.auth, c.policy, c.upstream.login, c.web.self_enroll]);
  const cache =
    previous && cacheInputs(previous.config) === cacheInputs(config)
      ? previous.cache
      : new LoginCache(
          {
            ttlMs: config.auth.login_cache_ttl_seconds * 1000,
            maxEntries: config.auth.login_cache_max_entries,
            negativeTtlMs: config.auth.failed_login_cache_ttl_seconds * 1000,
            negativeMaxEntries: config.auth.failed_login_cache_max_entries,
          },
          now,
        );
  const policy = new AuthPolicy(store, hasher, config, loaded.masterPassword, { cache, onCacheLookup: (result) => metrics.loginCache.inc({ result }) });
  const timing = refusalTimingInputs(config);
  const refusalTiming =
    previous && JSON.stringify(refusalTimingInputs(previous.config)) === JSON.stringify(timing) ? previous.refusalTiming : new RefusalTiming(timing.upstreamEstimateMs, timing.channels);
  const logins = new LoginService({
    store,
    policy,
    guard,
    refusalTiming,
    upstream: loaded.upstreams,
    events: { login: (channel, result) => metrics.logins.inc({ protocol: channel, result }) },
    log,
    repeatedLines,
  });
  return {
    log,
    store,
    hasher,
    registry,
    metrics,
    health,
    repeatedLines,
    guard,
    serverTls: lasting.serverTls,
    now,
    config,
    policy,
    cache,
    refusalTiming,
    logins,
    upstreams: loaded.upstreams,
    admission: (session) => admit(config, registry, metrics, session),
  };
}

function refusalTimingInputs(config: Config): { upstreamEstimateMs: number; channels: string[] } {
  const passesThrough = config.policy.unknown_users === 'passthrough' || config.policy.main_password_without_2fa === 'passthrough';
  return {
    upstreamEstimateMs: config.policy.expected_upstream_refusal_ms,
    // Only where passwords go to the upstream are there two kinds of refusal to even out: the mail
    // protocols when the policy passes some through, and the page's sign-in always (it checks every
    // password upstream, whatever the policy), so its first refusals are evened out like IMAP's.
    channels: [...(passesThrough ? new Set<string>(config.listen.map((l) => l.protocol)) : []), ...(config.web.listen ? ['web'] : [])],
  };
}

/** Connection limits, checked once a session can be answered. */
function admit(config: Config, registry: SessionRegistry, metrics: Metrics, session: TrackedSession): 'refused-global-limit' | 'refused-per-ip-limit' | null {
  const refusal =
    registry.size > config.limits.max_connections
      ? 'refused-global-limit'
      : registry.unauthenticatedFor(session.clientKey) > config.limits.max_connections_per_ip
        ? 'refused-per-ip-limit'
        : null;
  if (refusal) metrics.refusedConnections.inc({ reason: refusal });
  return refusal;
}
