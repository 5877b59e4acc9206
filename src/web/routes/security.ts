/**
 * The security page (signed in): 2-step verification, app passwords, and
 * recent security activity; and the guard every sensitive action passes: a
 * password confirmed within `web.reauth_minutes`, or "Confirm it's you".
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { RECOVERY_CODE_COUNT } from '../../store/recovery-code-format.js';
import { clientOf, page, type WebContext } from '../context.js';
import { activityRow, appPasswordRow } from '../views.js';
import { fresh, requireSignedIn, SIGN_IN_FAILED } from './sign-in.js';

/** How many audit events the page shows. */
const ACTIVITY_ROWS = 20;

export async function securityPage(request: FastifyRequest, reply: FastifyReply, ctx: WebContext, user: { username: string }): Promise<FastifyReply> {
  const now = ctx.now();
  const [account, passwords, activity] = await Promise.all([
    ctx.store.accounts.get(user.username),
    ctx.store.appPasswords.list(user.username),
    ctx.store.audit.activity(user.username, ACTIVITY_ROWS),
  ]);
  const twoStep = account.totpState === 'enabled';
  const names = new Map(passwords.map((p) => [p.id, p.name]));
  const notice = takeNotice(request);
  return page(request, reply, 'security', {
    title: 'Security',
    twoStep,
    recoveryCodesLeft: twoStep ? await ctx.store.recoveryCodes.remaining(user.username) : 0,
    recoveryCodeCount: RECOVERY_CODE_COUNT,
    appPasswords: passwords.filter((p) => p.revokedAt === null).map((p) => appPasswordRow(p, now)),
    activity: activity.map((row) => activityRow(row, names)),
    ...(notice ? { notice } : {}),
  });
}

/** A line for the next page, after a redirect. */
export function notify(request: FastifyRequest, notice: string): void {
  request.session.notice = notice;
}

function takeNotice(request: FastifyRequest): string | undefined {
  const notice = request.session.notice;
  if (notice !== undefined) delete request.session.notice;
  return notice;
}

/**
 * Signed in, with a password confirmed recently enough for a sensitive
 * action; otherwise "Confirm it's you", which comes back to `back` (the page
 * of the action: a POST is never replayed).
 */
export function requireRecentPassword(ctx: WebContext, request: FastifyRequest, reply: FastifyReply, back: string): { accountId: number; username: string } | null {
  const user = requireSignedIn(request, reply);
  if (!user) return null;
  const passwordAt = request.session.passwordAt ?? 0;
  if (ctx.now() - passwordAt <= ctx.config.web.reauth_minutes * 60_000) return user;
  void page(request, reply, 'reauth', { title: "Confirm it's you", next: back });
  return null;
}

const reauthBody = {
  type: 'object',
  required: ['password', 'next', '_csrf'],
  additionalProperties: false,
  properties: { password: { type: 'string', maxLength: 1024 }, next: { type: 'string', maxLength: 256 }, _csrf: { type: 'string', maxLength: 256 } },
} as const;

export function reauthRoutes(app: FastifyInstance, ctx: WebContext): void {
  app.post<{ Body: { password: string; next: string } }>('/reauth', { schema: { body: reauthBody }, preValidation: app.csrfProtection }, async (request, reply) => {
    const user = requireSignedIn(request, reply);
    if (!user) return reply;
    const next = localPath(request.body.next);
    const outcome = await ctx.logins.signIn({ username: user.username, password: Buffer.from(request.body.password, 'utf8'), method: 'page-reauth', ...clientOf(request) });
    // The password is what is asked again; a code is not (it was given at sign-in).
    if (outcome.kind !== 'signed-in' && outcome.kind !== 'code-needed') {
      return page(request, reply, 'reauth', { title: "Confirm it's you", next, error: SIGN_IN_FAILED });
    }
    // Ended while the password was checked (signed out elsewhere, the account's sessions ended): it stays ended.
    if (!(await fresh(ctx, request, { ifLive: true, keepCreatedAt: true }))) return reply.redirect('/', 303);
    request.session.accountId = user.accountId;
    request.session.username = user.username;
    request.session.passwordAt = ctx.now();
    return reply.redirect(next, 303);
  });
}

/** Only a path on this site: never a redirect to somewhere else. */
function localPath(next: string): string {
  return /^\/(?![/\\])[\w\-/.?=&%]*$/.test(next) ? next : '/';
}
