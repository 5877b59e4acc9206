/**
 * 2-step verification from the page: turning it on (QR code and key, a code
 * to confirm, then recovery codes shown once), turning it off (a current
 * code, through the login service's code check: guessing is counted like
 * passwords), and new recovery codes.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import QRCode from 'qrcode';
import { ErrorCodes, isMailgateError } from '../../errors.js';
import { clientOf, page, type WebContext } from '../context.js';
import { sessionIdHash } from '../session-store.js';
import { fresh, CODE_FAILED, requireSignedIn } from './sign-in.js';
import { notify, requireRecentPassword } from './security.js';

const codeBody = {
  type: 'object',
  required: ['code', '_csrf'],
  additionalProperties: false,
  properties: { code: { type: 'string', maxLength: 64 }, _csrf: { type: 'string', maxLength: 256 } },
} as const;

const csrfOnly = {
  type: 'object',
  required: ['_csrf'],
  additionalProperties: false,
  properties: { _csrf: { type: 'string', maxLength: 256 } },
} as const;

export function twoStepRoutes(app: FastifyInstance, ctx: WebContext): void {
  app.post('/two-step/start', { schema: { body: csrfOnly }, preValidation: app.csrfProtection }, async (request, reply) => {
    const user = requireSignedIn(request, reply);
    if (!user) return reply;
    const enrolment = await ctx.store.totp.enroll(user.username);
    return setupPage(request, reply, enrolment.uri, enrolment.secret);
  });

  app.post<{ Body: { code: string } }>('/two-step/enable', { schema: { body: codeBody }, preValidation: app.csrfProtection }, async (request, reply) => {
    const user = requireSignedIn(request, reply);
    if (!user) return reply;
    try {
      const { recoveryCodes } = await ctx.store.totp.confirm(user.username, request.body.code.replace(/\s+/g, ''), { keepWebSession: sessionIdHash(request.session.sessionId) });
      // The account's other page sessions ended; this one carries on under a new id.
      await keepSignedIn(ctx, request, user);
      return page(request, reply, 'recovery-codes', {
        title: 'Your recovery codes',
        intro: '2-Step Verification is on. Mail programs now need app passwords: create one for each of them on the security page.',
        codes: recoveryCodes,
      });
    } catch (err) {
      if (!isMailgateError(err, ErrorCodes.TOTP_CODE)) throw err;
      const pending = await ctx.store.totp.pending(user.username);
      if (!pending) return reply.redirect('/', 303);
      return setupPage(request, reply, pending.uri, pending.secret, CODE_FAILED);
    }
  });

  app.get('/two-step/turn-off', async (request, reply) => {
    if (!requireRecentPassword(ctx, request, reply, '/two-step/turn-off')) return reply;
    return page(request, reply, 'turn-off', { title: 'Turn off 2-Step Verification' });
  });

  app.post<{ Body: { code: string } }>('/two-step/turn-off', { schema: { body: codeBody }, preValidation: app.csrfProtection }, async (request, reply) => {
    const user = requireRecentPassword(ctx, request, reply, '/two-step/turn-off');
    if (!user) return reply;
    const outcome = await ctx.logins.verifyCode({ kind: 'totp', code: request.body.code.replace(/\s+/g, ''), username: user.username, ...clientOf(request) });
    if (outcome.kind !== 'accepted') return page(request, reply, 'turn-off', { title: 'Turn off 2-Step Verification', error: CODE_FAILED });
    await ctx.store.totp.disable(user.username, { keepWebSession: sessionIdHash(request.session.sessionId) });
    await keepSignedIn(ctx, request, user);
    notify(request, '2-Step Verification is off.');
    return reply.redirect('/', 303);
  });

  app.get('/two-step/recovery-codes', async (request, reply) => {
    if (!requireRecentPassword(ctx, request, reply, '/two-step/recovery-codes')) return reply;
    return page(request, reply, 'new-recovery-codes', { title: 'New recovery codes' });
  });

  app.post('/two-step/recovery-codes', { schema: { body: csrfOnly }, preValidation: app.csrfProtection }, async (request, reply) => {
    const user = requireRecentPassword(ctx, request, reply, '/two-step/recovery-codes');
    if (!user) return reply;
    const codes = await ctx.store.recoveryCodes.regenerate(user.username);
    return page(request, reply, 'recovery-codes', { title: 'Your recovery codes', intro: 'Your old recovery codes no longer work.', codes });
  });
}

/** The QR code (an SVG drawn here, no image request) and the key as text, for apps without a camera. */
async function setupPage(request: FastifyRequest, reply: Parameters<typeof page>[1], uri: string, secret: string, error?: string) {
  const qrSvg = await QRCode.toString(uri, { type: 'svg', errorCorrectionLevel: 'M', margin: 2 });
  return page(request, reply, 'two-step-setup', {
    title: 'Turn on 2-Step Verification',
    qrSvg: qrSvg.replace('<svg ', '<svg role="img" aria-label="QR code for your authenticator app" '),
    secretGrouped: secret.replace(/(.{4})(?=.)/g, '$1 '),
    ...(error ? { error } : {}),
  });
}

/** After 2-step verification changed: the same user, a new session id, the password still fresh. */
async function keepSignedIn(ctx: WebContext, request: FastifyRequest, user: { accountId: number; username: string }): Promise<void> {
  const passwordAt = request.session.passwordAt;
  await fresh(ctx, request);
  request.session.accountId = user.accountId;
  request.session.username = user.username;
  if (passwordAt !== undefined) request.session.passwordAt = passwordAt;
}
