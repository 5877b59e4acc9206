/** `mailgate app-password ...`: issue, list and revoke app passwords. */
import { Command } from 'commander';
import { AbuseGuard, abuseRules } from '../../auth/abuse.js';
import type { Config } from '../../config/schema.js';
import { ErrorCodes, isMailgateError, MailgateError } from '../../errors.js';
import { silentLogger } from '../../log/logger.js';
import { parseScopes } from '../../store/app-password-format.js';
import type { Store } from '../../store/store.js';
import { appPasswordStatus, type Account, type AppPasswordInfo, type CreatedAppPassword } from '../../store/types.js';
import { parseDuration } from '../duration.js';
import { globalOptions, withStore } from '../context.js';
import { isoTime, printJson, printLine, printTable, shortTime } from '../output.js';

function toJson(info: AppPasswordInfo, now: number) {
  return {
    id: info.id,
    name: info.name,
    scopes: info.scopes,
    status: appPasswordStatus(info, now),
    createdAt: isoTime(info.createdAt),
    expiresAt: isoTime(info.expiresAt),
    revokedAt: isoTime(info.revokedAt),
    lastUsed: info.lastUsed
      ? { at: isoTime(info.lastUsed.at), ip: info.lastUsed.ip, protocol: info.lastUsed.protocol, client: info.lastUsed.client }
      : null,
  };
}

/**
 * A self-service front end (a web page, a helpdesk script) issues app
 * passwords on the user's word only after the user proves they hold the
 * second factor. The code is checked and consumed in the same transaction as
 * the create (the same code cannot issue a second app password, here or in
 * any other process sharing the store; a create refused for another reason
 * keeps it unspent). Codes are guessable, so they are guarded like
 * passwords: refused while the account is blocked, and a wrong one counts as
 * a failed login of the account (the same penalties the gateway applies) and
 * is audited.
 */
async function createWithTotpCode(store: Store, config: Config, account: Account, code: string, create: () => Promise<CreatedAppPassword>): Promise<CreatedAppPassword> {
  const guard = new AbuseGuard(store, abuseRules(config.limits), silentLogger());
  if (await guard.accountBlocked(account.username)) {
    throw new MailgateError(ErrorCodes.ACCOUNT_BLOCKED, `${account.username} is temporarily blocked after repeated failures; try again later (or "mailgate blocks clear ${account.username}")`);
  }
  try {
    return await create();
  } catch (err) {
    if (isMailgateError(err, ErrorCodes.TOTP_CODE)) {
      await guard.recordFailure(null, account.username, Buffer.from(code, 'utf8'));
      await store.audit.record('totp-failed', { username: account.username, detail: 'app-password-create' });
    }
    throw err;
  }
}

function parseId(text: string): number {
  if (!/^\d{1,15}$/.test(text)) throw new MailgateError(ErrorCodes.USAGE, `"${text}" is not an app password id (see "app-password list")`);
  return Number(text);
}

export function appPasswordCommand(): Command {
  const appPassword = new Command('app-password').description('issue, list and revoke app passwords');

  appPassword
    .command('create')
    .description('create an app password; it is shown once')
    .argument('<user>')
    .requiredOption('--name <name>', 'what it is for, e.g. "Thunderbird on laptop"')
    .option('--scope <scopes>', 'comma-separated: imap, pop3', 'imap,pop3')
    .option('--expires <duration>', 'expire after e.g. 30m, 12h, 90d, 8w, 1y')
    .option('--totp-code <code>', "require a current code from the account's authenticator app (self-service: proves the second factor)")
    .option('--json', 'print JSON')
    .action((user: string, opts: { name: string; scope: string; expires?: string; totpCode?: string }, cmd: Command) => {
      // Validate everything before touching the database, so bad input changes nothing.
      const scopes = parseScopes(opts.scope);
      const expiresAt = opts.expires === undefined ? null : Date.now() + parseDuration(opts.expires);
      return withStore(cmd, async (store, { config }) => {
        const account = await store.accounts.get(user);
        const code = opts.totpCode;
        const create = () => store.appPasswords.create(account.username, { name: opts.name, scopes, expiresAt, ...(code === undefined ? {} : { totpCode: code }) });
        const created = code === undefined ? await create() : await createWithTotpCode(store, config, account, code, create);
        if (globalOptions(cmd).json) {
          return printJson({
            id: created.info.id,
            name: created.info.name,
            password: created.password.replace(/ /g, ''),
            scopes: created.info.scopes,
            expiresAt: isoTime(created.info.expiresAt),
          });
        }
        printLine(`App password "${created.info.name}" for ${account.username} (id ${created.info.id}, ${created.info.scopes.join('+')}):`);
        printLine();
        printLine(`    ${created.password}`);
        printLine();
        printLine('Use it as the password in your mail program, instead of your account password.');
        printLine('It is shown only this once; spaces are optional.');
        if (created.info.expiresAt !== null) printLine(`It expires ${shortTime(created.info.expiresAt)}.`);
      });
    });

  appPassword
    .command('list')
    .description("list an account's app passwords")
    .argument('<user>')
    .option('--json', 'print JSON')
    .action((user: string, _opts, cmd: Command) =>
      withStore(cmd, async (store) => {
        const now = Date.now();
        const rows = (await store.appPasswords.list(user)).map((info) => toJson(info, now));
        if (globalOptions(cmd).json) return printJson(rows);
        if (rows.length === 0) return printLine('no app passwords');
        printTable(
          ['ID', 'NAME', 'SCOPES', 'STATUS', 'CREATED', 'EXPIRES', 'LAST USED'],
          rows.map((r) => [
            String(r.id),
            r.name,
            r.scopes.join(','),
            r.status,
            shortTime(Date.parse(r.createdAt!)),
            r.expiresAt ? shortTime(Date.parse(r.expiresAt)) : 'never',
            r.lastUsed ? `${shortTime(Date.parse(r.lastUsed.at!))} from ${r.lastUsed.ip ?? '?'} via ${r.lastUsed.protocol ?? '?'}` : 'never',
          ]),
        );
      }),
    );

  appPassword
    .command('revoke')
    .description('revoke one app password by id, or all of them with --all')
    .argument('<user>')
    .argument('[id]')
    .option('--all', 'revoke every app password of the account')
    .action((user: string, id: string | undefined, opts: { all?: boolean }, cmd: Command) => {
      if (opts.all && id !== undefined) throw new MailgateError(ErrorCodes.USAGE, 'give an id or --all, not both');
      if (!opts.all && id === undefined) throw new MailgateError(ErrorCodes.USAGE, 'give the id of the app password to revoke, or --all');
      const parsedId = id === undefined ? null : parseId(id);
      return withStore(cmd, async (store) => {
        const account = await store.accounts.get(user);
        if (parsedId === null) {
          const count = await store.appPasswords.revokeAll(account.username);
          printLine(`revoked ${count} app password${count === 1 ? '' : 's'} of ${account.username}`);
        } else {
          const info = await store.appPasswords.revoke(account.username, parsedId);
          printLine(`revoked app password ${info.id} ("${info.name}") of ${account.username}`);
        }
      });
    });

  return appPassword;
}
