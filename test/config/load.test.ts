import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ConfigError, loadConfig, parseConfig, parseConfigText } from '../../src/config/load.js';
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
    expect(config.store).toMatchObject({ path: 'data/mailgate.db', key_file: 'data/mailgate.key' });
    expect(config.auth).toMatchObject({ argon2_memory_kib: 19456, argon2_iterations: 2, argon2_parallelism: 1, max_app_passwords: 25 });
  });

  it('the shipped config/mailgate.toml is valid', () => {
    const shipped = loadConfig(path.resolve('config/mailgate.toml'), {});
    expect(shipped.file).toBe(path.resolve('config/mailgate.toml'));
    expect(shipped.config.store.path).toBe('data/mailgate.db');
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
