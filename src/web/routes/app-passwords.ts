/**
 * App passwords from the page: create (shown once, never cached, with the
 * settings for a mail program), revoke one, or remove them all. Each needs a
 * recently confirmed password. Revoking closes the mail sessions that use
 * them: the store announces it, the revocation watcher acts at once.
 */
import type { FastifyInstance } from 'fastify';
import { ErrorCodes, isMailgateError } from '../../errors.js';
import { MAX_NAME_LENGTH } from '../../store/app-password-format.js';
import type { Scope } from '../../store/types.js';
import { csrfOnly, page, type WebContext } from '../context.js';
import { access, grouped } from '../views.js';
import { notify, requireRecentPassword } from './security.js';

const DAY_MS = 86_400_000;

/** The expiry choices of the form: the value posted, and what it means. */
const EXPIRIES = [
  { value: 'never', label: 'Never', ms: null },
  { value: '30d', label: '30 days', ms: 30 * DAY_MS },
  { value: '90d', label: '90 days', ms: 90 * DAY_MS },
  { value: '1y', label: '1 year', ms: 365 * DAY_MS },
] as const;

const createBody = {
  type: 'object',
  required: ['name', '_csrf'],
  additionalProperties: false,
  properties: {
    name: { type: 'string', maxLength: 256 },
    imap: { type: 'string', enum: ['on'] },
    pop3: { type: 'string', enum: ['on'] },
    expires: { type: 'string', enum: EXPIRIES.map((e) => e.value) },
    _csrf: { type: 'string', maxLength: 256 },
  },
} as const;

const idParams = { type: 'object', required: ['id'], properties: { id: { type: 'string', pattern: '^[0-9]{1,15}$' } } } as const;

interface CreateForm {
  name: string;
  imap?: 'on';
  pop3?: 'on';
  expires?: string;
}

/** The create form as shown again: what was typed, the boxes as ticked. */
interface FormValues {
  name?: string;
  expires?: string;
  imap: boolean;
  pop3: boolean;
}

export function appPasswordRoutes(app: FastifyInstance, ctx: WebContext): void {
  const form = (values: FormValues, error?: string) => ({
    title: 'Create a new app password',
    maxName: MAX_NAME_LENGTH,
    expiries: EXPIRIES,
    expires: values.expires ?? 'never',
    name: values.name ?? '',
    imap: values.imap,
    pop3: values.pop3,
    ...(error ? { error } : {}),
  });

  app.get('/app-passwords/new', async (request, reply) => {
    if (!requireRecentPassword(ctx, request, reply, '/app-passwords/new')) return reply;
    return page(request, reply, 'create', form({ imap: true, pop3: true }));
  });

  app.post<{ Body: CreateForm }>('/app-passwords', { schema: { body: createBody }, preValidation: app.csrfProtection }, async (request, reply) => {
    const user = requireRecentPassword(ctx, request, reply, '/app-passwords/new');
    if (!user) return reply;
    const body = request.body;
    const scopes: Scope[] = [...(body.imap ? ['imap' as const] : []), ...(body.pop3 ? ['pop3' as const] : [])];
    const values: FormValues = { name: body.name, expires: body.expires, imap: body.imap === 'on', pop3: body.pop3 === 'on' };
    if (scopes.length === 0) return page(request, reply, 'create', form(values, 'Choose IMAP, POP3 or both.'), 400);
    const expiry = EXPIRIES.find((e) => e.value === (body.expires ?? 'never'))!;
    try {
      const created = await ctx.store.appPasswords.create(user.username, {
        name: body.name,
        scopes,
        expiresAt: expiry.ms === null ? null : ctx.now() + expiry.ms,
      });
      const password = grouped(created.password);
      return page(request, reply, 'created', {
        title: 'Use this app password to sign in',
        name: created.info.name,
        password,
        // Read out letter by letter: a screen reader says "abcd" as a word otherwise.
        spelled: password.replace(/\s/g, '').split('').join(' '),
        servers: ctx.mailServers.filter((s) => created.info.scopes.includes(s.protocol.toLowerCase() as Scope)),
        user: user.username,
      });
    } catch (err) {
      const message = refusal(err);
      if (!message) throw err;
      return page(request, reply, 'create', form(values, message), 400);
    }
  });

  app.get<{ Params: { id: string } }>('/app-passwords/:id/revoke', { schema: { params: idParams } }, async (request, reply) => {
    const user = requireRecentPassword(ctx, request, reply, request.url);
    if (!user) return reply;
    const info = (await ctx.store.appPasswords.list(user.username)).find((p) => p.id === Number(request.params.id) && p.revokedAt === null);
    if (!info) return page(request, reply, 'error', { title: 'Not found', heading: 'No such app password', message: 'It may have been revoked already.' }, 404);
    return page(request, reply, 'revoke', { title: `Revoke "${info.name}"`, id: info.id, name: info.name });
  });

  app.post<{ Params: { id: string } }>('/app-passwords/:id/revoke', { schema: { params: idParams, body: csrfOnly }, preValidation: app.csrfProtection }, async (request, reply) => {
    const user = requireRecentPassword(ctx, request, reply, `/app-passwords/${request.params.id}/revoke`);
    if (!user) return reply;
    try {
      const info = await ctx.store.appPasswords.revoke(user.username, Number(request.params.id));
      notify(request, `"${info.name}" is revoked. Mail programs using it are signed out.`);
    } catch (err) {
      if (!isMailgateError(err, ErrorCodes.UNKNOWN_APP_PASSWORD)) throw err;
      notify(request, 'That app password was already revoked.');
    }
    return reply.redirect('/', 303);
  });

  app.get('/app-passwords/remove', async (request, reply) => {
    const user = requireRecentPassword(ctx, request, reply, '/app-passwords/remove');
    if (!user) return reply;
    const active = (await ctx.store.appPasswords.list(user.username)).filter((p) => p.revokedAt === null);
    return page(request, reply, 'remove-all', { title: 'Remove existing app passwords', appPasswords: active.map((p) => ({ name: p.name, access: access(p) })) });
  });

  app.post('/app-passwords/remove', { schema: { body: csrfOnly }, preValidation: app.csrfProtection }, async (request, reply) => {
    const user = requireRecentPassword(ctx, request, reply, '/app-passwords/remove');
    if (!user) return reply;
    const count = await ctx.store.appPasswords.revokeAll(user.username);
    notify(request, `${count} app password${count === 1 ? ' is' : 's are'} removed. Mail programs using them are signed out.`);
    return reply.redirect('/', 303);
  });
}

/** The user's words for a create the store refused (a duplicate name, the limit, a bad name). */
function refusal(err: unknown): string | null {
  if (isMailgateError(err, ErrorCodes.DUPLICATE_NAME)) return 'You already have an app password with that name: choose another name.';
  if (isMailgateError(err, ErrorCodes.TOO_MANY_APP_PASSWORDS)) return 'You have as many app passwords as allowed: revoke one you no longer use first.';
  if (isMailgateError(err, ErrorCodes.INVALID_NAME)) return `The name must be 1 to ${MAX_NAME_LENGTH} characters, without control characters.`;
  return null;
}
