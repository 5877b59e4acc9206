/**
 * 2-step verification from the page: turning it on (QR code and key, a code
 * to confirm, then recovery codes shown once), turning it off (a current
 * code, through the login service's code check: guessing is counted like
 * passwords), and new recovery codes.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import QRCode from 'qrcode';
import { ErrorCodes, isMailgateError } from '../../errors.js';
import { clientOf, codeBody, csrfOnly, page, type WebContext } from '../context.js';
import { sessionIdHash } from '../session-store.js';
import { fresh, CODE_FAILED } from './sign-in.js';
import { notify, requireRecentPassword } from './security.js';

export function twoStepRoutes(app: FastifyInstance, ctx: WebContext): void {
  // Turning it on is sensitive too: with only a stolen cookie, someone could lock the owner out
  // of the page and out of their mail programs' account password. After "Confirm it's you" the
  // user lands on the security page and turns it on from there.
  app.post('/two-step/start', { schema: { body: csrfOnly }, preValidation: app.csrfProtection }, async (request, reply) => {
    const user = requireRecentPassword(ctx, request, reply, '/');
    if (!user) return reply;
    // Sent again from a page older than the change (a second tab, the back button): say how things are.
    if ((await ctx.store.totp.status(user.username)) === 'enabled') return already(request, reply, true);
    const enrolment = await ctx.store.totp.enroll(user.username);
    return setupPage(request, reply, enrolment.uri, enrolment.secret);
  });

  app.post<{ Body: { code: string } }>('/two-step/enable', { schema: { body: codeBody }, preValidation: app.csrfProtection }, async (request, reply) => {
    const user = requireRecentPassword(ctx, request, reply, '/');
    if (!user) return reply;
    const state = await ctx.store.totp.status(user.username);
    // Sent twice (a double click, a second tab), or after "Turn off" elsewhere ended the set-up: say how things are.
    if (state !== 'pending') return already(request, reply, state === 'enabled');
    try {
      const { recoveryCodes } = await ctx.store.totp.confirm(user.username, request.body.code.replace(/\s+/g, ''), { keepWebSession: sessionIdHash(request.session.sessionId) });
      // The account's other page sessions ended; this one carries on under a new id (unless it was ended meanwhile).
      if (!(await keepSignedIn(ctx, request, user))) return reply.redirect('/', 303);
      return page(request, reply, 'recovery-codes', {
        title: 'Your recovery codes',
        intro: '2-Step Verification is on. Mail programs now need app passwords: create one for each of them on the security page.',
        codes: recoveryCodes,
      });
    } catch (err) {
      // Turned on (or the set-up ended) by another request since the state was read.
      if (isMailgateError(err, ErrorCodes.TOTP_STATE)) return already(request, reply, (await ctx.store.totp.status(user.username)) === 'enabled');
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
    // Already off (another tab): no code to check, and no failure to count against the owner.
    if ((await ctx.store.totp.status(user.username)) !== 'enabled') return already(request, reply, false);
    const outcome = await ctx.logins.verifyCode({ kind: 'totp', code: request.body.code.replace(/\s+/g, ''), username: user.username, ...clientOf(request) });
    if (outcome.kind !== 'accepted') return page(request, reply, 'turn-off', { title: 'Turn off 2-Step Verification', error: CODE_FAILED });
    try {
      await ctx.store.totp.disable(user.username, { keepWebSession: sessionIdHash(request.session.sessionId) });
    } catch (err) {
      if (!isMailgateError(err, ErrorCodes.TOTP_STATE)) throw err;
      return already(request, reply, false);
    }
    if (!(await keepSignedIn(ctx, request, user))) return reply.redirect('/', 303);
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
    let codes: string[];
    try {
      codes = await ctx.store.recoveryCodes.regenerate(user.username);
    } catch (err) {
      // Turned off since the page was shown (another tab): there are no recovery codes to make.
      if (!isMailgateError(err, ErrorCodes.TOTP_STATE)) throw err;
      return already(request, reply, false);
    }
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

/** A form sent for a state that no longer holds (a second tab, a double click): back to the security page, which shows how things are. */
function already(request: FastifyRequest, reply: FastifyReply, on: boolean): FastifyReply {
  notify(request, on ? '2-Step Verification is already on.' : '2-Step Verification is off.');
  return reply.redirect('/', 303);
}

/**
 * After 2-step verification changed: the same user, a new session id, the
 * password still fresh, the absolute timeout still counted from the sign-in.
 * False when the session was ended meanwhile: it stays ended.
 */
async function keepSignedIn(ctx: WebContext, request: FastifyRequest, user: { accountId: number; username: string }): Promise<boolean> {
  const passwordAt = request.session.passwordAt;
  if (!(await fresh(ctx, request, { ifLive: true, keepCreatedAt: true }))) return false;
  request.session.accountId = user.accountId;
  request.session.username = user.username;
  if (passwordAt !== undefined) request.session.passwordAt = passwordAt;
  return true;
}
