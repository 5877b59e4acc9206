/** Durations typed on the command line, such as `90d` for `--expires`. */
import { ErrorCodes, MailgateError } from '../errors.js';

const UNIT_MS: Record<string, number> = {
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
  w: 7 * 86_400_000,
  y: 365 * 86_400_000,
};

/** Ten years: a longer "expiry" is almost certainly a typo for a shorter one. */
const MAX_MS = 10 * UNIT_MS.y!;

export function parseDuration(text: string): number {
  const match = /^(\d{1,6})([smhdwy])$/.exec(text.trim());
  if (!match) {
    throw new MailgateError(ErrorCodes.BAD_DURATION, `bad duration "${text}": use a number and a unit, e.g. 30m, 12h, 90d, 8w, 1y`);
  }
  const ms = Number(match[1]) * UNIT_MS[match[2]!]!;
  if (ms <= 0) throw new MailgateError(ErrorCodes.BAD_DURATION, `bad duration "${text}": it must be longer than zero`);
  if (ms > MAX_MS) throw new MailgateError(ErrorCodes.BAD_DURATION, `bad duration "${text}": at most 10 years`);
  return ms;
}
