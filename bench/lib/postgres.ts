/**
 * The PostgreSQL server behind the bench's second mailgate: the tests' real
 * PostgreSQL (test/support/postgres.ts: initdb in a temp folder, loopback,
 * an unprivileged user), but crash-safe instead of the tests' fast settings,
 * and its store filled from the SQLite one by `mailgate store copy`.
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { postgresBinDir, startPostgres, type PostgresHandle } from '../../test/support/postgres.js';
import { ROOT } from './mailgate.js';

/**
 * The server's settings for the bench, over the tests' (which turn fsync
 * off). PostgreSQL's defaults, crash-safe, except synchronous_commit: the
 * SQLite store runs WAL with synchronous = NORMAL, which does not wait for
 * the disk at a commit either (both can lose the last commits in a crash,
 * neither is corrupted by one). docs/benchmarks.md says more.
 */
export const BENCH_POSTGRES_SETTINGS: Readonly<Record<string, string>> = {
  fsync: 'on',
  full_page_writes: 'on',
  synchronous_commit: 'off',
  shared_buffers: '128MB',
};

export function postgresAvailable(): { ok: true; bin: string } | { ok: false; why: string } {
  let bin: string;
  try {
    bin = postgresBinDir();
  } catch (err) {
    return { ok: false, why: `no PostgreSQL server under /usr/lib/postgresql (Debian package postgresql; scripts/install-test-deps.sh installs it): ${(err as Error).message}` };
  }
  for (const tool of ['initdb', 'postgres']) {
    if (!existsSync(path.join(bin, tool))) return { ok: false, why: `${path.join(bin, tool)} not found (Debian package postgresql)` };
  }
  return { ok: true, bin };
}

export function postgresVersion(): string | null {
  const found = postgresAvailable();
  if (!found.ok) return null;
  try {
    return execFileSync(path.join(found.bin, 'postgres'), ['--version'], { encoding: 'utf8' }).trim().replace(/^postgres \(PostgreSQL\)\s*/, '');
  } catch {
    return null;
  }
}

export interface BenchPostgres {
  server: PostgresHandle;
  /** The store's database (URL with the password, as mailgate's config holds it). */
  url: string;
  settings: Record<string, string>;
}

/** Starts the server with the bench settings (and `extra` over them) and makes an empty database for the store. */
export async function startBenchPostgres(extra: Record<string, string>): Promise<BenchPostgres> {
  const settings = { ...BENCH_POSTGRES_SETTINGS, ...extra };
  const server = await startPostgres({ settings });
  try {
    return { server, url: await server.createDatabase(), settings };
  } catch (err) {
    await server.stop();
    throw err;
  }
}

/**
 * Fills the empty PostgreSQL store from the seeded SQLite one with the CLI
 * an administrator moving a deployment uses: every account and app password
 * (the same hashes, so the same passwords log in through both gateways).
 */
export function copyStore(sqliteConfig: string, url: string): string {
  return execFileSync(process.execPath, [path.join(ROOT, 'bin', 'mailgate.js'), '--config', sqliteConfig, 'store', 'copy', '--to', url], {
    cwd: path.dirname(sqliteConfig),
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', LANG: 'C' },
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}
