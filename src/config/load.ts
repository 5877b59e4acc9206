/**
 * Finding, reading and validating the configuration file.
 *
 * A bad file must produce one line an operator can act on: which file, which
 * key, what is wrong. That line is the message of a ConfigError.
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { parse as parseToml, TomlError } from 'smol-toml';
import type { z } from 'zod';
import { configSchema, type Config } from './schema.js';

export const DEFAULT_CONFIG_PATH = 'config/mailgate.toml';

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
 * default. Only the default may be absent (the built-in defaults equal it), so a
 * typo in an explicit path is an error rather than a silent fallback.
 */
export function resolveConfigPath(option: string | undefined, env: NodeJS.ProcessEnv = process.env): { file: string; explicit: boolean } {
  if (option) return { file: path.resolve(option), explicit: true };
  const fromEnv = env.MAILGATE_CONFIG;
  if (fromEnv) return { file: path.resolve(fromEnv), explicit: true };
  return { file: path.resolve(DEFAULT_CONFIG_PATH), explicit: false };
}

export function loadConfig(option?: string, env: NodeJS.ProcessEnv = process.env): LoadedConfig {
  const { file, explicit } = resolveConfigPath(option, env);
  if (!existsSync(file)) {
    if (explicit) throw new ConfigError(`${file}: file not found`);
    return { file: null, config: parseConfig({}, '(built-in defaults)') };
  }
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`${file}: cannot read: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  return { file, config: parseConfigText(text, file) };
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

/** Resolves a path from the configuration: relative paths are taken from the working directory. */
export function configPath(value: string): string {
  return path.resolve(value);
}
