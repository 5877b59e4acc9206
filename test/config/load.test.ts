import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { ConfigError, defaultConfigPath, INSTALLED_CONFIG_PATH, loadConfig, PATH_KEYS, parseConfig, parseConfigText } from '../../src/config/load.js';
import { configSchema } from '../../src/config/schema.js';
import { ROOT } from '../support/cli.js';
import { makeTempDir, removeTempDir } from '../support/tmp.js';

let dir = '';
afterEach(async () => {
  if (dir) await removeTempDir(dir);
  dir = '';
});

function errorOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as Error).message;
  }
  throw new Error('expected a ConfigError');
}

describe('configuration', () => {
  it('has the documented defaults', () => {
    const config = parseConfig({}, 'x');
    expect(config.store).toMatchObject({ path: '../data/mailgate.db', key_file: '../data/mailgate.key' });
    expect(config.auth).toMatchObject({ argon2_memory_kib: 19456, argon2_iterations: 2, argon2_parallelism: 1, max_app_passwords: 25 });
  });

  it('the shipped config/mailgate.toml is valid, and keeps the store and certificates in the checkout', () => {
    const shipped = loadConfig(path.join(ROOT, 'config/mailgate.toml'), {});
    expect(shipped.file).toBe(path.join(ROOT, 'config/mailgate.toml'));
    expect(shipped.config.store.path).toBe(path.join(ROOT, 'data/mailgate.db'));
    expect(shipped.config.tls.cert).toBe(path.join(ROOT, 'certs/mailgate.crt'));
  });

  it('reads --config first, then MAILGATE_CONFIG', async () => {
    dir = await makeTempDir('cfg');
    const a = path.join(dir, 'a.toml');
    const b = path.join(dir, 'b.toml');
    writeFileSync(a, '[auth]\nmax_app_passwords = 3\n');
    writeFileSync(b, '[auth]\nmax_app_passwords = 4\n');
    expect(loadConfig(a, { MAILGATE_CONFIG: b }).config.auth.max_app_passwords).toBe(3);
    expect(loadConfig(undefined, { MAILGATE_CONFIG: b }).config.auth.max_app_passwords).toBe(4);
  });

  it('refuses an explicit file that does not exist', () => {
    expect(errorOf(() => loadConfig('/nonexistent/mailgate.toml', {}))).toBe('/nonexistent/mailgate.toml: file not found');
  });

  it.each([
    ['a wrong type', '[auth]\nargon2_iterations = "two"\n', /^f\.toml: auth\.argon2_iterations: .*expected number/],
    ['an unknown key', '[store]\npaht = "x"\n', /^f\.toml: store\.paht: unknown key$/],
    ['an unknown section', '[stroe]\npath = "x"\n', /^f\.toml: stroe: unknown key$/],
    ['a value out of range', '[auth]\nmax_app_passwords = 0\n', /^f\.toml: auth\.max_app_passwords: /],
    ['broken TOML', '[auth\n', /^f\.toml: line 1, column \d+: invalid TOML/],
  ])('names the file, the key and the problem for %s, in one line', (_label, text, pattern) => {
    const message = errorOf(() => parseConfigText(text, 'f.toml'));
    expect(message).toMatch(pattern);
    expect(message).not.toContain('\n');
  });
});

/** Every string key of the schema, as `a.b` (`a[].b` inside arrays of tables). */
function stringKeys(node: Record<string, unknown>, prefix = ''): string[] {
  const keys: string[] = [];
  if (node.type === 'string' && prefix) keys.push(prefix);
  for (const option of [...((node.anyOf as unknown[]) ?? []), ...((node.oneOf as unknown[]) ?? [])]) keys.push(...stringKeys(option as Record<string, unknown>, prefix));
  if (node.items) keys.push(...stringKeys(node.items as Record<string, unknown>, `${prefix}[]`));
  for (const [name, child] of Object.entries((node.properties as Record<string, Record<string, unknown>>) ?? {})) {
    keys.push(...stringKeys(child, prefix ? `${prefix}.${name}` : name));
  }
  return [...new Set(keys)];
}

describe('paths in the configuration', () => {
  it('are taken from the config file\'s folder, not the working directory; absolute ones and unset ones stay', async () => {
    // Catches: paths resolved from the directory the CLI was started in (a second, empty store).
    dir = await makeTempDir('cfg');
    mkdirSync(path.join(dir, 'etc'));
    const file = path.join(dir, 'etc', 'mailgate.toml');
    writeFileSync(
      file,
      `[store]\npath = "db/m.db"\nkey_file = "../state/m.key"\n[tls]\ncert = "/abs/c.pem"\nkey = "k.pem"\n` +
        `[upstream.imap]\nca = "ca.pem"\n[upstream.login]\nmaster_password_file = "secret"\n`,
    );
    const { config } = loadConfig(file, {});
    expect(config.store.path).toBe(path.join(dir, 'etc/db/m.db'));
    expect(config.store.key_file).toBe(path.join(dir, 'state/m.key'));
    expect(config.tls).toMatchObject({ cert: '/abs/c.pem', key: path.join(dir, 'etc/k.pem') });
    expect(config.upstream.imap.ca).toBe(path.join(dir, 'etc/ca.pem'));
    expect(config.upstream.pop3.ca).toBe('');
    expect(config.upstream.login.master_password_file).toBe(path.join(dir, 'etc/secret'));
  });

  it('covers every key named like a path (a new one must join PATH_KEYS in src/config/load.ts)', () => {
    // Catches: a path key added to the schema but still taken from the working directory.
    const notPaths = new Set<string>([]);
    const pathLike = stringKeys(z.toJSONSchema(configSchema, { io: 'input', unrepresentable: 'any' }) as Record<string, unknown>)
      .filter((key) => /(^|[._])(path|file|dir|cert|key|ca|socket)$/.test(key))
      .filter((key) => !notPaths.has(key));
    expect(pathLike.length).toBeGreaterThanOrEqual(7);
    expect(pathLike.filter((key) => !PATH_KEYS.includes(key))).toEqual([]);
  });
});

describe('the default config file', () => {
  it('is the checkout\'s config/mailgate.toml, whatever the working directory', () => {
    expect(defaultConfigPath(ROOT)).toBe(path.join(ROOT, 'config', 'mailgate.toml'));
    expect(loadConfig(undefined, {}).file).toBe(path.join(ROOT, 'config', 'mailgate.toml'));
  });

  it('is /etc/mailgate/mailgate.toml for a package npm installed (in a node_modules folder)', () => {
    expect(defaultConfigPath('/usr/local/lib/node_modules/mailgate')).toBe(INSTALLED_CONFIG_PATH);
    expect(INSTALLED_CONFIG_PATH).toBe('/etc/mailgate/mailgate.toml');
  });

  it('a checkout without it runs on the built-in defaults, with the store and certificates in the checkout', async () => {
    dir = await makeTempDir('cfg');
    const { file, config } = loadConfig(undefined, {}, dir);
    expect(file).toBeNull();
    expect(config.store.path).toBe(path.join(dir, 'data/mailgate.db'));
    expect(config.tls.key).toBe(path.join(dir, 'certs/mailgate.key'));
  });

  it('an installed mailgate without it stops with one line naming it (its built-in paths would point into /etc)', async () => {
    dir = await makeTempDir('cfg');
    const installed = path.join(dir, 'lib', 'node_modules', 'mailgate');
    const message = errorOf(() => loadConfig(undefined, {}, installed));
    expect(message).toMatch(/^\/etc\/mailgate\/mailgate\.toml: file not found \(an installed mailgate reads it by default/);
    expect(message).not.toContain('\n');
    // MAILGATE_CONFIG still wins.
    const own = path.join(dir, 'own.toml');
    writeFileSync(own, '');
    expect(loadConfig(undefined, { MAILGATE_CONFIG: own }, installed).file).toBe(own);
  });
});
