/**
 * `mailgate audit [USER]`: the audit trail (logins, failures, app passwords
 * created and revoked, 2-step verification turned on and off...), newest
 * first, so operators need no SQL. Read-only.
 */
import { Command } from 'commander';
import { FIXED_LIMITS } from '../../config/limits.js';
import { ErrorCodes, MailgateError } from '../../errors.js';
import type { AuditListRow } from '../../store/types.js';
import { normaliseUsername } from '../../store/username.js';
import { parseDuration } from '../duration.js';
import { globalOptions, withStore } from '../context.js';
import { isoTime, printable, printJson, printLine, printTable } from '../output.js';

const DEFAULT_ROWS = FIXED_LIMITS.audit_default_rows;
const MAX_ROWS = FIXED_LIMITS.audit_max_rows;

/** A positive whole number of rows, or a usage error. */
function parseLimit(text: string): number {
  const n = /^\d{1,7}$/.test(text.trim()) ? Number(text.trim()) : NaN;
  if (!Number.isInteger(n) || n < 1 || n > MAX_ROWS) {
    throw new MailgateError(ErrorCodes.USAGE, `bad --limit "${text}": give a number of rows from 1 to ${MAX_ROWS}`);
  }
  return n;
}

/** A time for the table, to the second, in UTC: 2026-11-25 17:40:12Z. */
function tableTime(ms: number): string {
  return `${new Date(ms).toISOString().slice(0, 19).replace('T', ' ')}Z`;
}

/** "3 laptop", "3" (the app password is gone), or "-". */
function appPassword(row: AuditListRow): string {
  if (row.appPasswordId === null) return '-';
  return row.appPasswordName === null ? String(row.appPasswordId) : `${row.appPasswordId} ${printable(row.appPasswordName, 40)}`;
}

function toJson(row: AuditListRow) {
  return {
    id: row.id,
    at: isoTime(row.at),
    event: row.event,
    user: row.username,
    appPasswordId: row.appPasswordId,
    appPasswordName: row.appPasswordName,
    ip: row.ip,
    protocol: row.protocol,
    detail: row.detail,
  };
}

export function auditCommand(): Command {
  return new Command('audit')
    .description('show the audit trail, newest first: logins, failures, app passwords, 2-step verification (times in UTC)')
    .argument('[user]', "only this account's events")
    .option('--since <duration>', 'only events this recent, e.g. 30m, 12h, 1d, 8w')
    .option('--limit <n>', `at most this many events, the newest (default ${DEFAULT_ROWS})`)
    .option('--json', 'print JSON')
    .action((user: string | undefined, opts: { since?: string; limit?: string }, cmd: Command) => {
      // Parsed before the store is opened: a typo is a usage error, not a query.
      const since = opts.since === undefined ? undefined : Date.now() - parseDuration(opts.since);
      const limit = opts.limit === undefined ? DEFAULT_ROWS : parseLimit(opts.limit);
      const username = user === undefined ? undefined : normaliseUsername(user);
      return withStore(cmd, async (store) => {
        const rows = await store.audit.list({
          ...(username === undefined ? {} : { username }),
          ...(since === undefined ? {} : { since }),
          limit,
        });
        if (globalOptions(cmd).json) return printJson(rows.map(toJson));
        if (rows.length === 0) return printLine(`no audit events${username === undefined ? '' : ` for ${printable(username)}`}${opts.since ? ` in the last ${opts.since}` : ''}`);
        printTable(
          ['TIME (UTC)', 'EVENT', 'USER', 'APP PASSWORD', 'IP', 'PROTOCOL', 'DETAIL'],
          rows.map((r) => [tableTime(r.at), r.event, printable(r.username), appPassword(r), printable(r.ip), printable(r.protocol), printable(r.detail)]),
        );
        if (rows.length === limit) printLine(`(the newest ${limit}; --limit or --since for more or fewer)`);
      });
    });
}
