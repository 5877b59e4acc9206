/** `mailgate web ...`: the self-service page, as the administrator sees it. */
import { Command } from 'commander';
import type { WebSessionInfo } from '../../store/types.js';
import { webSessionLimits } from '../../config/schema.js';
import { globalOptions, withStore } from '../context.js';
import { isoTime, printable, printJson, printLine, printTable, shortTime } from '../output.js';

function toJson(session: WebSessionInfo) {
  return {
    createdAt: isoTime(session.createdAt),
    lastSeenAt: isoTime(session.lastSeenAt),
    passwordAt: isoTime(session.passwordAt),
    ip: session.ip,
    userAgent: session.userAgent,
  };
}

export function webCommand(): Command {
  const web = new Command('web').description('the self-service page: its sessions');

  web
    .command('sessions')
    .description("list an account's page sessions (newest first), or end them all with --revoke-all")
    .argument('<user>')
    .option('--revoke-all', 'end every page session of the account (it must sign in again)')
    .option('--json', 'print JSON')
    .action((user: string, opts: { revokeAll?: boolean }, cmd: Command) =>
      withStore(cmd, async (store, { config }) => {
        const account = await store.accounts.get(user);
        const json = globalOptions(cmd).json;
        if (opts.revokeAll) {
          const ended = await store.webSessions.endAll(account.username);
          if (json) return printJson({ username: account.username, ended });
          return printLine(`ended ${ended} page session${ended === 1 ? '' : 's'} of ${account.username}`);
        }
        const sessions = await store.webSessions.list(account.username, webSessionLimits(config));
        if (json) return printJson(sessions.map(toJson));
        if (sessions.length === 0) return printLine(`no page sessions for ${account.username}`);
        printTable(
          ['CREATED', 'LAST SEEN', 'PASSWORD CONFIRMED', 'ADDRESS', 'USER AGENT'],
          sessions.map((s) => [shortTime(s.createdAt), shortTime(s.lastSeenAt), shortTime(s.passwordAt), printable(s.ip, 45), printable(s.userAgent)]),
        );
      }),
    );

  return web;
}
