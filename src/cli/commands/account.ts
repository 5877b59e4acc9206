/** `mailgate account ...`: the accounts whose logins mailgate checks. */
import { Command } from 'commander';
import { ErrorCodes, MailgateError } from '../../errors.js';
import type { Store } from '../../store/store.js';
import { appPasswordStatus, type Account } from '../../store/types.js';
import { globalOptions, withStore } from '../context.js';
import { isoTime, printJson, printLine, printTable, shortTime } from '../output.js';

async function summary(store: Store, account: Account) {
  const now = Date.now();
  const passwords = await store.appPasswords.list(account.username);
  const used = passwords.map((p) => p.lastUsed?.at ?? 0).filter((t) => t > 0);
  return {
    username: account.username,
    createdAt: isoTime(account.createdAt),
    totp: account.totpState,
    appPasswords: {
      active: passwords.filter((p) => appPasswordStatus(p, now) === 'active').length,
      total: passwords.length,
    },
    lastUsedAt: isoTime(used.length > 0 ? Math.max(...used) : null),
  };
}

export function accountCommand(): Command {
  const account = new Command('account').description('add, list, show and remove accounts');

  account
    .command('add')
    .description('add an account (the username as the mail server knows it)')
    .argument('<user>')
    .option('--json', 'print JSON')
    .action((user: string, _opts, cmd: Command) =>
      withStore(
        cmd,
        async (store) => {
          const created = await store.accounts.add(user);
          if (globalOptions(cmd).json) printJson(await summary(store, created));
          else printLine(`added account ${created.username}`);
        },
        // The one command that may start a new store (serve is the other).
        { create: true },
      ),
    );

  account
    .command('list')
    .description('list accounts')
    .option('--json', 'print JSON')
    .action((_opts, cmd: Command) =>
      withStore(cmd, async (store) => {
        const rows = await Promise.all((await store.accounts.list()).map((a) => summary(store, a)));
        if (globalOptions(cmd).json) return printJson(rows);
        if (rows.length === 0) return printLine('no accounts');
        printTable(
          ['USER', 'CREATED', 'TOTP', 'APP PASSWORDS', 'LAST USED'],
          rows.map((r) => [
            r.username,
            shortTime(Date.parse(r.createdAt!)),
            r.totp,
            `${r.appPasswords.active} active`,
            r.lastUsedAt ? shortTime(Date.parse(r.lastUsedAt)) : '-',
          ]),
        );
      }),
    );

  account
    .command('show')
    .description('show one account')
    .argument('<user>')
    .option('--json', 'print JSON')
    .action((user: string, _opts, cmd: Command) =>
      withStore(cmd, async (store) => {
        const info = await summary(store, await store.accounts.get(user));
        if (globalOptions(cmd).json) return printJson(info);
        printLine(`user:           ${info.username}`);
        printLine(`created:        ${shortTime(Date.parse(info.createdAt!))}`);
        printLine(`two-step (TOTP): ${info.totp}`);
        printLine(`app passwords:  ${info.appPasswords.active} active, ${info.appPasswords.total} in all`);
        printLine(`last used:      ${info.lastUsedAt ? shortTime(Date.parse(info.lastUsedAt)) : '-'}`);
      }),
    );

  account
    .command('remove')
    .description('remove an account and all its app passwords')
    .argument('<user>')
    .option('--yes', 'confirm the removal')
    .action((user: string, opts: { yes?: boolean }, cmd: Command) => {
      if (!opts.yes) {
        throw new MailgateError(ErrorCodes.USAGE, `removing ${user.trim()} deletes its app passwords too; add --yes to confirm`);
      }
      return withStore(cmd, async (store) => {
        const existing = await store.accounts.get(user);
        await store.accounts.remove(existing.username);
        printLine(`removed account ${existing.username} and its app passwords`);
      });
    });

  return account;
}
