/** `mailgate serve`: run the gateway until SIGTERM or SIGINT. */
import { Command, Option } from 'commander';
import { createLogger, resolveLogFormat } from '../../log/logger.js';
import { Gateway } from '../../server/gateway.js';
import { loadCommandConfig } from '../context.js';

export function serveCommand(): Command {
  return new Command('serve').description('run the IMAP/POP3 gateway').addOption(logFormatOption()).action(async (opts: { logFormat?: LogFormatChoice }, cmd: Command) => {
    const { config, file } = loadCommandConfig(cmd);
    const log = createLogger({ level: config.log.level, format: resolveLogFormat(opts.logFormat ?? config.log.format) });
    log.info({ config: file ?? '(built-in defaults)' }, 'starting mailgate');

    // One client must never take the process down. Sessions handle their own
    // errors; anything that still escapes is a bug to log, not a reason to drop
    // every other user's connection.
    process.on('unhandledRejection', (reason) => log.error({ err: reason }, 'unhandled rejection'));
    process.on('uncaughtException', (err) => log.error({ err }, 'uncaught exception'));

    const gateway = await Gateway.start({ config, log });
    await new Promise<void>((resolve) => {
      const stop = (signal: NodeJS.Signals) => {
        log.info({ signal }, 'shutting down');
        gateway.stop().then(resolve, (err: unknown) => {
          log.error({ err }, 'error during shutdown');
          resolve();
        });
      };
      process.once('SIGTERM', stop);
      process.once('SIGINT', stop);
    });
    log.flush();
  });
}

type LogFormatChoice = 'json' | 'pretty' | 'auto';

/** `--log-format`: overrides `[log] format` for this run. */
function logFormatOption(): Option {
  return new Option('--log-format <format>', 'JSON lines, or one readable line per event (default: [log] format; auto: pretty at a terminal)').choices(['json', 'pretty', 'auto']);
}
