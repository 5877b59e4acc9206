/**
 * What the page's routes share: the services they call, and the small steps
 * every handler takes (who is signed in, rendering a page with its CSRF
 * token, the client as the login service wants it).
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import { canonicalAddress } from '../auth/client-key.js';
import type { LoginRequest, LoginService } from '../auth/login-service.js';
import type { Config } from '../config/schema.js';
import type { Logger } from '../log/logger.js';
import type { Store } from '../store/store.js';
import type { Clock } from '../store/types.js';
import { render, type PageContent } from './views.js';

export interface WebContext {
  config: Config;
  log: Logger;
  store: Store;
  logins: LoginService;
  /** The mail listeners, for the settings shown with a new app password. */
  mailServers: MailServer[];
  /** The clock of sessions and re-authentication (the store's; tests move it). */
  now: Clock;
}

/** How a mail program reaches the gateway: shown next to a new app password. */
export interface MailServer {
  protocol: 'IMAP' | 'POP3';
  host: string;
  port: number;
  security: 'SSL/TLS' | 'STARTTLS';
}

/** The signed-in user, or null. */
export function signedIn(request: FastifyRequest): { accountId: number; username: string } | null {
  const { accountId, username } = request.session;
  return accountId !== undefined && username !== undefined ? { accountId, username } : null;
}

/** Renders a page: every one gets the CSRF token for its forms and is never cached (secrets are shown on some). */
export function page(request: FastifyRequest, reply: FastifyReply, view: string, data: PageContent, status = 200): FastifyReply {
  const user = signedIn(request)?.username;
  const html = render(view, { ...data, csrf: reply.generateCsrf(), ...(user ? { user } : {}) });
  return reply.code(status).header('cache-control', 'no-store').type('text/html; charset=utf-8').send(html);
}

/** Where the client is, as the login service counts it (the proxy's X-Forwarded-For only from trusted proxies). */
export function clientOf(request: FastifyRequest): Pick<LoginRequest, 'client' | 'local' | 'clientId' | 'sessionId' | 'signal'> {
  const agent = request.headers['user-agent'];
  return {
    client: { address: canonicalAddress(request.ip), port: request.socket.remotePort ?? 0 },
    local: { address: request.socket.localAddress ?? '', port: request.socket.localPort ?? 0 },
    // The browser, for the log: clipped, it is whatever the client sent.
    clientId: agent ? { name: agent.slice(0, 64) } : {},
    // The request id, never the session id: logs must not hold anything that opens a session.
    sessionId: `web-${request.id}`,
    signal: new AbortController().signal,
  };
}

/** The body of a form with nothing but its CSRF token (a button): anything else is refused. */
export const csrfOnly = {
  type: 'object',
  required: ['_csrf'],
  additionalProperties: false,
  properties: { _csrf: { type: 'string', maxLength: 256 } },
} as const;

/** The body of a form that sends a code (TOTP or recovery) and its CSRF token. */
export const codeBody = {
  type: 'object',
  required: ['code', '_csrf'],
  additionalProperties: false,
  properties: { code: { type: 'string', maxLength: 64 }, _csrf: { type: 'string', maxLength: 256 } },
} as const;
