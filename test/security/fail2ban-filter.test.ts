/**
 * The fail2ban filter shipped in config/ must match the lines a running
 * gateway writes for refused logins, and pick out the client address.
 * fail2ban's expressions are Python regular expressions, so Python checks them.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { ROOT } from '../support/cli.js';
import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { startGateway, type GatewayHandle } from '../support/gateway.js';
import { imaps, taggedLine } from '../support/imap-client.js';
import { runPython } from '../support/python.js';

let dovecot: DovecotHandle;
let gw: GatewayHandle;
beforeAll(async () => {
  dovecot = await startDovecot();
  gw = await startGateway(dovecot);
});
afterAll(async () => {
  await gw?.stop();
  await dovecot?.stop();
});

async function failOneLogin(): Promise<void> {
  const c = await imaps(gw);
  expect(taggedLine(await c.command('a', 'LOGIN nobody wrong-password'), 'a')).toMatch(/^a NO /);
  await c.end();
}

it('matches "login failed" lines and extracts the client address', async () => {
  await failOneLogin();
  const lines = gw.logText().split('\n').filter((l) => l.includes('"msg":"login failed"'));
  expect(lines.length).toBeGreaterThan(0);
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
    { filter, lines, others: gw.logText().split('\n').filter((l) => l && !l.includes('"msg":"login failed"')) },
  );
  expect(result.code, result.stderr).toBe(0);
  const json = result.json as { hosts: string[]; others: string[]; datepattern: string };
  expect(json.hosts).toEqual(lines.map(() => '127.0.0.1'));
  // Successful logins, session lines and start-up lines never match.
  expect(json.others).toEqual([]);
  expect(json.datepattern).toBe('"time":"%Y-%m-%dT%H:%M:%S');
  expect(lines[0]).toMatch(/"time":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d/);
});
