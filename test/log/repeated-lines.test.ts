/**
 * Summarised log lines: the first few of a kind per period in full, the rest
 * as one line with a count at the end of the period. fail2ban reads both.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, expect, it, vi } from 'vitest';
import { createLogger } from '../../src/log/logger.js';
import { RepeatedLines } from '../../src/log/repeated-lines.js';
import { ROOT } from '../support/cli.js';

let lines: Array<Record<string, unknown>>;
let raw: string[];
let repeated: RepeatedLines;

beforeEach(() => {
  vi.useFakeTimers();
  lines = [];
  raw = [];
  const log = createLogger({
    level: 'info',
    destination: {
      write: (line: string) => {
        raw.push(line.trimEnd());
        lines.push(JSON.parse(line) as Record<string, unknown>);
      },
    },
  });
  repeated = new RepeatedLines(log, 10_000, 2);
});
afterEach(() => vi.useRealTimers());

const failed = (ip: string, user: string) => repeated.write('info', 'login failed', `wrong-password\0${user}`, { clientIp: ip, user, reason: 'wrong-password' });

it('writes the first few of a kind at once, and the rest as one line with a count when the period ends', () => {
  // Catches: a storm writing one line per attempt (megabytes a minute), and repeats that never reach the log.
  for (let i = 0; i < 50; i++) failed('198.51.100.1', 'ghost');
  failed('198.51.100.2', 'ghost');
  failed('198.51.100.1', 'other');
  expect(lines.map((l) => [l.clientIp, l.user, l.repeated])).toEqual([
    ['198.51.100.1', 'ghost', undefined],
    ['198.51.100.1', 'ghost', undefined],
    ['198.51.100.2', 'ghost', undefined],
    ['198.51.100.1', 'other', undefined],
  ]);
  vi.advanceTimersByTime(10_000);
  expect(lines.slice(4)).toEqual([expect.objectContaining({ clientIp: '198.51.100.1', user: 'ghost', repeated: 48, msg: 'login failed' })]);
  // A new period starts afresh.
  failed('198.51.100.1', 'ghost');
  expect(lines.at(-1)).toMatchObject({ clientIp: '198.51.100.1', user: 'ghost' });
  expect(lines.at(-1)!.repeated).toBeUndefined();
});

it('leaves no timer keeping the process alive, and flush() writes what is pending at once', () => {
  for (let i = 0; i < 5; i++) failed('198.51.100.3', 'ghost');
  repeated.flush();
  expect(lines.at(-1)).toMatchObject({ repeated: 3 });
  expect(vi.getTimerCount()).toBe(0);
});

it("the summary line is one the shipped fail2ban filter matches, with the client's address", () => {
  for (let i = 0; i < 4; i++) failed('203.0.113.9', 'ghost');
  repeated.flush();
  const filter = readFileSync(path.join(ROOT, 'config/fail2ban/filter.d/mailgate.conf'), 'utf8');
  const failregex = /^failregex = (.*)$/m.exec(filter)![1]!;
  const pattern = new RegExp(failregex.replace('<HOST>', '(?<host>[0-9a-fA-F.:]+)'));
  const summary = raw.at(-1)!;
  expect(summary).toContain('"repeated":2');
  expect(pattern.exec(summary)?.groups?.host).toBe('203.0.113.9');
});
