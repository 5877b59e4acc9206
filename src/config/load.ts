/**
 * Finding, reading and validating the configuration file.
 *
 * A bad file must produce one line an operator can act on: which file, which
 * key, what is wrong. That line is the message of a ConfigError.
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseToml, TomlError } from 'smol-toml';
import type { z } from 'zod';
import { configSchema, type Config } from './schema.js';

/** The package's folder: a checkout, or where npm installed it (…/node_modules/mailgate). */
export const PACKAGE_ROOT = fileURLToPath(new URL('../../', import.meta.url));

/** What an installed mailgate reads when not told otherwise (systemd's ConfigurationDirectory=mailgate). */
export const INSTALLED_CONFIG_PATH = '/etc/mailgate/mailgate.toml';

/**
 * Installed, or a checkout: npm puts every package it installs (globally or
 * not) in a node_modules folder, and a checkout never lives in one. A
 * checkout installed with `npm install -g .` or `npm link` is a symlink whose
 * real path (the one Node loads modules from) is the checkout, so it stays one.
 */
export function isInstalled(root: string = PACKAGE_ROOT): boolean {
  return root.split(path.sep).includes('node_modules');
}

/** The file read without --config or MAILGATE_CONFIG: the checkout's own, whatever the working directory, or /etc's. */
export function defaultConfigPath(root: string = PACKAGE_ROOT): string {
  return isInstalled(root) ? INSTALLED_CONFIG_PATH : path.join(root, 'config', 'mailgate.toml');
}

/**
 * Every key that holds a file's path, resolved from the config file's folder.
 * `a[].b` is key b of every entry of the array a. A new path key must be
 * added here: test/config/load.test.ts finds keys named like paths in the
 * schema that are missing.
 */
export const PATH_KEYS: readonly string[] = [
  'store.path',
  'store.key_file',
  'store.password_file',
  'tls.cert',
  'tls.key',
  'tls.certificates[].cert',
  'tls.certificates[].key',
  'upstream.imap.ca',
  'upstream.pop3.ca',
  'upstream.login.master_password_file',
  'control.socket',
];

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

export interface LoadedConfig {
  /** Absolute path of the file read, or null when the built-in defaults are used. */
  file: string | null;
  config: Config;
}

/**
 * Which file to read: the --config option, then MAILGATE_CONFIG, then the
 * default (defaultConfigPath). Only a checkout's default may be absent (the
 * built-in defaults equal it), so a typo in an explicit path is an error
 * rather than a silent fallback, and so is an installed mailgate without
 * /etc/mailgate/mailgate.toml (its built-in paths would point into /etc).
 */
export function resolveConfigPath(
  option: string | undefined,
  env: NodeJS.ProcessEnv = process.env,
  root: string = PACKAGE_ROOT,
): { file: string; explicit: boolean; optional: boolean } {
  if (option) return { file: path.resolve(option), explicit: true, optional: false };
  const fromEnv = env.MAILGATE_CONFIG;
  if (fromEnv) return { file: path.resolve(fromEnv), explicit: true, optional: false };
  return { file: defaultConfigPath(root), explicit: false, optional: !isInstalled(root) };
}

/**
 * Reads and validates the configuration; every path key in the result is
 * absolute, taken from the config file's folder (for the built-in defaults:
 * the folder the default file would be in).
 */
export function loadConfig(option?: string, env: NodeJS.ProcessEnv = process.env, root: string = PACKAGE_ROOT): LoadedConfig {
  const { file, explicit, optional } = resolveConfigPath(option, env, root);
  if (!existsSync(file)) {
    if (explicit) throw new ConfigError(`${file}: file not found`);
    if (!optional) throw new ConfigError(`${file}: file not found (an installed mailgate reads it by default: create it, see docs/operations.md, or name another file with --config)`);
    return { file: null, config: resolveConfigPaths(parseConfig({}, '(built-in defaults)'), path.dirname(file)) };
  }
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`${file}: cannot read: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  return { file, config: resolveConfigPaths(parseConfigText(text, file), path.dirname(file)) };
}

/** A copy of `config` whose path keys (PATH_KEYS) are absolute, relative ones taken from `baseDir`; empty ones (unset) stay empty. */
export function resolveConfigPaths(config: Config, baseDir: string): Config {
  const copy = structuredClone(config);
  for (const key of PATH_KEYS) {
    updateAt(copy, key.split('.'), (value) => (typeof value === 'string' && value !== '' ? path.resolve(baseDir, value) : value));
  }
  return copy;
}

/** Applies `update` to the value at `segments` (`name[]`: every entry of the array `name`), where it exists. */
function updateAt(node: unknown, segments: string[], update: (value: unknown) => unknown): void {
  const [head, ...rest] = segments;
  if (head === undefined || typeof node !== 'object' || node === null) return;
  const table = node as Record<string, unknown>;
  const key = head.endsWith('[]') ? head.slice(0, -2) : head;
  if (!(key in table)) return;
  if (head.endsWith('[]')) {
    const entries = table[key];
    if (Array.isArray(entries)) for (const entry of entries) updateAt(entry, rest, update);
  } else if (rest.length === 0) {
    table[key] = update(table[key]);
  } else {
    updateAt(table[key], rest, update);
  }
}

export function parseConfigText(text: string, label: string): Config {
  let raw: unknown;
  try {
    raw = parseToml(text);
  } catch (err) {
    if (err instanceof TomlError) {
      throw new ConfigError(`${label}: line ${err.line}, column ${err.column}: invalid TOML: ${firstLine(err.message)}`);
    }
    throw new ConfigError(`${label}: invalid TOML: ${String(err)}`);
  }
  return parseConfig(raw, label);
}

export function parseConfig(raw: unknown, label: string): Config {
  const result = configSchema.safeParse(raw);
  if (result.success) return result.data;
  throw new ConfigError(`${label}: ${describeIssue(result.error.issues[0])}`);
}

function describeIssue(issue: z.core.$ZodIssue | undefined): string {
  if (!issue) return 'invalid configuration';
  const key = formatPath(issue.path);
  if (issue.code === 'unrecognized_keys') {
    const keys = issue.keys.map((k) => (key ? `${key}.${k}` : k)).join(', ');
    return `${keys}: unknown key`;
  }
  return `${key || '(top level)'}: ${issue.message}`;
}

function formatPath(segments: readonly PropertyKey[]): string {
  let out = '';
  for (const segment of segments) {
    if (typeof segment === 'number') out += `[${segment}]`;
    else out += out ? `.${String(segment)}` : String(segment);
  }
  return out;
}

function firstLine(message: string): string {
  return message.split('\n')[0] ?? message;
}

/**
 * A path from the configuration, absolute. loadConfig has already taken
 * relative ones from the config file's folder; a Config built in code
 * (tests) has its relative paths taken from the working directory.
 */
export function configPath(value: string): string {
  return path.resolve(value);
}
