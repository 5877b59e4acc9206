/**
 * The structured (pino) logger.
 *
 * Secrets must never be handed to the logger in the first place; the redaction
 * list is the second line of defence for a field added carelessly later. A test
 * (test/store/no-secrets.test.ts and the gateway tests) reads the log stream and
 * looks for the secrets it used.
 */
import { pino, type Logger, type DestinationStream, type LevelWithSilent } from 'pino';

export type { Logger } from 'pino';

const SECRET_KEYS = ['password', 'pass', 'secret', 'totpSecret', 'totpCode', 'payload', 'credentials', 'authorization', 'masterPassword', 'appPassword'];

export const REDACT_PATHS = SECRET_KEYS.flatMap((key) => [key, `*.${key}`]);

export interface LoggerOptions {
  level?: LevelWithSilent;
  /** Where the JSON lines go; stdout when omitted. Tests pass a stream they read. */
  destination?: DestinationStream;
  name?: string;
}

export function createLogger(options: LoggerOptions = {}): Logger {
  return pino(
    {
      name: options.name ?? 'mailgate',
      level: options.level ?? 'info',
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      // Error objects are serialised without their stack: a stack trace in a
      // log is fine, but it must never reach a client, and keeping logs terse
      // makes fail2ban filters reliable.
      serializers: { err: pino.stdSerializers.err },
      timestamp: pino.stdTimeFunctions.isoTime,
      base: { pid: process.pid },
    },
    options.destination ?? pino.destination({ dest: 1, sync: false }),
  );
}

/** A logger that discards everything, for CLI commands and tests that don't read logs. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}

/** A name a client sent, for logs and the audit trail: at most 256 characters, whatever it sent. */
export function clipName(name: string): string {
  return name.length > 256 ? `${name.slice(0, 256)}...` : name;
}
