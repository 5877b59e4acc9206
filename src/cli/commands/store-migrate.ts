/** `mailgate store migrate`: applies the store's pending schema migrations (both engines); the gateway also does at start. */
import { Command } from 'commander';
import { migrateStore } from '../../store/open.js';
import { globalOptions, loadCommandConfig } from '../context.js';
import { printJson, printLine } from '../output.js';

export function storeMigrateCommand(): Command {
  return new Command('migrate')
    .description('apply pending schema migrations (PostgreSQL: makes the schema in an empty database)')
    .option('--json', 'print JSON')
    .action(async (_opts, cmd: Command) => {
      const { config } = loadCommandConfig(cmd);
      const result = await migrateStore(config);
      if (globalOptions(cmd).json) return printJson(result);
      if (result.from === result.to) return printLine(`${result.store} is at schema version ${result.to}; nothing to do`);
      printLine(`${result.store}: schema version ${result.from} -> ${result.to}${result.backup ? `; the store as it was is in ${result.backup}` : ''}`);
    });
}
