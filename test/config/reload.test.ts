/**
 * Issue 13: what a reload may change. Every configuration key is classified
 * as live or needing a restart (a new key must be placed, and documented in
 * docs/configuration.md's "Reloading" section); a changed restart key keeps
 * its running value. And the two ways to configure certificates never meet.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, parseConfig, parseConfigText } from '../../src/config/load.js';
import { leafKeys, LIVE_KEYS, reconcile, RESTART_KEYS } from '../../src/config/reload.js';
import { serverCertificates } from '../../src/config/schema.js';
import { ROOT } from '../support/cli.js';

const defaults = parseConfig({}, 'defaults');
const listed = (key: string, list: readonly string[]) => list.some((entry) => key === entry || key.startsWith(`${entry}.`));

describe('reload classification', () => {
  it('places every key in exactly one of LIVE_KEYS and RESTART_KEYS', () => {
    const keys = leafKeys(defaults as unknown as Record<string, unknown>);
    expect(keys.filter((key) => listed(key, LIVE_KEYS) === listed(key, RESTART_KEYS))).toEqual([]);
  });

  it('names every entry in docs/configuration.md, in the Reloading section', () => {
    const docs = readFileSync(path.join(ROOT, 'docs/configuration.md'), 'utf8');
    const section = docs.split(/^## /m).find((part) => part.startsWith('Reloading'));
    expect(section).toBeDefined();
    expect([...LIVE_KEYS, ...RESTART_KEYS].filter((key) => !section!.includes(`\`${key}\``))).toEqual([]);
  });

  it('applies live keys and keeps the running value of a restart key', () => {
    const next = parseConfig({ policy: { help_url: 'https://help.example.test/' }, limits: { max_bad_commands: 5 }, listen: [{ protocol: 'imap', port: 2993 }], store: { path: 'elsewhere.db' }, web: { reauth_minutes: 3, listen: '' } }, 'next');
    const { config, applied, needRestart } = reconcile(defaults, next);
    expect(applied.sort()).toEqual(['limits.max_bad_commands', 'policy.help_url', 'web.reauth_minutes']);
    expect(needRestart.sort()).toEqual(['listen', 'store.path', 'web.listen']);
    expect(config.policy.help_url).toBe('https://help.example.test/');
    expect(config.limits.max_bad_commands).toBe(5);
    expect(config.web.reauth_minutes).toBe(3);
    expect(config.listen).toEqual(defaults.listen);
    expect(config.store.path).toBe(defaults.store.path);
    expect(config.web.listen).toBe(defaults.web.listen);
  });

  it('reports nothing for an unchanged configuration', () => {
    expect(reconcile(defaults, parseConfig({}, 'again'))).toMatchObject({ applied: [], needRestart: [] });
  });
});

describe('[tls] certificates', () => {
  const refusal = (toml: string) => {
    try {
      parseConfigText(toml, 'test.toml');
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      return (err as Error).message;
    }
    throw new Error('accepted');
  };

  it('serves [tls] cert and key alone when there is no [[tls.certificates]]', () => {
    expect(serverCertificates(defaults.tls)).toEqual([{ cert: '../certs/mailgate.crt', key: '../certs/mailgate.key', names: [] }]);
    const set = parseConfigText('[tls]\ncert = "a.crt"\nkey = "a.key"\n', 't');
    expect(serverCertificates(set.tls)).toEqual([{ cert: 'a.crt', key: 'a.key', names: [] }]);
  });

  it('takes [[tls.certificates]] in order, the first the default, names in lower case', () => {
    const config = parseConfigText('[[tls.certificates]]\ncert = "a.crt"\nkey = "a.key"\n[[tls.certificates]]\ncert = "b.crt"\nkey = "b.key"\nnames = ["Mail.Example.org", "*.example.net"]\n', 't');
    expect(serverCertificates(config.tls)).toEqual([
      { cert: 'a.crt', key: 'a.key', names: [] },
      { cert: 'b.crt', key: 'b.key', names: ['mail.example.org', '*.example.net'] },
    ]);
  });

  it('refuses both forms at once, in one line that says what to do', () => {
    expect(refusal('[tls]\ncert = "a.crt"\n[[tls.certificates]]\ncert = "b.crt"\nkey = "b.key"\n')).toBe(
      'test.toml: tls.cert: not allowed with [[tls.certificates]]: move the pair into the first [[tls.certificates]] entry (the default certificate)',
    );
    expect(refusal('[tls]\nkey = "a.key"\n[[tls.certificates]]\ncert = "b.crt"\nkey = "b.key"\n')).toMatch(/^test\.toml: tls\.key: not allowed with \[\[tls\.certificates\]\]/);
  });

  it('refuses a name given to two certificates, a certificate past the first without names, and a name that is no host name', () => {
    expect(refusal('[[tls.certificates]]\ncert = "a"\nkey = "a"\nnames = ["mail.example.org"]\n[[tls.certificates]]\ncert = "b"\nkey = "b"\nnames = ["MAIL.example.org"]\n')).toBe(
      'test.toml: tls.certificates[1].names: mail.example.org is already a name of tls.certificates[0]',
    );
    expect(refusal('[[tls.certificates]]\ncert = "a"\nkey = "a"\n[[tls.certificates]]\ncert = "b"\nkey = "b"\n')).toMatch(/^test\.toml: tls\.certificates\[1\]\.names: only the first certificate/);
    expect(refusal('[[tls.certificates]]\ncert = "a"\nkey = "a"\nnames = ["mail.*.org"]\n')).toMatch(/^test\.toml: tls\.certificates\[0\]\.names\[0\]: expected a host name/);
  });
});
