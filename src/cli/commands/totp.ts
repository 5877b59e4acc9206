/** `mailgate totp ...`: two-step verification for an account. */
import { Command } from 'commander';
import qrcode from 'qrcode-terminal';
import { ErrorCodes, MailgateError } from '../../errors.js';
import { globalOptions, withStore } from '../context.js';
import { printJson, printLine } from '../output.js';

/** The codes, one per line and indented, as the user is to copy them; they are never shown again. */
function printRecoveryCodes(codes: readonly string[]): void {
  printLine();
  for (const code of codes) printLine(`    ${code}`);
  printLine();
  printLine('Each works once, instead of a code from the authenticator app (if it is lost).');
  printLine('They are shown only this once: keep them somewhere safe, away from the phone.');
}

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
    .description('turn two-step verification on, if CODE is valid for the pending secret; prints the recovery codes, once')
    .argument('<user>')
    .argument('<code>')
    .option('--json', 'print JSON')
    .action((user: string, code: string, _opts, cmd: Command) =>
      withStore(cmd, async (store) => {
        const { account, recoveryCodes } = await store.totp.confirm(user, code);
        if (globalOptions(cmd).json) return printJson({ username: account.username, totp: account.totpState, recoveryCodes });
        printLine(`two-step verification is on for ${account.username}; mail programs must now use app passwords`);
        printLine(`Recovery codes for ${account.username}:`);
        printRecoveryCodes(recoveryCodes);
      }),
    );

  totp
    .command('recovery-codes')
    .description('make new recovery codes for an account with two-step verification (the old ones stop working); shown once')
    .argument('<user>')
    .option('--json', 'print JSON')
    .action((user: string, _opts, cmd: Command) =>
      withStore(cmd, async (store) => {
        const account = await store.accounts.get(user);
        const recoveryCodes = await store.recoveryCodes.regenerate(account.username);
        if (globalOptions(cmd).json) return printJson({ username: account.username, recoveryCodes });
        printLine(`New recovery codes for ${account.username}; the earlier ones no longer work:`);
        printRecoveryCodes(recoveryCodes);
      }),
    );

  totp
    .command('disable')
    .description('turn two-step verification off, forget the secret and the recovery codes, end the page sessions; mail programs may then use the account password again')
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
        printLine(`two-step verification is off for ${account.username}; its recovery codes are deleted and its self-service page sessions ended`);
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
