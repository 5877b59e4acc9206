/** `mailgate totp ...`: two-step verification for an account. */
import { Command } from 'commander';
import qrcode from 'qrcode-terminal';
import { ErrorCodes, MailgateError } from '../../errors.js';
import { globalOptions, withStore } from '../context.js';
import { printJson, printLine } from '../output.js';

function renderQr(text: string): string {
  let out = '';
  // qrcode-terminal calls back synchronously.
  qrcode.generate(text, { small: true }, (qr) => {
    out = qr;
  });
  return out;
}

export function totpCommand(): Command {
  const totp = new Command('totp').description('two-step verification (TOTP) for an account');

  totp
    .command('enroll')
    .description('create a TOTP secret; two-step verification turns on after "totp confirm"')
    .argument('<user>')
    .option('--json', 'print JSON')
    .action((user: string, _opts, cmd: Command) =>
      withStore(cmd, async (store) => {
        const account = await store.accounts.get(user);
        const enrolment = await store.totp.enroll(account.username);
        if (globalOptions(cmd).json) {
          return printJson({ username: account.username, secret: enrolment.secret, uri: enrolment.uri });
        }
        printLine(`Two-step verification for ${account.username} is pending.`);
        printLine(`Scan this code with an authenticator app, or type the secret into it:`);
        printLine();
        printLine(renderQr(enrolment.uri));
        printLine(`secret: ${enrolment.secret}`);
        printLine(`uri:    ${enrolment.uri}`);
        printLine();
        printLine(`Then turn it on with: mailgate totp confirm ${account.username} <code shown by the app>`);
      }),
    );

  totp
    .command('confirm')
    .description('turn two-step verification on, if CODE is valid for the pending secret')
    .argument('<user>')
    .argument('<code>')
    .option('--json', 'print JSON')
    .action((user: string, code: string, _opts, cmd: Command) =>
      withStore(cmd, async (store) => {
        const account = await store.totp.confirm(user, code);
        if (globalOptions(cmd).json) return printJson({ username: account.username, totp: account.totpState });
        printLine(`two-step verification is on for ${account.username}; mail programs must now use app passwords`);
      }),
    );

  totp
    .command('disable')
    .description('turn two-step verification off and forget the secret; mail programs may then use the account password again')
    .argument('<user>')
    .option('--yes', 'confirm that mail programs may use the account password again')
    .option('--json', 'print JSON')
    .action((user: string, opts: { yes?: boolean }, cmd: Command) => {
      if (!opts.yes) {
        throw new MailgateError(
          ErrorCodes.USAGE,
          `turning off two-step verification for ${user.trim()} means mail programs may log in with the account password again; add --yes to confirm`,
        );
      }
      return withStore(cmd, async (store) => {
        const account = await store.totp.disable(user);
        if (globalOptions(cmd).json) return printJson({ username: account.username, totp: account.totpState });
        printLine(`two-step verification is off for ${account.username}`);
      });
    });

  totp
    .command('status')
    .description('show whether two-step verification is none, pending or enabled')
    .argument('<user>')
    .option('--json', 'print JSON')
    .action((user: string, _opts, cmd: Command) =>
      withStore(cmd, async (store) => {
        const account = await store.accounts.get(user);
        if (globalOptions(cmd).json) return printJson({ username: account.username, totp: account.totpState });
        printLine(`${account.username}: ${account.totpState}`);
      }),
    );

  return totp;
}
