/** The `mailgate` command tree: one file per command group under commands/. */
import { Command } from 'commander';
import { accountCommand } from './commands/account.js';
import { appPasswordCommand } from './commands/app-password.js';
import { auditCommand } from './commands/audit.js';
import { blocksCommand } from './commands/blocks.js';
import { checkCommand } from './commands/check.js';
import { serveCommand } from './commands/serve.js';
import { kickCommand, whoCommand } from './commands/sessions.js';
import { storeCommand } from './commands/store.js';
import { storeCopyCommand } from './commands/store-copy.js';
import { storeMigrateCommand } from './commands/store-migrate.js';
import { totpCommand } from './commands/totp.js';
import { webCommand } from './commands/web.js';
import { defaultConfigPath } from '../config/load.js';
import { packageVersion } from './version.js';

export function createProgram(): Command {
  const program = new Command('mailgate')
    .description('IMAP/POP3 authentication gateway with app passwords and two-step verification')
    .version(packageVersion(), '-V, --version')
    .option('-c, --config <file>', `configuration file (default: $MAILGATE_CONFIG, else ${defaultConfigPath()})`)
    .showSuggestionAfterError(true);

  for (const command of [serveCommand(), accountCommand(), totpCommand(), appPasswordCommand(), blocksCommand(), storeCommand(), webCommand(), checkCommand()]) {
    program.addCommand(command);
  }
  program.commands.find((c) => c.name() === 'store')!.addCommand(storeMigrateCommand()).addCommand(storeCopyCommand());
  for (const command of [auditCommand(), whoCommand(), kickCommand()]) program.addCommand(command);
  return program;
}
