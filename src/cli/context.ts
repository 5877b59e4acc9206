/**
 * What every CLI command needs: the configuration named by --config (or
 * MAILGATE_CONFIG, or the default) and the store it points at.
 */
import { existsSync } from 'node:fs';
import type { Command } from 'commander';
import { configPath, loadConfig, type LoadedConfig } from '../config/load.js';
import { ErrorCodes, MailgateError } from '../errors.js';
import { silentLogger } from '../log/logger.js';
import { openStore } from '../store/open.js';
import type { Store } from '../store/store.js';

export interface GlobalOptions {
  config?: string;
  json?: boolean;
}

export function globalOptions(command: Command): GlobalOptions {
  return command.optsWithGlobals<GlobalOptions>();
}

export function loadCommandConfig(command: Command): LoadedConfig {
  return loadConfig(globalOptions(command).config);
}

/**
 * Refuses a command on a store that is not there, in one line naming the
 * database and the config file: a command run with the wrong config (or, in
 * the past, from another folder) must not start an empty store of its own.
 */
export function requireStore(loaded: LoadedConfig): void {
  const file = configPath(loaded.config.store.path);
  if (existsSync(file)) return;
  const source = loaded.file ? `store.path in ${loaded.file}` : 'the built-in store.path; no config file';
  throw new MailgateError(ErrorCodes.DB_UNAVAILABLE, `no store at ${file} (${source}); \`mailgate account add\` creates one, or name another config with --config`);
}

/**
 * Opens the store for the duration of `work`, closing it whatever happens.
 * Only `create: true` (`account add`) may create a missing store; every other
 * command refuses (requireStore).
 */
export async function withStore<T>(
  command: Command,
  work: (store: Store, loaded: LoadedConfig) => T | Promise<T>,
  options: { create?: boolean } = {},
): Promise<T> {
  const loaded = loadCommandConfig(command);
  if (!options.create) requireStore(loaded);
  const { store } = openStore(loaded.config, { role: 'cli', log: silentLogger(), mustExist: !options.create });
  try {
    return await work(store, loaded);
  } finally {
    await store.close();
  }
}
