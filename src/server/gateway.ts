/**
 * The running gateway: opens the store, loads TLS, binds every configured
 * listener and gives each accepted socket to an ImapSession or Pop3Session.
 * It also owns start-up checks and the graceful shutdown.
 */
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { AuthPolicy } from '../auth/policy.js';
import type { Config, ListenConfig } from '../config/schema.js';
import { configPath } from '../config/load.js';
import type { Logger } from '../log/logger.js';
import { ImapSession } from '../session/imap-session.js';
import { Pop3Session } from '../session/pop3-session.js';
import { SessionRegistry } from '../session/registry.js';
import type { GatewayServices, Session } from '../session/session.js';
import { loadServerTls } from '../session/tls.js';
import { Store, storeOptionsFromConfig } from '../store/store.js';
import { upstreamTarget } from '../upstream/connect.js';
import { probeImapCapabilities, probePop3Capabilities } from '../upstream/probe.js';

export interface GatewayOptions {
  config: Config;
  log: Logger;
  env?: NodeJS.ProcessEnv;
  /** Overrides for the store (tests inject a clock). */
  store?: Store;
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

  private constructor(
    readonly services: GatewayServices,
    readonly store: Store,
    private readonly ownsStore: boolean,
  ) {}

  static async start(options: GatewayOptions): Promise<Gateway> {
    const { config, log } = options;
    const store = options.store ?? Store.open(storeOptionsFromConfig(config));
    try {
      const masterPassword = readMasterPassword(config, options.env ?? process.env);
      if (!masterPassword) {
        log.warn('no master password configured (upstream.login.master_password_file or MAILGATE_MASTER_PASSWORD): app-password logins will fail');
      }
      const services: GatewayServices = {
        config,
        log,
        policy: new AuthPolicy(store, config, masterPassword),
        serverTls: await loadServerTls(config, log),
        registry: new SessionRegistry(),
        upstreams: { imap: upstreamTarget(config.upstream.imap), pop3: upstreamTarget(config.upstream.pop3) },
        upstreamCapabilities: { imap: null, pop3: null },
      };
      services.admission = (session) => admit(services, session);
      const gateway = new Gateway(services, store, !options.store);
      await gateway.probeUpstreams();
      for (const listener of config.listen) await gateway.listen(listener);
      return gateway;
    } catch (err) {
      if (!options.store) store.close();
      throw err;
    }
  }

  private listen(listener: ListenConfig): Promise<void> {
    const server = net.createServer((socket) => this.accept(socket, listener));
    // Errors on a listening socket (EMFILE under a flood, say) must not stop the gateway.
    server.on('error', (err) => this.services.log.error({ err, listener: `${listener.host}:${listener.port}` }, 'listener error'));
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host: listener.host, port: listener.port }, () => {
        server.removeListener('error', reject);
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
    // Keep-alive finds dead phones on long IDLEs; no Nagle for snappy command turns.
    socket.setKeepAlive(true, 60_000);
    socket.setNoDelay(true);
    const session: Session =
      listener.protocol === 'imap' ? new ImapSession(socket, listener, this.services) : new Pop3Session(socket, listener, this.services);
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
    await Promise.all(this.servers.map((server) => new Promise<void>((resolve) => server.close(() => resolve()))));
    log.info({ sessions: registry.size, graceMs }, 'stopped accepting connections');
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([registry.whenEmpty(), new Promise<void>((resolve) => (timer = setTimeout(resolve, graceMs)))]);
    clearTimeout(timer);
    if (registry.size > 0) {
      log.info({ sessions: registry.size }, 'closing the remaining sessions');
      for (const session of registry.all()) session.terminate('shutdown');
      await Promise.race([registry.whenEmpty(), new Promise<void>((resolve) => setTimeout(resolve, 3000).unref())]);
    }
    if (this.ownsStore) this.store.close();
    log.info('stopped');
  }
}

function readMasterPassword(config: Config, env: NodeJS.ProcessEnv): Buffer | null {
  const file = config.upstream.login.master_password_file;
  if (file) {
    // A trailing newline is how editors save files, never part of the password.
    return Buffer.from(readFileSync(configPath(file), 'utf8').replace(/\r?\n$/, ''), 'utf8');
  }
  const fromEnv = env.MAILGATE_MASTER_PASSWORD;
  return fromEnv ? Buffer.from(fromEnv, 'utf8') : null;
}

/** Connection limits, checked once a session can be answered. */
function admit(services: GatewayServices, session: Session): string | null {
  const { registry, config } = services;
  if (registry.size > config.limits.max_connections) return 'refused-global-limit';
  if (registry.unauthenticatedFor(session.clientKey) > config.limits.max_connections_per_ip) return 'refused-per-ip-limit';
  return null;
}
