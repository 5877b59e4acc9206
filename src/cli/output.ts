/** How the CLI prints: plain tables for people, JSON for scripts. */

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

export function printLine(text = ''): void {
  process.stdout.write(`${text}\n`);
}

/** ISO 8601 in UTC, or null: the JSON form of every time. */
export function isoTime(ms: number | null | undefined): string | null {
  return ms === null || ms === undefined ? null : new Date(ms).toISOString();
}

/** A compact UTC time for tables: 2026-11-25 17:40Z. */
export function shortTime(ms: number | null | undefined): string {
  if (ms === null || ms === undefined) return '-';
  return `${new Date(ms).toISOString().slice(0, 16).replace('T', ' ')}Z`;
}

export function printTable(headers: string[], rows: string[][]): void {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const format = (cells: string[]) =>
    cells
      .map((cell, i) => (i === cells.length - 1 ? cell : cell.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  printLine(format(headers));
  for (const row of rows) printLine(format(row));
}

/**
 * Text someone else chose (a browser's user agent), made safe for a
 * terminal: control characters (escape sequences could rewrite the screen)
 * become "?", and it is clipped to `max` characters.
 */
export function printable(text: string | null | undefined, max = 60): string {
  if (text === null || text === undefined || text === '') return '-';
  const safe = text.replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/gu, '?');
  return safe.length > max ? `${safe.slice(0, max - 3)}...` : safe;
}
