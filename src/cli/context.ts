/**
 * What every CLI command needs: the configuration named by --config (or
 * MAILGATE_CONFIG, or the default) and the store it points at.
 */
import type { Command } from 'commander';
import { loadConfig, type LoadedConfig } from '../config/load.js';
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

/** Opens the store for the duration of `work`, closing it whatever happens. */
export async function withStore<T>(command: Command, work: (store: Store, loaded: LoadedConfig) => T | Promise<T>): Promise<T> {
  const loaded = loadCommandConfig(command);
  const { store } = await openStore(loaded.config, { role: 'cli', log: silentLogger() });
  try {
    return await work(store, loaded);
  } finally {
    await store.close();
  }
}
