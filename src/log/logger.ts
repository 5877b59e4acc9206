/**
 * The structured (pino) logger.
 *
 * Secrets must never be handed to the logger in the first place; the redaction
 * list is the second line of defence for a field added carelessly later. A test
 * (test/store/no-secrets.test.ts and the gateway tests) reads the log stream and
 * looks for the secrets it used. Redaction runs inside pino, before a line is
 * serialised, so it applies to both formats: JSON lines and the readable ones
 * (pino-pretty formats the already-redacted JSON).
 */
import { pino, type Logger, type DestinationStream, type LevelWithSilent } from 'pino';
import { PinoPretty } from 'pino-pretty';

export type { Logger } from 'pino';

const SECRET_KEYS = ['password', 'pass', 'secret', 'totpSecret', 'totpCode', 'payload', 'credentials', 'authorization', 'masterPassword', 'appPassword'];

export const REDACT_PATHS = SECRET_KEYS.flatMap((key) => [key, `*.${key}`]);

/** JSON lines (for journald, files, fail2ban), or one readable line per event (for a person at a terminal). */
export type LogFormat = 'json' | 'pretty';

export interface LoggerOptions {
  level?: LevelWithSilent;
  /** 'json' (default) or 'pretty'. */
  format?: LogFormat;
  /** Where the lines go; stdout when omitted. Tests pass a stream they read. */
  destination?: DestinationStream;
  name?: string;
}

export function createLogger(options: LoggerOptions = {}): Logger {
  return pino(
    {
      name: options.name ?? 'mailgate',
      level: options.level ?? 'info',
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      // "level":"warn" rather than 40: readable by a person, and what grep,
      // jq and the docs use. The fail2ban filter keys on messages, not levels.
      formatters: { level: (label) => ({ level: label }) },
      // Error objects are serialised without their stack: a stack trace in a
      // log is fine, but it must never reach a client, and keeping logs terse
      // makes fail2ban filters reliable.
      serializers: { err: pino.stdSerializers.err },
      timestamp: pino.stdTimeFunctions.isoTime,
      base: { pid: process.pid },
    },
    destination(options),
  );
}

function destination(options: LoggerOptions): DestinationStream {
  if (options.format !== 'pretty') return options.destination ?? pino.destination({ dest: 1, sync: false });
  // In this process, not pino's worker-thread transport: a start that fails
  // must still print its last lines before the process exits, and the stream
  // only ever sees lines pino has already redacted.
  return PinoPretty({
    ...(options.destination ? { destination: options.destination } : { destination: 1 }),
    // Colours only where they render: a terminal, not a file or a pipe.
    colorize: options.destination ? false : Boolean(process.stdout.isTTY),
    singleLine: true,
    // The local time with its offset (unambiguous), and no pid/name noise on every line.
    translateTime: 'SYS:standard',
    // An error as its message, on the event's line (pino-pretty would print it on
    // lines of its own): the stack, for developers, stays in the JSON format.
    ignore: 'pid,name,hostname,err',
    messageFormat: (line, messageKey) => (line.err === undefined ? String(line[messageKey]) : `${String(line[messageKey])}: ${errorText(line.err)}`),
    sync: true,
  });
}

function errorText(value: unknown): string {
  return typeof value === 'object' && value !== null && 'message' in value ? String(value.message) : String(value);
}

/**
 * The format for `mailgate serve`: the --log-format option, else `[log]
 * format`; 'auto' is readable lines at a terminal and JSON anywhere else
 * (systemd, a pipe, a file).
 */
export function resolveLogFormat(requested: 'json' | 'pretty' | 'auto', stdoutIsTty: boolean = Boolean(process.stdout.isTTY)): LogFormat {
  if (requested === 'auto') return stdoutIsTty ? 'pretty' : 'json';
  return requested;
}

/** A logger that discards everything, for CLI commands and tests that don't read logs. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}

/** A name a client sent, for logs and the audit trail: at most 256 characters, whatever it sent. */
export function clipName(name: string): string {
  return name.length > 256 ? `${name.slice(0, 256)}...` : name;
}
