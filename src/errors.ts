/**
 * One catalogue of the errors mailgate raises on purpose.
 *
 * Each has a stable code so the CLI can map it to an exit status, tests can
 * assert on it, and messages stay consistent. Messages are meant for operators
 * (CLI output, logs); protocol sessions never send them to mail clients.
 */

export const ErrorCodes = {
  USAGE: 'E_USAGE',
  INVALID_USERNAME: 'E_INVALID_USERNAME',
  ACCOUNT_EXISTS: 'E_ACCOUNT_EXISTS',
  UNKNOWN_ACCOUNT: 'E_UNKNOWN_ACCOUNT',
  UNKNOWN_APP_PASSWORD: 'E_UNKNOWN_APP_PASSWORD',
  DUPLICATE_NAME: 'E_DUPLICATE_NAME',
  INVALID_NAME: 'E_INVALID_NAME',
  UNKNOWN_SCOPE: 'E_UNKNOWN_SCOPE',
  BAD_DURATION: 'E_BAD_DURATION',
  TOO_MANY_APP_PASSWORDS: 'E_TOO_MANY_APP_PASSWORDS',
  TOTP_STATE: 'E_TOTP_STATE',
  TOTP_CODE: 'E_TOTP_CODE',
  DB_NEWER: 'E_DB_NEWER',
  DB_OLDER: 'E_DB_OLDER',
  DB_UNAVAILABLE: 'E_DB_UNAVAILABLE',
  DB_CHECK_FAILED: 'E_DB_CHECK_FAILED',
  BACKUP_TARGET: 'E_BACKUP_TARGET',
  /** `store copy`: a target that already holds data. */
  COPY_TARGET: 'E_COPY_TARGET',
  CONTROL_SOCKET: 'E_CONTROL_SOCKET',
  GATEWAY_NOT_RUNNING: 'E_GATEWAY_NOT_RUNNING',
  KEY_FILE: 'E_KEY_FILE',
  HASH_BUSY: 'E_HASH_BUSY',
  ACCOUNT_BLOCKED: 'E_ACCOUNT_BLOCKED',
  /** `mailgate check` found something to fix. */
  CHECK_FAILED: 'E_CHECK_FAILED',
  /** A listener (or the metrics endpoint) cannot bind its address. */
  LISTEN: 'E_LISTEN',
} as const;

export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

/** Codes that mean "the caller's input is malformed" rather than "refused". */
const USAGE_CODES: ReadonlySet<ErrorCode> = new Set([
  ErrorCodes.USAGE,
  ErrorCodes.INVALID_USERNAME,
  ErrorCodes.INVALID_NAME,
  ErrorCodes.UNKNOWN_SCOPE,
  ErrorCodes.BAD_DURATION,
]);

export class MailgateError extends Error {
  override readonly name = 'MailgateError';
  constructor(
    readonly code: ErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }

  get isUsageError(): boolean {
    return USAGE_CODES.has(this.code);
  }
}

export function isMailgateError(err: unknown, code?: ErrorCode): err is MailgateError {
  return err instanceof MailgateError && (code === undefined || err.code === code);
}

/** The message of anything thrown, for logs and one-line errors. */
export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
