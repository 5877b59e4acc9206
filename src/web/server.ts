/**
 * The self-service page's listener: HTTPS with the gateway's certificate, or
 * plain HTTP behind a TLS-terminating reverse proxy (`web.tls = false`). The
 * composition root starts and stops it next to the mail listeners.
 */
import type tls from 'node:tls';
import type { FastifyInstance } from 'fastify';
import { ErrorCodes, errorMessage, MailgateError } from '../errors.js';
import { webPageUrl, type Config, type ListenConfig } from '../config/schema.js';
import { buildWebApp } from './app.js';
import type { MailServer, WebContext } from './context.js';

/** The certificates of [tls], as the page's HTTPS server takes them: the default pair, and SNI for the others. */
export interface PageTls {
  cert: Buffer;
  key: Buffer;
  minVersion: 'TLSv1.2' | 'TLSv1.3';
  SNICallback: NonNullable<tls.TlsOptions['SNICallback']>;
}

export class WebServer {
  private constructor(
    private readonly app: FastifyInstance,
    /** Where it listens (the port the system chose when the configuration said 0). */
    readonly address: { host: string; port: number },
    /** The routes read it at each request: a reload swaps what is in it. */
    private readonly ctx: WebContext,
  ) {}

  /**
   * A reload: the routes see the new configuration and login service from
   * the next request, and new handshakes the new default certificate (the
   * SNI callback reads the gateway's current set by itself). Connections
   * already open keep theirs.
   */
  reload(changes: Pick<WebContext, 'config' | 'logins' | 'mailServers'>, tls: PageTls): void {
    Object.assign(this.ctx, changes);
    if (!this.ctx.config.web.tls) return;
    // With `https` set, fastify's server is a Node https.Server, which is a tls.Server.
    (this.app.server as unknown as tls.Server).setSecureContext({ cert: tls.cert, key: tls.key, minVersion: tls.minVersion });
  }

  static async start(ctx: WebContext, options: { storeKey: Buffer; tls: PageTls }): Promise<WebServer> {
    const { web } = ctx.config;
    const publicUrl = web.public_url ? new URL(web.public_url) : null;
    const app = await buildWebApp(ctx, {
      storeKey: options.storeKey,
      secure: web.tls || publicUrl?.protocol === 'https:',
      origin: publicUrl?.origin ?? null,
      trustedProxies: web.trusted_proxies,
      https: web.tls ? options.tls : null,
    });
    const at = web.listen.lastIndexOf(':');
    const host = web.listen.slice(0, at).replace(/^\[|\]$/g, '');
    const port = Number(web.listen.slice(at + 1));
    try {
      await app.listen({ host, port });
    } catch (err) {
      await app.close();
      const code = (err as NodeJS.ErrnoException).code;
      const why = code === 'EADDRINUSE' ? 'the port is already in use; stop that, or choose another port' : code === 'EACCES' ? 'permission denied: ports below 1024 need root or CAP_NET_BIND_SERVICE' : errorMessage(err);
      throw new MailgateError(ErrorCodes.LISTEN, `web.listen ${web.listen}: ${why}`, { cause: err });
    }
    const bound = app.server.address() as { address: string; port: number };
    // The address users are sent to, with the port the system chose when the configuration said 0.
    const url = webPageUrl({ web: { ...web, listen: `${web.listen.slice(0, at)}:${bound.port}` } });
    ctx.log.info({ host: bound.address, port: bound.port, tls: web.tls, url }, 'self-service page listening');
    return new WebServer(app, { host: bound.address, port: bound.port }, ctx);
  }

  close(): Promise<void> {
    return this.app.close();
  }
}

/**
 * How mail programs reach the gateway, for the settings shown with a new app
 * password: per protocol, the implicit-TLS listener if there is one, else the
 * STARTTLS one, with the port it is bound to; the host users know (the
 * page's), not a wildcard or loopback address, when the page has one.
 */
export function mailServers(config: Config, listeners: ReadonlyArray<{ config: ListenConfig; port: number }>): MailServer[] {
  const pageHost = (() => {
    const url = webPageUrl(config);
    return url ? new URL(url).hostname.replace(/^\[|\]$/g, '') : null;
  })();
  const servers: MailServer[] = [];
  for (const protocol of ['imap', 'pop3'] as const) {
    const ofProtocol = listeners.filter((l) => l.config.protocol === protocol);
    const best = ofProtocol.find((l) => l.config.tls === 'implicit') ?? ofProtocol[0];
    if (!best) continue;
    const wildcard = ['0.0.0.0', '::', '[::]'].includes(best.config.host);
    servers.push({
      protocol: protocol === 'imap' ? 'IMAP' : 'POP3',
      host: pageHost && (wildcard || pageHost !== best.config.host) ? pageHost : best.config.host,
      port: best.port,
      security: best.config.tls === 'implicit' ? 'SSL/TLS' : 'STARTTLS',
    });
  }
  return servers;
}
