/**
 * The fail2ban filter shipped in config/ must match the lines a running
 * gateway writes for refused logins, and pick out the client address.
 * fail2ban's expressions are Python regular expressions, so Python checks them.
 *
 * It matches attempts refused by mailgate's own temporary block too: a source
 * that keeps trying while blocked is exactly what the firewall ban is for, and
 * without those lines it would stop counting at the block threshold.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { ROOT } from '../support/cli.js';
import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { startGateway, type GatewayHandle } from '../support/gateway.js';
import { imaps, taggedLine } from '../support/imap-client.js';
import { runPython } from '../support/python.js';

/** Failures from one address before mailgate blocks it (low, so the test reaches the block quickly). */
const BLOCK_AFTER = 2;
const REFUSALS = /"msg":"login (?:failed|blocked)"/;

let dovecot: DovecotHandle;
let gw: GatewayHandle;
beforeAll(async () => {
  dovecot = await startDovecot();
  gw = await startGateway(dovecot, { config: { limits: { ip_block_after: BLOCK_AFTER } } });
});
afterAll(async () => {
  await gw?.stop();
  await dovecot?.stop();
});

async function refuseOneLogin(attempt: number): Promise<string> {
  const c = await imaps(gw);
  // A different password each time, so every attempt counts towards the block.
  const answer = taggedLine(await c.command('a', `LOGIN nobody wrong-password-${attempt}`), 'a');
  await c.end();
  return answer;
}

interface FilterResult {
  hosts: string[];
  others: string[];
  datepattern: string;
}

/** Applies the shipped filter to `lines` (which must all match) and `others` (which must not). */
async function applyFilter(lines: string[], others: string[]): Promise<FilterResult> {
  const filter = readFileSync(path.join(ROOT, 'config/fail2ban/filter.d/mailgate.conf'), 'utf8');
  const result = await runPython(
    `
import re
failregex = re.search(r'^failregex = (.*)$', INPUT['filter'], re.M).group(1)
# fail2ban's <HOST> stands for an address; a simple stand-in is enough here.
pattern = re.compile(failregex.replace('<HOST>', r'(?P<host>[0-9a-fA-F.:]+)'))
datepattern = re.search(r'^datepattern = (.*)$', INPUT['filter'], re.M).group(1).replace('%%', '%')
hosts = [m.group('host') for m in (pattern.search(l) for l in INPUT['lines']) if m]
others = [l for l in INPUT['others'] if pattern.search(l)]
emit({'hosts': hosts, 'others': others, 'datepattern': datepattern})
`,
    { filter, lines, others },
  );
  expect(result.code, result.stderr).toBe(0);
  return result.json as FilterResult;
}

function logLinesSplit(): { refusals: string[]; others: string[] } {
  const all = gw.logText().split('\n').filter(Boolean);
  return { refusals: all.filter((l) => REFUSALS.test(l)), others: all.filter((l) => !REFUSALS.test(l)) };
}

it('matches "login failed" lines and extracts the client address', async () => {
  expect(await refuseOneLogin(0)).toMatch(/^a NO \[AUTHENTICATIONFAILED\]/);
  const { refusals, others } = logLinesSplit();
  const lines = refusals.filter((l) => l.includes('"msg":"login failed"'));
  expect(lines.length).toBeGreaterThan(0);
  const json = await applyFilter(lines, others);
  expect(json.hosts).toEqual(lines.map(() => '127.0.0.1'));
  // Successful logins, session lines and start-up lines never match.
  expect(json.others).toEqual([]);
  expect(json.datepattern).toBe('"time":"%Y-%m-%dT%H:%M:%S');
  expect(lines[0]).toMatch(/"time":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d/);
});

it('matches "login blocked" lines too, so a source that keeps trying while blocked gets banned', async () => {
  // Catches: a filter that stops counting a guesser at mailgate's block threshold.
  for (let attempt = 1; attempt < BLOCK_AFTER; attempt++) await refuseOneLogin(attempt);
  expect(await refuseOneLogin(BLOCK_AFTER)).toMatch(/^a NO \[UNAVAILABLE\]/);
  expect(await refuseOneLogin(BLOCK_AFTER + 1)).toMatch(/^a NO \[UNAVAILABLE\]/);

  const { refusals, others } = logLinesSplit();
  const blocked = refusals.filter((l) => l.includes('"msg":"login blocked"'));
  expect(blocked).toHaveLength(2);
  const json = await applyFilter(refusals, others);
  expect(json.hosts).toEqual(refusals.map(() => '127.0.0.1'));
  // The "temporary block started" line names no client address field the filter reads, and is not a login.
  expect(others.some((l) => l.includes('"msg":"temporary block started"'))).toBe(true);
  expect(json.others).toEqual([]);
});
