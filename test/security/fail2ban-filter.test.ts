/**
 * The fail2ban filter shipped in config/ must match the lines a running
 * gateway writes for refused logins, pick out the client address, and read
 * each line's time as the instant it was written. The real fail2ban-regex
 * (Debian package fail2ban) applies it, so fail2ban's own date detection and
 * <HOST> expansion are what is tested.
 *
 * It matches attempts refused by mailgate's own temporary block too: a source
 * that keeps trying while blocked is exactly what the firewall ban is for, and
 * without those lines it would stop counting at the block threshold.
 *
 * pino writes UTC ("time":"2026-12-05T12:53:48.123Z"). A date pattern that
 * stops before the "Z" makes fail2ban read the time in the host's own zone:
 * on a host east of UTC every failure looks hours old (outside findtime, so
 * nobody is ever banned), west of UTC hours in the future. So the filter is
 * also run under other time zones.
 */
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { ROOT } from '../support/cli.js';
import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { startGateway, type GatewayHandle } from '../support/gateway.js';
import { imaps, taggedLine } from '../support/imap-client.js';
import { makeTempDir, removeTempDir } from '../support/tmp.js';

/** Failures from one address before mailgate blocks it (low, so the test reaches the block quickly). */
const BLOCK_AFTER = 2;
const REFUSALS = /"msg":"login (?:failed|blocked)"/;
const FILTER = path.join(ROOT, 'config/fail2ban/filter.d/mailgate.conf');

let dovecot: DovecotHandle;
let gw: GatewayHandle;
let dir: string;
beforeAll(async () => {
  dir = await makeTempDir('f2b');
  dovecot = await startDovecot();
  gw = await startGateway(dovecot, { config: { limits: { ip_block_after: BLOCK_AFTER } } });
});
afterAll(async () => {
  await gw?.stop();
  await dovecot?.stop();
  if (dir) await removeTempDir(dir);
});

async function refuseOneLogin(attempt: number): Promise<string> {
  const c = await imaps(gw);
  // A different password each time, so every attempt counts towards the block.
  const answer = taggedLine(await c.command('a', `LOGIN nobody wrong-password-${attempt}`), 'a');
  await c.end();
  return answer;
}

/** One failure as fail2ban sees it: the address and the time (Unix seconds) it read from the line. */
interface Failure {
  host: string;
  time: number;
}

/**
 * Runs the real fail2ban-regex with the shipped filter over `lines` as a log
 * file, in time zone `tz`, and returns the failures it found, in order.
 */
async function fail2banRegex(lines: string[], tz: string): Promise<Failure[]> {
  const log = path.join(dir, `mailgate-${tz.replace(/\W/g, '-')}.log`);
  writeFileSync(log, lines.map((l) => `${l}\n`).join(''));
  // -o row prints one row per matched line: ['<host>', <unix time>, {...}],
  const { code, stdout, stderr } = await run('fail2ban-regex', ['-o', 'row', log, FILTER], { ...process.env, TZ: tz });
  expect(code, stderr).toBe(0);
  return stdout
    .split('\n')
    .filter(Boolean)
    .map((row) => {
      const m = /^\['([^']+)',\s*(\d+(?:\.\d+)?),/.exec(row);
      if (!m) throw new Error(`unexpected fail2ban-regex output: ${row}`);
      return { host: m[1]!, time: Number(m[2]) };
    });
}

function run(command: string, args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', (err) =>
      reject((err as NodeJS.ErrnoException).code === 'ENOENT' ? new Error(`${command} not found: install fail2ban (scripts/install-test-deps.sh)`) : err),
    );
    child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
  });
}

/** What fail2ban must report for these refusal lines: the client address, at the second each line was written. */
function expected(refusals: string[]): Failure[] {
  return refusals.map((line) => ({ host: '127.0.0.1', time: Math.floor(Date.parse((JSON.parse(line) as { time: string }).time) / 1000) }));
}

function logLines(): { all: string[]; refusals: string[] } {
  const all = gw.logText().split('\n').filter(Boolean);
  return { all, refusals: all.filter((l) => REFUSALS.test(l)) };
}

it('matches "login failed" lines, extracts the client address, and matches nothing else', async () => {
  expect(await refuseOneLogin(0)).toMatch(/^a NO \[AUTHENTICATIONFAILED\]/);
  const { all, refusals } = logLines();
  expect(refusals.filter((l) => l.includes('"msg":"login failed"')).length).toBeGreaterThan(0);
  // The lines as written today, levels by name: the filter must not depend on pino's numbers.
  expect(refusals.every((l) => l.startsWith('{"level":"info",'))).toBe(true);
  // The whole log: start-up lines, session lines and successful logins never match.
  expect(all.length).toBeGreaterThan(refusals.length);
  expect(await fail2banRegex(all, 'UTC')).toEqual(expected(refusals));
});

it.each(['Europe/Berlin', 'America/New_York'])('reads the UTC times pino writes as UTC on a host in %s, so failures count as recent', async (tz) => {
  // Catches: datepattern "time":"%%Y-%%m-%%dT%%H:%%M:%%S, which drops the "Z": fail2ban then
  // takes the time for local time, an hour (Berlin) or five (New York) off, and the jail never bans.
  const before = Math.floor(Date.now() / 1000);
  expect(await refuseOneLogin(100)).toMatch(/^a NO /);
  const { all, refusals } = logLines();
  const failures = await fail2banRegex(all, tz);
  expect(failures).toEqual(expected(refusals));
  // The failure just caused is seen as just now, inside any findtime.
  const latest = failures.at(-1)!;
  expect(latest.time).toBeGreaterThanOrEqual(before - 1);
  expect(latest.time).toBeLessThanOrEqual(Math.ceil(Date.now() / 1000));
});

it('matches "login blocked" lines too, so a source that keeps trying while blocked gets banned', async () => {
  // Catches: a filter that stops counting a guesser at mailgate's block threshold.
  for (let attempt = 1; attempt < BLOCK_AFTER; attempt++) await refuseOneLogin(attempt);
  // Blocked attempts beyond the first few of a kind are summarised (src/log/repeated-lines.ts):
  // count attempts, a summary line standing for `repeated` of them.
  const blockedAttempts = () => {
    gw.gateway.services.repeatedLines.flush();
    return logLines()
      .refusals.filter((l) => l.includes('"msg":"login blocked"'))
      .reduce((sum, l) => sum + ((JSON.parse(l) as { repeated?: number }).repeated ?? 1), 0);
  };
  const blockedBefore = blockedAttempts();
  expect(await refuseOneLogin(BLOCK_AFTER)).toMatch(/^a NO \[UNAVAILABLE\]/);
  expect(await refuseOneLogin(BLOCK_AFTER + 1)).toMatch(/^a NO \[UNAVAILABLE\]/);

  expect(blockedAttempts() - blockedBefore).toBe(2);
  const { all, refusals } = logLines();
  // The "temporary block started" line is not a login attempt and names no clientIp for the filter.
  expect(all.some((l) => l.includes('"msg":"temporary block started"'))).toBe(true);
  expect(await fail2banRegex(all, 'UTC')).toEqual(expected(refusals));
});
