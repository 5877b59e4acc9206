/**
 * Rendering the page's HTML: Eta templates (web/views/, auto-escaped: `<%=`
 * escapes, only `<%~` of markup mailgate made itself does not), and the
 * plain shapes the templates get (times, access, activity in words).
 */
import { fileURLToPath } from 'node:url';
import { Eta } from 'eta';
import type { AppPasswordInfo, AuditRow } from '../store/types.js';
import { appPasswordStatus } from '../store/types.js';

/** The package's web/ folder: the same two levels up from src/web/ (tests) and dist/web/ (built). */
export const WEB_ROOT = fileURLToPath(new URL('../../web/', import.meta.url));

const eta = new Eta({ views: `${WEB_ROOT}views`, autoEscape: true, cache: true, autoTrim: false });

/** What a route hands to its view: the layout's fields, and the view's own. */
export interface PageContent {
  title: string;
  /** The signed-in user, for the header (and its Sign out). */
  user?: string;
  notice?: string;
  error?: string;
  [key: string]: unknown;
}

/** What every page's layout gets: the content and the CSRF token for its forms. */
export interface PageData extends PageContent {
  csrf: string;
}

export function render(view: string, data: PageData): string {
  return eta.render(view, data);
}

/** A time for people: the date and minute, in UTC (the page does not know the reader's zone). */
export function when(ms: number): string {
  return `${new Date(ms).toISOString().slice(0, 16).replace('T', ' ')} UTC`;
}

export function access(info: Pick<AppPasswordInfo, 'scopes'>): string {
  return info.scopes.map((s) => s.toUpperCase()).join(', ');
}

/** One row of the app-password table. */
export function appPasswordRow(info: AppPasswordInfo, now: number) {
  const used = info.lastUsed;
  return {
    id: info.id,
    name: info.name,
    access: access(info),
    created: when(info.createdAt),
    createdIso: new Date(info.createdAt).toISOString(),
    expires: info.expiresAt === null ? 'Never' : when(info.expiresAt),
    lastUsed: used
      ? [when(used.at), used.ip ? `from ${used.ip}` : null, used.protocol ? `over ${used.protocol.toUpperCase()}` : null, used.client ? `with ${used.client}` : null]
          .filter(Boolean)
          .join(' ')
      : 'Never',
    active: appPasswordStatus(info, now) === 'active',
  };
}

/** What each event the page lists says; `name` is the app password's, when the event is about one. */
const EVENTS: Partial<Record<AuditRow['event'], (name: string) => string>> = {
  'web-sign-in': () => 'Signed in to this page',
  'login-failed': () => 'Failed sign-in',
  created: (name) => `App password ${name} created`,
  'new-address': (name) => `App password ${name} used from a new address`,
  revoked: (name) => `App password ${name} revoked`,
  'revoked-all': () => 'All app passwords removed',
  'totp-enabled': () => '2-Step Verification turned on',
  'totp-disabled': () => '2-Step Verification turned off',
  'recovery-codes-created': () => 'New recovery codes made',
  'recovery-code-used': () => 'Recovery code used to sign in',
  'web-sessions-ended': () => 'Signed out of this page everywhere else',
  'account-added': () => 'Account set up',
};

/** An audit row in words, with when, where from and over what. */
export function activityRow(row: AuditRow, names: ReadonlyMap<number, string>) {
  const name = row.appPasswordId !== null ? names.get(row.appPasswordId) : undefined;
  const what = EVENTS[row.event]?.(name ? `"${name}"` : '').replace(/\s+/g, ' ') ?? row.event;
  const over = row.protocol ? (row.protocol === 'web' ? 'on this page' : `over ${row.protocol.toUpperCase()}`) : null;
  const where = [row.ip ? `from ${row.ip}` : null, over].filter(Boolean).join(' ');
  return { when: when(row.at), iso: new Date(row.at).toISOString(), what, where };
}

/** An app password as users copy it by hand: four groups of four. */
export function grouped(password: string): string {
  return password.replace(/\s+/g, '').replace(/(.{4})(?=.)/g, '$1 ');
}
