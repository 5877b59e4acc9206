/**
 * `mailgate store copy --to postgres://...`: copies the SQLite store the
 * configuration names into an empty PostgreSQL store, then compares every
 * table. Exit 0 only when every table came across identical.
 */
import { Command } from 'commander';
import { ErrorCodes, MailgateError } from '../../errors.js';
import { copyStore } from '../../store/open.js';
import { globalOptions, loadCommandConfig } from '../context.js';
import { printJson, printLine } from '../output.js';

export function storeCopyCommand(): Command {
  return new Command('copy')
    .description('copy the SQLite store into an EMPTY PostgreSQL store (same key file), then compare them table by table')
    .requiredOption('--to <url>', 'the target: postgres://user@host:5432/database')
    .option('--password-file <file>', "the target's password, if not in the URL (else $PGPASSWORD)")
    .option('--json', 'print JSON')
    .action(async (opts: { to: string; passwordFile?: string }, cmd: Command) => {
      if (!/^postgres(ql)?:\/\//.test(opts.to)) throw new MailgateError(ErrorCodes.USAGE, '--to must be a postgres:// URL');
      const { config } = loadCommandConfig(cmd);
      const result = await copyStore(config, opts.to, opts.passwordFile ? { passwordFile: opts.passwordFile } : {});
      if (globalOptions(cmd).json) printJson(result);
      else {
        printLine(`copied ${result.source} to ${result.target}:`);
        for (const t of result.tables) printLine(`  ${t.table}: ${t.source} rows -> ${t.target} rows, ${t.same ? 'identical' : 'DIFFERENT'}`);
        if (result.ok) printLine('every table is identical; point store.backend and store.url at it, with the same key file on every node');
      }
      if (!result.ok) throw new MailgateError(ErrorCodes.DB_CHECK_FAILED, 'the copy does not match the source');
    });
}
