/**
 * The package installs without its dev dependencies (issue 13), for real:
 * `npm ci --omit=dev` in a fresh clone builds dist/ and runs; the `npm pack`
 * tarball carries dist/, web/, config/ and bin/; a global install of it into
 * a temporary prefix runs the CLI and serves the self-service page.
 *
 * Slow by nature (npm, tsc, native modules): one file, run once, every step
 * bounded. npm's cache is shared (--prefer-offline). This machine cannot
 * reach GitHub, where better-sqlite3's install downloads its binary (else it
 * compiles SQLite: minutes); the binary the checkout built is handed to that
 * install as a local prebuild, which is what the download would give.
 */
import { execFile, spawn } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ROOT } from '../support/cli.js';
import { waitUntil } from '../support/timing.js';
import { makeTempDir, removeTempDir } from '../support/tmp.js';

const run = promisify(execFile);
const isCheckout = existsSync(path.join(ROOT, '.git'));
const VERSION = (JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
/** Each npm step; a native compile of SQLite (no prebuild) fits too. */
const STEP_MS = 300_000;

let dir = '';
let clone = '';
let prefix = '';
let prebuilds = '';
let tarball = '';

/**
 * The environment of a nested npm: without the npm_* variables of an outer
 * `npm test` (npm_config_local_prefix and friends would point it back at this
 * checkout), without this checkout's node_modules/.bin on PATH (`npx vitest`
 * puts it there: its tsc would build a clone that has none), with the local
 * prebuild.
 */
function npmEnv(): NodeJS.ProcessEnv {
  const env = Object.fromEntries(Object.entries(process.env).filter(([key]) => !/^npm_/i.test(key)));
  const PATH = (process.env.PATH ?? '')
    .split(path.delimiter)
    .filter((entry) => !entry.split(path.sep).includes('node_modules'))
    .join(path.delimiter);
  return { ...env, PATH, npm_config_better_sqlite3_local_prebuilds: prebuilds, npm_config_fund: 'false', npm_config_audit: 'false', npm_config_update_notifier: 'false' };
}

async function npm(args: string[], cwd: string): Promise<string> {
  try {
    const { stdout } = await run('npm', [...args, '--prefer-offline', '--no-progress'], { cwd, env: npmEnv(), timeout: STEP_MS, maxBuffer: 64 * 1024 * 1024 });
    return stdout;
  } catch (err) {
    const { stdout, stderr } = err as { stdout?: string; stderr?: string };
    throw new Error(`npm ${args.join(' ')} failed: ${String(err)}\n${stdout ?? ''}\n${stderr ?? ''}`.slice(0, 8000));
  }
}

/** A fresh clone of this checkout: its tracked files (as they are now) and new ones not ignored; no node_modules, dist/ or data/. */
async function freshClone(target: string): Promise<void> {
  const { stdout } = await run('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], { cwd: ROOT, maxBuffer: 16 * 1024 * 1024 });
  for (const file of stdout.split('\0').filter(Boolean)) {
    const from = path.join(ROOT, file);
    if (!existsSync(from)) continue; // deleted in the working tree
    mkdirSync(path.dirname(path.join(target, file)), { recursive: true });
    cpSync(from, path.join(target, file));
  }
}

/** better-sqlite3's binary from this checkout, named and packed as its GitHub release asset, for prebuild-install's local lookup. */
async function seedPrebuild(target: string): Promise<void> {
  const pkg = path.join(ROOT, 'node_modules', 'better-sqlite3');
  if (!existsSync(path.join(pkg, 'build', 'Release', 'better_sqlite3.node'))) return; // then it compiles
  const { version } = JSON.parse(readFileSync(path.join(pkg, 'package.json'), 'utf8')) as { version: string };
  const asset = `better-sqlite3-v${version}-node-v${process.versions.modules}-${process.platform}-${process.arch}.tar.gz`;
  await run('tar', ['czf', path.join(target, asset), '-C', pkg, 'build/Release/better_sqlite3.node']);
}

async function cli(bin: string, args: string[], cwd: string): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(bin, args, { cwd, env: { ...npmEnv(), MAILGATE_CONFIG: '' }, timeout: 30_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const { code, stdout, stderr } = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof code === 'number' ? code : -1, stdout: stdout ?? '', stderr: stderr ?? '' };
  }
}

function get(url: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    https
      .get(url, { rejectUnauthorized: false }, (res) => {
        let body = '';
        res.on('data', (d: Buffer) => (body += d.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      })
      .on('error', reject);
  });
}

beforeAll(async () => {
  if (!isCheckout) return;
  dir = await makeTempDir('install');
  clone = path.join(dir, 'clone');
  prefix = path.join(dir, 'prefix');
  prebuilds = path.join(dir, 'prebuilds');
  mkdirSync(prebuilds);
  await freshClone(clone);
  await seedPrebuild(prebuilds);
});
afterAll(async () => {
  if (dir) await removeTempDir(dir);
});

describe.skipIf(!isCheckout)('installing mailgate without dev dependencies (needs a git checkout: the test packs its files)', { timeout: STEP_MS + 60_000 }, () => {
  it('`npm ci --omit=dev` in a fresh clone builds dist/, installs no dev dependency, and the CLI runs', async () => {
    // Catches: `prepare` needing tsc from devDependencies (issue 13: "tsc: not found").
    await npm(['ci', '--omit=dev'], clone);
    expect(existsSync(path.join(clone, 'dist', 'cli', 'main.js'))).toBe(true);
    expect(existsSync(path.join(clone, 'node_modules', 'vitest'))).toBe(false);
    const help = await cli(process.execPath, [path.join(clone, 'bin', 'mailgate.js'), '--help'], clone);
    expect(help.code, help.stderr).toBe(0);
    expect(help.stdout).toMatch(/^Usage: mailgate /);
    // A checkout reads its own config/mailgate.toml.
    expect(help.stdout.replace(/\s+/g, ' ')).toContain(path.join(clone, 'config', 'mailgate.toml'));
  });

  it('`npm pack` ships dist/, web/, config/ (the systemd unit too) and bin/, and no sources or tests', async () => {
    const name = (await npm(['pack', '--pack-destination', dir], clone)).trim().split('\n').pop()!;
    tarball = path.join(dir, name);
    const { stdout } = await run('tar', ['tzf', tarball], { maxBuffer: 16 * 1024 * 1024 });
    const files = stdout.split('\n').filter(Boolean);
    for (const needed of [
      'package/bin/mailgate.js',
      'package/dist/cli/main.js',
      'package/dist/web/views.js',
      'package/web/views/layout.eta',
      'package/web/assets/style.css',
      'package/config/mailgate.toml',
      'package/config/systemd/mailgate.service',
      'package/docs/operations.md',
    ]) {
      expect(files, needed).toContain(needed);
    }
    expect(files.filter((f) => /^package\/(src|test|bench|scripts|data|certs)\//.test(f) || f.endsWith('.tsbuildinfo'))).toEqual([]);
  });

  it('a global install of the tarball (--omit=dev) into a temporary prefix runs the CLI and serves the page', async () => {
    // Catches: a tarball without dist/ or web/ (they are not in git), or a package that needs dev dependencies at run time.
    expect(tarball).not.toBe('');
    await npm(['install', '--global', '--prefix', prefix, tarball, '--omit=dev'], dir);
    const bin = path.join(prefix, 'bin', 'mailgate');
    const installed = path.join(prefix, 'lib', 'node_modules', 'mailgate');
    expect(existsSync(path.join(installed, 'node_modules', 'vitest'))).toBe(false);

    const version = await cli(bin, ['--version'], dir);
    expect(version.stdout.trim()).toBe(VERSION);
    const help = await cli(bin, ['--help'], dir);
    expect(help.code).toBe(0);
    // Installed: /etc/mailgate/mailgate.toml is the default.
    expect(help.stdout.replace(/\s+/g, ' ')).toContain('else /etc/mailgate/mailgate.toml)');
    if (!existsSync('/etc/mailgate/mailgate.toml')) {
      const none = await cli(bin, ['account', 'list'], dir);
      expect(none.code).toBe(2);
      expect(none.stderr).toMatch(/^mailgate: \/etc\/mailgate\/mailgate\.toml: file not found \(an installed mailgate reads it by default/);
    }

    // A config of its own, with paths relative to it, as /etc/mailgate/mailgate.toml would be.
    mkdirSync(path.join(dir, 'etc'));
    const config = path.join(dir, 'etc', 'mailgate.toml');
    writeFileSync(
      config,
      `[store]
path = "../state/mailgate.db"
key_file = "../state/mailgate.key"

[auth]
argon2_memory_kib = 1024
argon2_iterations = 1

[tls]
cert = "../state/self-signed.crt"
key = "../state/self-signed.key"
self_signed = true

[[listen]]
protocol = "imap"
host = "127.0.0.1"
port = 0
tls = "implicit"

[upstream.imap]
port = 1

[web]
listen = "127.0.0.1:0"
`,
    );
    expect((await cli(bin, ['--config', config, 'account', 'list'], dir)).code).toBe(1);
    const added = await cli(bin, ['--config', config, 'account', 'add', 'alice@example.org'], dir);
    expect(added.code, added.stderr).toBe(0);
    const listed = await cli(bin, ['--config', config, 'account', 'list', '--json'], dir);
    expect(listed.stdout).toContain('alice@example.org');
    expect(existsSync(path.join(dir, 'state', 'mailgate.db'))).toBe(true);

    // serve: the page's templates and assets come from the package's web/ folder.
    const child = spawn(bin, ['serve', '--config', config], { cwd: dir, env: { ...npmEnv(), MAILGATE_CONFIG: '' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    try {
      const line = await waitUntil(
        () => out.split('\n').find((l) => l.includes('"self-service page listening"')),
        `the page listening (stdout: ${out} stderr: ${err})`,
        20_000,
      );
      const { url } = JSON.parse(line) as { url: string };
      const page = await get(url);
      expect(page.status).toBe(200);
      expect(page.body).toMatch(/<form[^>]+method="post"/i);
      const css = await get(new URL('assets/style.css', url).toString());
      expect(css.status).toBe(200);
    } finally {
      child.kill('SIGTERM');
    }
    expect(await exited).toBe(0);
  });
});
