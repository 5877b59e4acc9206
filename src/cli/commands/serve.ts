/** `mailgate serve`: run the gateway until SIGTERM or SIGINT; SIGHUP reloads the configuration. */
import { Command, Option } from 'commander';
import type { Config } from '../../config/schema.js';
import { errorMessage } from '../../errors.js';
import { createLogger, resolveLogFormat, type Logger } from '../../log/logger.js';
// Type only: the gateway (fastify, TLS, every service) is loaded when `serve` runs, so the
// admin commands start fast.
import type { Gateway } from '../../server/gateway.js';
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

    // SIGHUP never ends the process (Node's default would): during the start
    // it is remembered, and applied once the gateway runs, since the file may
    // have changed after it was read.
    let gateway: Gateway | null = null;
    let pending = false;
    const reload = () => {
      if (gateway) reloadFrom(cmd, gateway, log);
      else pending = true;
    };
    process.on('SIGHUP', reload);
    const { Gateway } = await import('../../server/gateway.js');
    gateway = await Gateway.start({ config, log });
    if (pending) reloadFrom(cmd, gateway, log);
    const running = gateway;
    await new Promise<void>((resolve) => {
      const stop = (signal: NodeJS.Signals) => {
        log.info({ signal }, 'shutting down');
        running.stop().then(resolve, (err: unknown) => {
          log.error({ err }, 'error during shutdown');
          resolve();
        });
      };
      process.once('SIGTERM', stop);
      process.once('SIGINT', stop);
    });
    process.removeListener('SIGHUP', reload);
    log.flush();
  });
}

/**
 * Reads the configuration file again and hands it to the gateway. A file
 * that no longer validates, or points at a bad certificate, is refused in
 * one line, and the running configuration stays in force.
 */
function reloadFrom(cmd: Command, gateway: Gateway, log: Logger): void {
  const refused = (err: unknown) => log.error({ signal: 'SIGHUP', reason: errorMessage(err) }, 'reload refused: the running configuration stays in force');
  let next: Config;
  try {
    next = loadCommandConfig(cmd).config;
  } catch (err) {
    refused(err);
    return;
  }
  gateway.reload(next).catch(refused);
}

type LogFormatChoice = 'json' | 'pretty' | 'auto';

/** `--log-format`: overrides `[log] format` for this run. */
function logFormatOption(): Option {
  return new Option('--log-format <format>', 'JSON lines, or one readable line per event (default: [log] format; auto: pretty at a terminal)').choices(['json', 'pretty', 'auto']);
}
