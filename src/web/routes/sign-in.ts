/**
 * Signing in to the page and out of it: the account password (checked by
 * the mail server through the login service, with the same penalties as a
 * mail login), then, with 2-step verification on, a code or a recovery code.
 * Every failure gets the same words; the service makes them take as long.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { clientOf, codeBody, page, signedIn, type WebContext } from '../context.js';
import { webSessionLimits } from '../../config/schema.js';
import { sessionIdHash } from '../session-store.js';
import { securityPage } from './security.js';

/** The one answer to every failed sign-in, whatever the cause. */
export const SIGN_IN_FAILED = 'Sign-in failed. Check your username and password (your account password, not an app password), or try again in a few minutes.';
export const CODE_FAILED = 'That code did not work. Check it and try again, or try again in a few minutes.';

const signInBody = {
  type: 'object',
  required: ['username', 'password', '_csrf'],
  additionalProperties: false,
  properties: { username: { type: 'string', maxLength: 255 }, password: { type: 'string', maxLength: 1024 }, _csrf: { type: 'string', maxLength: 256 } },
} as const;

export function signInRoutes(app: FastifyInstance, ctx: WebContext): void {
  app.get('/', async (request, reply) => {
    const user = signedIn(request);
    if (user) return securityPage(request, reply, ctx, user);
    if (request.session.pending) return page(request, reply, 'code', { title: '2-Step Verification', pendingUser: request.session.pending.username });
    return page(request, reply, 'sign-in', { title: 'Sign in' });
  });

  app.get('/recovery', async (request, reply) => {
    if (!request.session.pending) return reply.redirect('/', 303);
    return page(request, reply, 'code', { title: '2-Step Verification', recovery: true });
  });

  app.post<{ Body: { username: string; password: string } }>('/sign-in', { schema: { body: signInBody }, preValidation: app.csrfProtection }, async (request, reply) => {
    const { username, password } = request.body;
    const outcome = await ctx.logins.signIn({ username, password: Buffer.from(password, 'utf8'), method: 'page-password', ...clientOf(request) });
    if (outcome.kind === 'code-needed') {
      await fresh(ctx, request);
      request.session.pending = { username: outcome.account.username, passwordAt: ctx.now(), accountId: outcome.account.id };
      return reply.redirect('/', 303);
    }
    if (outcome.kind === 'signed-in') {
      await startSignedIn(ctx, request, outcome.account.id, outcome.account.username, ctx.now());
      return reply.redirect('/', 303);
    }
    return page(request, reply, 'sign-in', { title: 'Sign in', error: SIGN_IN_FAILED, username });
  });

  for (const [path, kind] of [['/verify', 'totp'], ['/recovery', 'recovery-code']] as const) {
    app.post<{ Body: { code: string } }>(path, { schema: { body: codeBody }, preValidation: app.csrfProtection }, async (request, reply) => {
      const pending = request.session.pending;
      if (!pending) return reply.redirect('/', 303);
      const outcome = await ctx.logins.verifyCode({ kind, code: request.body.code.replace(/\s+/g, ''), username: pending.username, ...clientOf(request) });
      if (outcome.kind === 'accepted') {
        const account = await ctx.store.accounts.get(pending.username);
        // Ended while the code was checked (signed out elsewhere, the account's sessions ended): it stays ended, and "/" says so.
        await startSignedIn(ctx, request, account.id, account.username, pending.passwordAt, { ifLive: true });
        return reply.redirect('/', 303);
      }
      return page(request, reply, 'code', { title: '2-Step Verification', recovery: kind === 'recovery-code', pendingUser: pending.username, error: CODE_FAILED });
    });
  }

  app.post('/sign-out', { preValidation: app.csrfProtection }, async (request, reply) => {
    const user = signedIn(request);
    if (user) await ctx.store.audit.record('web-sign-out', { username: user.username, ip: clientOf(request).client.address, protocol: 'web' });
    await request.session.destroy();
    return reply.redirect('/', 303);
  });
}

export interface FreshOptions {
  /**
   * The session carries on (a code after the password, "Confirm it's you",
   * 2-step verification turned on or off): if it was ended while this
   * request was in flight (signed out in another tab, the account's sessions
   * ended by the owner or the administrator), it stays ended, and fresh()
   * resolves false without a new id.
   */
  ifLive?: boolean;
  /** The absolute timeout still counts from the sign-in: the new id keeps the old creation time. */
  keepCreatedAt?: boolean;
}

/** A new session id for a new privilege level (fixation): nothing of the old session is kept (but its creation time, when asked). */
export async function fresh(ctx: Pick<WebContext, 'now' | 'store' | 'config'>, request: FastifyRequest, options: FreshOptions = {}): Promise<boolean> {
  if (options.ifLive && !(await live(ctx, request))) return false;
  const keep = options.keepCreatedAt && request.session.createdAt !== undefined ? ['createdAt'] : [];
  // regenerate() stores the new id at once: the kept creation time goes in with it (the store never moves it later).
  await request.session.regenerate(keep);
  if (keep.length === 0) request.session.createdAt = ctx.now();
  return true;
}

/** Whether the request's session is still live in the store (not ended since the request began). */
async function live(ctx: Pick<WebContext, 'store' | 'config'>, request: FastifyRequest): Promise<boolean> {
  return (await ctx.store.webSessions.get(sessionIdHash(request.session.sessionId), webSessionLimits(ctx.config))) !== null;
}

async function startSignedIn(ctx: WebContext, request: FastifyRequest, accountId: number, username: string, passwordAt: number, options: FreshOptions = {}): Promise<boolean> {
  if (!(await fresh(ctx, request, options))) return false;
  request.session.accountId = accountId;
  request.session.username = username;
  request.session.passwordAt = passwordAt;
  return true;
}

/** Sends a signed-out visitor back to the start. */
export function requireSignedIn(request: FastifyRequest, reply: FastifyReply): { accountId: number; username: string } | null {
  const user = signedIn(request);
  if (!user) void reply.redirect('/', 303);
  return user;
}
