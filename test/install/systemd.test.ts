/**
 * config/systemd/mailgate.service, checked by the real systemd-analyze
 * (scripts/install-test-deps.sh installs it): `verify` finds nothing wrong,
 * and `security --offline=true` rates it "OK" or better. The score is
 * printed, and docs/operations.md must state the same one.
 */
import { execFile } from 'node:child_process';
import { mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';
import { BIN, ROOT } from '../support/cli.js';
import { makeTempDir, removeTempDir } from '../support/tmp.js';

const run = promisify(execFile);
const UNIT = path.join(ROOT, 'config', 'systemd', 'mailgate.service');
const INSTALLED_BIN = '/usr/local/bin/mailgate';

/**
 * systemd's scale (src/analyze/analyze-security.c, systemd 252): an overall
 * exposure of 10.0 DANGEROUS, from 9.0 UNSAFE, from 7.5 EXPOSED, from 5.0
 * MEDIUM, from 1.0 OK, from 0.1 SAFE, 0.0 PERFECT.
 */
const OK_OR_BETTER = ['OK', 'SAFE', 'PERFECT'];

let dir = '';
let unit = '';
const text = readFileSync(UNIT, 'utf8');

beforeAll(async () => {
  dir = await makeTempDir('systemd');
  // verify wants ExecStart's binary to exist: a copy of the unit whose only
  // change is that path, pointing at this checkout's real mailgate.
  mkdirSync(path.join(dir, 'bin'));
  const bin = path.join(dir, 'bin', 'mailgate');
  symlinkSync(BIN, bin);
  unit = path.join(dir, 'mailgate.service');
  expect(text).toContain(`ExecStart=${INSTALLED_BIN} serve --config /etc/mailgate/mailgate.toml\n`);
  writeFileSync(unit, text.replace(`ExecStart=${INSTALLED_BIN} `, `ExecStart=${bin} `));
});
afterAll(async () => {
  if (dir) await removeTempDir(dir);
});

/** The unit's settings as key -> values (comments and sections dropped). */
function settings(): Map<string, string[]> {
  const map = new Map<string, string[]>();
  for (const line of text.split('\n')) {
    const match = /^([A-Za-z]+)=(.*)$/.exec(line.trim());
    if (match) map.set(match[1]!, [...(map.get(match[1]!) ?? []), match[2]!]);
  }
  return map;
}

describe('config/systemd/mailgate.service', () => {
  it('passes `systemd-analyze verify`', async () => {
    // Exit 0, and nothing said about this unit (other units it names, dovecot.service say, are not ours to judge).
    const { stdout, stderr } = await run('systemd-analyze', ['verify', unit], { cwd: dir });
    expect(`${stdout}${stderr}`.split('\n').filter((line) => line.includes('mailgate'))).toEqual([]);
  });

  it('is rated "OK" or better by `systemd-analyze security --offline=true`', async () => {
    // Catches: a hardening line dropped (each costs 0.1 to 0.5 of exposure), or one that systemd no longer knows.
    const { stdout } = await run('systemd-analyze', ['security', '--offline=true', '--no-pager', unit], { cwd: dir });
    const match = /Overall exposure level for mailgate\.service: (\d+\.\d) (\w+)/.exec(stdout);
    expect(match, stdout).not.toBeNull();
    const [, score, rating] = match!;
    console.log(`systemd-analyze security: mailgate.service exposure ${score} ${rating}`);
    expect(OK_OR_BETTER, `${score} ${rating}`).toContain(rating);
    expect(Number(score)).toBeLessThan(5);
    const docs = readFileSync(path.join(ROOT, 'docs', 'operations.md'), 'utf8');
    expect(docs, 'docs/operations.md states the current score').toContain(`exposure ${score} ${rating}`);
  });

  it('runs as the static service user with its state and config folders, binds 993/995 without root, reloads with SIGHUP', () => {
    const s = settings();
    expect(s.get('User')).toEqual(['mailgate']);
    expect(s.get('DynamicUser')).toBeUndefined();
    expect(s.get('StateDirectory')).toEqual(['mailgate']);
    expect(s.get('ConfigurationDirectory')).toEqual(['mailgate']);
    expect(s.get('AmbientCapabilities')).toEqual(['CAP_NET_BIND_SERVICE']);
    expect(s.get('CapabilityBoundingSet')).toEqual(['CAP_NET_BIND_SERVICE']);
    expect(s.get('ExecReload')).toEqual(['/bin/kill -HUP $MAINPID']);
    expect(s.get('UMask')).toEqual(['0077']);
    // V8's JIT needs W+X memory: the setting would stop Node.js at start-up.
    expect(s.get('MemoryDenyWriteExecute')).toBeUndefined();
  });

  it('gives the process at least two descriptors per session of limits.max_connections, with room to spare', async () => {
    const { LIMIT_DEFAULTS } = await import('../../src/config/limits.js');
    const nofile = Number(settings().get('LimitNOFILE')?.[0]);
    expect(nofile).toBeGreaterThanOrEqual(2 * LIMIT_DEFAULTS.max_connections + 1024);
  });

  it('the sysusers.d snippet creates that user, with /var/lib/mailgate as its home and no shell', () => {
    const sysusers = readFileSync(path.join(ROOT, 'config', 'systemd', 'mailgate.sysusers.conf'), 'utf8');
    expect(sysusers).toMatch(/^u mailgate - "[^"]+" \/var\/lib\/mailgate \/usr\/sbin\/nologin$/m);
  });
});

describe('the installed layout in docs/operations.md', () => {
  it('its /etc/mailgate/mailgate.toml is valid, with absolute paths: the store in the StateDirectory, the rest in /etc/mailgate', () => {
    // Catches: an example an operator copies that fails to load, or whose store lands where ProtectSystem=strict forbids writing.
    const docs = readFileSync(path.join(ROOT, 'docs', 'operations.md'), 'utf8');
    const install = docs.split(/^## /m).find((part) => part.startsWith('Install on Debian'))!;
    const toml = /```toml\n([\s\S]*?)```/.exec(install)?.[1];
    expect(toml).toBeDefined();
    const config = parseConfigText(toml!, 'docs/operations.md');
    expect(config.store.path).toBe('/var/lib/mailgate/mailgate.db');
    expect(config.store.key_file).toBe('/var/lib/mailgate/mailgate.key');
    for (const file of [config.tls.cert, config.tls.key, config.upstream.imap.ca, config.upstream.pop3.ca, config.upstream.login.master_password_file]) {
      expect(file).toMatch(/^\/etc\/mailgate\//);
    }
    expect(config.listen.map((l) => l.port)).toEqual([993, 995]);
  });
});
