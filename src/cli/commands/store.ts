/**
 * `mailgate store ...`: back up and check the database, safely while the
 * gateway runs. Both open the existing store read-only through its engine
 * and never create one.
 */
import { existsSync } from 'node:fs';
import { Command } from 'commander';
import { configPath } from '../../config/load.js';
import { ErrorCodes, MailgateError } from '../../errors.js';
import { backupStore, checkStore } from '../../store/open.js';
import type { CheckResult } from '../../store/types.js';
import { globalOptions, loadCommandConfig, requireStore } from '../context.js';
import { printJson, printLine } from '../output.js';

/** One line per problem, for people. */
function problems(result: CheckResult): string[] {
  const lines = result.integrity.filter((line) => line !== 'ok').map((line) => `integrity: ${line}`);
  for (const fk of result.foreignKeys) {
    lines.push(`foreign key: ${fk.table} row ${fk.rowid ?? '?'} refers to a missing row of ${fk.parent}`);
  }
  if (result.schemaVersion === 0) lines.push('not a mailgate store (schema version 0)');
  return lines;
}

export function storeCommand(): Command {
  const store = new Command('store').description('back up and check the database (safe while the gateway runs)');

  store
    .command('backup')
    .description('write a consistent copy of the database to FILE (mode 0600), online, through SQLite')
    .argument('<file>', 'the copy to write; not the live database')
    .option('--force', 'replace FILE if it exists')
    .option('--json', 'print JSON')
    .action(async (file: string, opts: { force?: boolean }, cmd: Command) => {
      const loaded = loadCommandConfig(cmd);
      requireStore(loaded);
      const { config } = loaded;
      const keyFile = configPath(config.store.key_file);
      const { source, ...written } = await backupStore(config, file, { force: opts.force ?? false });
      if (globalOptions(cmd).json) return printJson({ ...written, source, keyFile });
      printLine(`wrote ${written.file}: ${written.bytes} bytes (${written.pages} pages), a consistent copy of ${source}`);
      if (existsSync(keyFile)) printLine(`the key file ${keyFile} is not in it: keep a copy of that too, or the TOTP secrets in the copy cannot be read`);
    });

  store
    .command('check')
    .description("run the store's own integrity checks (SQLite: integrity_check, foreign_key_check); exit 0 only when they pass")
    .option('--json', 'print JSON')
    .action((_opts, cmd: Command) => {
      const loaded = loadCommandConfig(cmd);
      requireStore(loaded);
      const { file, ...result } = checkStore(loaded.config);
      const found = problems(result);
      const ok = result.ok && found.length === 0;
      if (globalOptions(cmd).json) printJson({ file, ok, schemaVersion: result.schemaVersion, integrity: result.integrity, foreignKeys: result.foreignKeys });
      else if (ok) printLine(`ok: ${file}`);
      else for (const line of found) printLine(line);
      if (!ok) throw new MailgateError(ErrorCodes.DB_CHECK_FAILED, `${file} failed the check (${found.length} problem${found.length === 1 ? '' : 's'})`);
    });

  return store;
}
