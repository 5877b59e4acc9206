/**
 * Entry point of the `mailgate` binary: runs the command, then turns whatever
 * went wrong into one line on stderr and an exit status:
 *   0 success, 1 a refused request (nothing changed), 2 a usage error.
 * It sets process.exitCode instead of calling process.exit, so pending output
 * and database handles close normally.
 */
import { CommanderError } from 'commander';
import { ConfigError } from '../config/load.js';
import { errorMessage, MailgateError } from '../errors.js';
import { TlsSetupError } from '../session/tls.js';
import { createProgram } from './program.js';

export const EXIT_OK = 0;
export const EXIT_REFUSED = 1;
export const EXIT_USAGE = 2;

function describe(err: unknown): { message: string; code: number } {
  if (err instanceof CommanderError) {
    // Commander has already printed its message (one line) to stderr.
    const printed = err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.code === 'commander.help';
    return { message: '', code: printed ? err.exitCode : EXIT_USAGE };
  }
  if (err instanceof ConfigError) return { message: err.message, code: EXIT_USAGE };
  if (err instanceof TlsSetupError) return { message: err.message, code: EXIT_REFUSED };
  if (err instanceof MailgateError) return { message: err.message, code: err.isUsageError ? EXIT_USAGE : EXIT_REFUSED };
  if (err instanceof Error && err.name === 'SqliteError') {
    return { message: `the database refused the request: ${err.message}`, code: EXIT_REFUSED };
  }
  return { message: `unexpected error: ${errorMessage(err)}`, code: EXIT_REFUSED };
}

/**
 * `mailgate ... | head -1` closes the pipe early. Node reports that as an
 * 'error' event on stdout, which would crash with a stack trace; a reader
 * that stopped reading is no failure of the command, so the rest of the
 * output is dropped and the command ends as it would have.
 */
function toleratesClosedStdout(): void {
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') return;
    process.stderr.write(`mailgate: cannot write the output: ${errorMessage(err)}\n`);
    process.exitCode = EXIT_REFUSED;
  });
}

export async function main(argv: string[] = process.argv): Promise<number> {
  toleratesClosedStdout();
  const program = createProgram();
  program.exitOverride();
  for (const command of program.commands) {
    command.exitOverride();
    for (const sub of command.commands) sub.exitOverride();
  }
  try {
    await program.parseAsync(argv);
    return EXIT_OK;
  } catch (err) {
    const { message, code } = describe(err);
    if (message) process.stderr.write(`mailgate: ${message}\n`);
    return code;
  }
}

const exitCode = await main();
// An output error already recorded (see toleratesClosedStdout) is not overwritten by a success.
process.exitCode = exitCode === EXIT_OK && process.exitCode ? process.exitCode : exitCode;
