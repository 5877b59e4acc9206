/**
 * The self-service page as a fastify application: plain server-rendered
 * forms, no JavaScript needed. What protects it, in order of a request:
 *  - a body of at most 16 KiB, url-encoded forms only, every field declared
 *    (anything else is a clear error page);
 *  - on every POST, the browser's own word that it comes from this page
 *    (Origin, Sec-Fetch-Site), then the synchronizer CSRF token of the
 *    server-side session;
 *  - server-side sessions in the store (only a hash of the id), in a
 *    __Host- cookie (Secure, HttpOnly, SameSite=Strict), with idle and
 *    absolute timeouts and a new id at every change of privilege;
 *  - strict headers: a CSP allowing only this site's script and style and no
 *    framing, HSTS over HTTPS, no referrer, no sniffing;
 *  - errors answered with a page that says little, never a stack trace.
 */
import { readFileSync } from 'node:fs';
import { hkdfSync } from 'node:crypto';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import fastifyCookie from '@fastify/cookie';
import fastifyCsrf from '@fastify/csrf-protection';
import fastifyFormbody from '@fastify/formbody';
import fastifyHelmet from '@fastify/helmet';
import fastifySession from '@fastify/session';
import { webSessionLimits } from '../config/schema.js';
import type { Logger } from '../log/logger.js';
import { signedIn, type WebContext } from './context.js';
import { PageSessionStore } from './session-store.js';
import type { PageTls } from './server.js';
import { appPasswordRoutes } from './routes/app-passwords.js';
import { reauthRoutes } from './routes/security.js';
import { signInRoutes } from './routes/sign-in.js';
import { twoStepRoutes } from './routes/two-step.js';
import { render, WEB_ROOT } from './views.js';

/** Forms are a few fields; anything bigger is not one of ours. */
const BODY_LIMIT = 16 * 1024;

export interface WebAppOptions {
  /** The store key: the cookie-signing secret is derived from it, so every node of a cluster accepts every node's cookies. */
  storeKey: Buffer;
  /** Served over HTTPS by mailgate itself, or behind a TLS-terminating proxy (public URL https)? */
  secure: boolean;
  /** The page's origin as browsers see it (public_url), for the Origin check; null: from the Host header. */
  origin: string | null;
  /** Peers whose X-Forwarded-For / X-Forwarded-Proto are believed. */
  trustedProxies: string[];
  /** The certificate and key when mailgate serves HTTPS itself (`web.tls`). */
  https?: PageTls | null;
}

export async function buildWebApp(ctx: WebContext, options: WebAppOptions): Promise<FastifyInstance> {
  const app = Fastify({
    // fastify's own request log would carry URLs and headers: mailgate logs what matters itself.
    logger: false,
    bodyLimit: BODY_LIMIT,
    trustProxy: options.trustedProxies.length > 0 ? options.trustedProxies : false,
    ...(options.https ? { https: { cert: options.https.cert, key: options.https.key, minVersion: options.https.minVersion, SNICallback: options.https.SNICallback } } : {}),
    // Route ids never come from the client's input: requestIdHeader off.
    requestIdHeader: false,
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, allErrors: false } },
  });
  await app.register(fastifyHelmet, {
    contentSecurityPolicy: {
      useDefaults: false,
      directives: {
        defaultSrc: ["'none'"],
        scriptSrc: ["'self'"],
        styleSrc: ["'self'"],
        imgSrc: ["'self'"],
        connectSrc: ["'self'"],
        formAction: ["'self'"],
        frameAncestors: ["'none'"],
        baseUri: ["'none'"],
      },
    },
    strictTransportSecurity: options.secure ? { maxAge: 31_536_000, includeSubDomains: false } : false,
    referrerPolicy: { policy: 'no-referrer' },
    // Never in a frame (older browsers that ignore frame-ancestors read this).
    frameguard: { action: 'deny' },
    crossOriginEmbedderPolicy: false,
  });
  // Forms only: a JSON or text body is none of the page's (415), so no second way in skips the form rules.
  app.removeAllContentTypeParsers();
  await app.register(fastifyFormbody);
  await app.register(fastifyCookie);
  await app.register(fastifySession, {
    secret: cookieSecret(options.storeKey),
    // __Host-: only this host, path /, Secure: a subdomain or plain HTTP cannot set or read it.
    cookieName: options.secure ? '__Host-mailgate' : 'mailgate',
    cookie: { path: '/', secure: options.secure, httpOnly: true, sameSite: 'strict' },
    saveUninitialized: false,
    rolling: true,
    store: new PageSessionStore(ctx.store, webSessionLimits(ctx.config), ctx.now),
  });
  await app.register(fastifyCsrf, { sessionPlugin: '@fastify/session', getToken: (request) => (request.body as { _csrf?: string } | undefined)?._csrf });
  app.addHook('onRequest', sameOrigin(options.origin));
  app.addHook('preHandler', async (request) => {
    // Where the session was last used, for the user's and the administrator's lists.
    if (request.session.accountId !== undefined || request.session.pending) {
      request.session.ip = request.ip;
      request.session.userAgent = (request.headers['user-agent'] ?? '').slice(0, 256);
    }
  });
  assets(app);
  signInRoutes(app, ctx);
  reauthRoutes(app, ctx);
  twoStepRoutes(app, ctx);
  appPasswordRoutes(app, ctx);
  app.setNotFoundHandler((request, reply) => errorPage(request, reply, 404, 'Not found', 'There is no such page.'));
  app.setErrorHandler((err: Error & { statusCode?: number; code?: string; validation?: unknown }, request, reply) => handleError(ctx.log, err, request, reply));
  return app;
}

/** HMAC key for the session cookie, from the store key (HKDF, its own label). */
function cookieSecret(storeKey: Buffer): string {
  return Buffer.from(hkdfSync('sha256', storeKey, Buffer.alloc(0), 'mailgate page session cookie', 32)).toString('base64');
}

/**
 * A POST from another site is refused before anything else: browsers say
 * where a request comes from (Sec-Fetch-Site in all current ones, and
 * Origin). Under this page's `Referrer-Policy: no-referrer` a browser sends
 * `Origin: null` with its own form posts, which tells nothing either way; a
 * request that says nothing (an old browser, curl) still needs the CSRF token.
 */
function sameOrigin(origin: string | null) {
  return async (request: FastifyRequest, reply: FastifyReply) => {
    if (request.method === 'GET' || request.method === 'HEAD') return;
    const site = request.headers['sec-fetch-site'];
    const sentOrigin = request.headers.origin;
    const expected = origin ?? `${request.protocol}://${request.headers.host ?? ''}`;
    if ((site !== undefined && site !== 'same-origin' && site !== 'none') || (sentOrigin !== undefined && sentOrigin !== 'null' && sentOrigin !== expected)) {
      return errorPage(request, reply, 403, 'Refused', 'This request did not come from this page. Go back to the page and try again.');
    }
  };
}

/** The stylesheet and the small script (copy buttons), from web/assets/, read once. */
function assets(app: FastifyInstance): void {
  const files = {
    '/assets/style.css': { type: 'text/css; charset=utf-8', body: readFileSync(`${WEB_ROOT}assets/style.css`) },
    '/assets/page.js': { type: 'text/javascript; charset=utf-8', body: readFileSync(`${WEB_ROOT}assets/page.js`) },
  };
  for (const [path, file] of Object.entries(files)) {
    app.get(path, async (_request, reply) => reply.type(file.type).header('cache-control', 'public, max-age=3600').send(file.body));
  }
  // Browsers ask for it on every site; the page has none, and says so without an error.
  app.get('/favicon.ico', async (_request, reply) => reply.code(204).header('cache-control', 'public, max-age=86400').send());
}

/**
 * An error answer keeps no session change: what the failed request changed
 * is not kept, and when the store is what failed, saving the session on the
 * way out would fail again, leaving fastify to answer with its own JSON,
 * which names the error. Only a signed-in user gets the sign-out form (with
 * the token of the session as it is stored).
 */
function errorPage(request: FastifyRequest, reply: FastifyReply, status: number, heading: string, message: string): FastifyReply {
  const user = request.session ? signedIn(request)?.username : undefined;
  const csrf = user ? reply.generateCsrf() : '';
  // @fastify/session saves request.session in its onSend hook; without one there is nothing to save.
  (request as unknown as { session: null }).session = null;
  const html = render('error', { title: heading, heading, message, csrf, ...(user ? { user } : {}) });
  return reply.code(status).header('cache-control', 'no-store').type('text/html; charset=utf-8').send(html);
}

/** Every error gets a page that says what the user can do, never how the server failed. */
function handleError(log: Logger, err: Error & { statusCode?: number; code?: string; validation?: unknown }, request: FastifyRequest, reply: FastifyReply): FastifyReply {
  if (err.code === 'FST_CSRF_INVALID_TOKEN' || err.code === 'FST_CSRF_MISSING_SECRET') {
    return errorPage(request, reply, 403, 'Refused', 'This form has expired or did not come from this page. Go back, reload the page and try again.');
  }
  if (err.validation || err.code === 'FST_ERR_CTP_BODY_TOO_LARGE' || err.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE' || (err.statusCode !== undefined && err.statusCode < 500)) {
    return errorPage(request, reply, err.statusCode && err.statusCode < 500 ? err.statusCode : 400, 'That did not work', 'The form was not filled in as expected (a field too long, missing or unknown). Go back and try again.');
  }
  log.error({ err, url: request.routeOptions.url }, 'error on the self-service page');
  return errorPage(request, reply, 500, 'Something went wrong', 'The service could not do that just now. Try again in a few minutes.');
}
