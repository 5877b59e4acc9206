/**
 * A real PostgreSQL for tests, from Debian's `postgresql` package
 * (scripts/install-test-deps.sh): initdb into a temporary folder, the
 * server on a free loopback port, a password-authenticated role `mailgate`
 * that owns the databases it is given, fast settings (fsync off: a crash of
 * a test server loses nothing anyone needs).
 *
 * The server refuses to run as root: when the tests run as root, the folder
 * is handed to `nobody` and initdb and the server run as that user.
 *
 * One server per test file (startPostgres in beforeAll); `createDatabase()`
 * makes a fresh database per test (CREATE DATABASE copies template1: a few
 * milliseconds). `stopServer()`/`startServer()` stop and start the same
 * server on the same port and data, for outage tests; `stop()` kills it and
 * removes the folder.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chownSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { freePort } from './ports.js';
import { waitUntil } from './timing.js';
import { makeTempDir, removeTempDir } from './tmp.js';

/** The role the store connects as, and its password. */
export const PG_USER = 'mailgate';
export const PG_PASSWORD = 'mailgate-test-password';
const SUPERUSER = 'postgres';
const SUPERUSER_PASSWORD = 'postgres-test-password';
/** Debian's `nobody`/`nogroup`: who the server runs as when the tests run as root. */
const NOBODY = 65534;

export interface PostgresHandle {
  port: number;
  dir: string;
  /** A new empty database owned by PG_USER; its URL (password included). */
  createDatabase(): Promise<string>;
  /** A URL of `database` without the password (for password_file / PGPASSWORD tests). */
  urlWithoutPassword(database: string): string;
  /** Runs SQL as the superuser in `database` (test set-up, fault injection, raw reads). */
  admin<T extends pg.QueryResultRow = Record<string, unknown>>(database: string, sql: string, params?: unknown[]): Promise<T[]>;
  /** Stops the server (fast shutdown: connections are ended), keeping its data. */
  stopServer(): Promise<void>;
  /** Starts it again on the same port and data. */
  startServer(): Promise<void>;
  stop(): Promise<void>;
  /** The postmaster's process id while it runs (the bench counts its CPU as its own). */
  pid(): number | null;
}

/** The server's settings for tests: fast, not crash-safe. */
const TEST_SETTINGS: Readonly<Record<string, string>> = {
  fsync: 'off',
  synchronous_commit: 'off',
  full_page_writes: 'off',
  shared_buffers: '16MB',
  max_connections: '200',
  log_min_messages: 'warning',
};

export function postgresBinDir(): string {
  const root = '/usr/lib/postgresql';
  const versions = readdirSync(root)
    .filter((v) => /^\d+$/.test(v))
    .sort((a, b) => Number(b) - Number(a));
  if (versions.length === 0) throw new Error('PostgreSQL is not installed (scripts/install-test-deps.sh installs it)');
  return path.join(root, versions[0]!, 'bin');
}

const asRoot = typeof process.getuid === 'function' && process.getuid() === 0;
const runAs = asRoot ? { uid: NOBODY, gid: NOBODY } : {};

let databases = 0;

/** BIGINT as numbers, as the store reads them (every value a test stores is below 2^53). */
const TYPES = {
  getTypeParser: ((oid: number, format?: 'text' | 'binary') =>
    oid === 20 ? (value: string) => Number(value) : pg.types.getTypeParser(oid, format ?? 'text')) as pg.CustomTypesConfig['getTypeParser'],
};

/** `settings` replace or add to the test settings (the bench asks for a crash-safe server). */
export async function startPostgres(options: { settings?: Record<string, string> } = {}): Promise<PostgresHandle> {
  const settings = { ...TEST_SETTINGS, ...options.settings };
  const bin = postgresBinDir();
  const dir = await makeTempDir('pg');
  const data = path.join(dir, 'data');
  const pwfile = path.join(dir, 'pw');
  writeFileSync(pwfile, `${SUPERUSER_PASSWORD}\n`, { mode: 0o600 });
  if (asRoot) {
    chownSync(dir, NOBODY, NOBODY);
    chownSync(pwfile, NOBODY, NOBODY);
  }
  const init = spawnSync(
    path.join(bin, 'initdb'),
    ['-D', data, '-U', SUPERUSER, `--pwfile=${pwfile}`, '--auth=scram-sha-256', '--no-sync', '--no-instructions', '-E', 'UTF8', '--locale=C.UTF-8'],
    { ...runAs, encoding: 'utf8' },
  );
  if (init.status !== 0) throw new Error(`initdb failed: ${init.stderr}`);

  const port = await freePort();
  let server: ChildProcess | null = null;
  let output = '';
  const superuser = (database: string) => new pg.Client({ host: '127.0.0.1', port, user: SUPERUSER, password: SUPERUSER_PASSWORD, database, types: TYPES });

  const startServer = async () => {
    output = '';
    server = spawn(
      path.join(bin, 'postgres'),
      ['-D', data, '-p', String(port), '-k', dir, '-c', 'listen_addresses=127.0.0.1', ...Object.entries(settings).flatMap(([name, value]) => ['-c', `${name}=${value}`])],
      { ...runAs, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    server.stdout!.on('data', (chunk) => (output += String(chunk)));
    server.stderr!.on('data', (chunk) => (output += String(chunk)));
    const started = server;
    await waitUntil(
      async () => {
        if (started.exitCode !== null) throw new Error(`postgres exited: ${output}`);
        const client = superuser('postgres');
        try {
          await client.connect();
          await client.end();
          return true;
        } catch {
          await client.end().catch(() => undefined);
          return false;
        }
      },
      'PostgreSQL to accept connections',
      30_000,
    );
  };

  const stopServer = async () => {
    const running = server;
    server = null;
    if (!running || running.exitCode !== null) return;
    const exited = new Promise((resolve) => running.once('exit', resolve));
    running.kill('SIGINT');
    await exited;
  };

  const admin = async <T extends pg.QueryResultRow>(database: string, sql: string, params?: unknown[]): Promise<T[]> => {
    const client = superuser(database);
    await client.connect();
    try {
      return (await client.query<T>(sql, params)).rows;
    } finally {
      await client.end();
    }
  };

  await startServer();
  await admin('postgres', `CREATE ROLE ${PG_USER} LOGIN PASSWORD '${PG_PASSWORD}'`);

  return {
    port,
    dir,
    async createDatabase() {
      const name = `mg_${process.pid}_${++databases}`;
      await admin('postgres', `CREATE DATABASE ${name} OWNER ${PG_USER}`);
      return `postgres://${PG_USER}:${PG_PASSWORD}@127.0.0.1:${port}/${name}`;
    },
    urlWithoutPassword: (database) => `postgres://${PG_USER}@127.0.0.1:${port}/${database}`,
    admin,
    pid: () => (server && server.exitCode === null ? (server.pid ?? null) : null),
    stopServer,
    startServer,
    async stop() {
      const running = server;
      server = null;
      if (running && running.exitCode === null) {
        const exited = new Promise((resolve) => running.once('exit', resolve));
        running.kill('SIGQUIT');
        await exited;
      }
      await removeTempDir(dir);
    },
  };
}

/** The database name of a URL made by createDatabase. */
export function databaseOf(url: string): string {
  return new URL(url).pathname.slice(1);
}
