/**
 * Log levels as mailgate writes them: names ("level":"error"), not pino's
 * numbers. A check written against numbers (`level >= 50`) would match
 * nothing and pass silently, so every test asks these helpers instead.
 */
export type LevelName = 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal';

/** An error or fatal line: a bug, or a failure the operator must look at. */
export function isErrorLevel(line: { level?: unknown }): boolean {
  assertNamed(line);
  return line.level === 'error' || line.level === 'fatal';
}

/** The line's level is `name` (and a name at all). */
export function hasLevel(line: { level?: unknown }, name: LevelName): boolean {
  assertNamed(line);
  return line.level === name;
}

function assertNamed(line: { level?: unknown }): void {
  if (typeof line.level !== 'string') throw new Error(`a log line without a level name: ${JSON.stringify(line).slice(0, 300)}`);
}
