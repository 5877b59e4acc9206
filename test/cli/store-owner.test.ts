/**
 * An administrator runs the CLI as root on the store of a service that runs
 * as its own user (systemd `User=mailgate`, files 0600 in /var/lib/mailgate):
 * afterwards every store file still belongs to the service user, with its
 * modes, so the service still opens it. Here `nobody` plays the service user.
 */
import { chmodSync, chownSync, lstatSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { runCli, unprivilegedUser, type CliUser } from '../support/cli.js';
import { makeTempDir, removeTempDir } from '../support/tmp.js';

const asRoot = process.getuid?.() === 0;
const service: CliUser | null = asRoot ? unprivilegedUser() : null;

let dir: string;
let state: string;
let config: string;

beforeEach(async () => {
  dir = await makeTempDir('cli-owner');
  // The config is root's but readable, like /etc/mailgate/mailgate.toml (0640 root:mailgate).
  chmodSync(dir, 0o755);
  state = path.join(dir, 'state');
  mkdirSync(state, { mode: 0o700 });
  if (service) chownSync(state, service.uid, service.gid);
  config = path.join(dir, 'mailgate.toml');
  writeFileSync(
    config,
    `[store]
path = "state/db/mailgate.db"
key_file = "state/mailgate.key"
busy_timeout_ms = 2000

[auth]
argon2_memory_kib = 1024
argon2_iterations = 1

[web]
listen = ""
`,
    { mode: 0o644 },
  );
});
afterEach(() => removeTempDir(dir));

/** Every file and folder under state/ (state/ included): owner and mode. */
function listing(): Array<{ name: string; uid: number; gid: number; mode: string }> {
  const entries: Array<{ name: string; uid: number; gid: number; mode: string }> = [];
  const walk = (folder: string) => {
    for (const name of readdirSync(folder)) {
      const full = path.join(folder, name);
      const stat = lstatSync(full);
      entries.push({ name: path.relative(dir, full), uid: stat.uid, gid: stat.gid, mode: (stat.mode & 0o777).toString(8) });
      if (stat.isDirectory()) walk(full);
    }
  };
  walk(state);
  return entries;
}

function expectServiceOwned(): void {
  const entries = listing();
  expect(entries.map((e) => e.name).sort()).toEqual(expect.arrayContaining(['state/db', 'state/db/mailgate.db', 'state/mailgate.key']));
  for (const entry of entries) {
    expect({ name: entry.name, uid: entry.uid, gid: entry.gid }).toEqual({ name: entry.name, uid: service!.uid, gid: service!.gid });
    expect(entry.mode, entry.name).toBe(entry.name === 'state/db' ? '700' : '600');
  }
}

async function cli(args: string[], user: CliUser | null): Promise<string> {
  const result = await runCli(['--config', config, ...args], { user, cwd: dir });
  expect(result.code, `${user ? 'service user' : 'root'}: mailgate ${args.join(' ')}: ${result.stderr}`).toBe(0);
  return result.stdout;
}

describe.skipIf(!asRoot)('the CLI run as root on a store owned by the service user (needs root: the tests run as root in CI)', () => {
  it('a store the service created: root writes to it, the files keep their owner and 0600, the service user still reads and writes', async () => {
    await cli(['account', 'add', 'alice'], service);
    expectServiceOwned();
    await cli(['account', 'add', 'bob'], null);
    await cli(['app-password', 'create', 'alice', '--name', 'laptop'], null);
    await cli(['totp', 'enroll', 'bob'], null);
    expectServiceOwned();
    await cli(['app-password', 'create', 'bob', '--name', 'phone'], service);
    expect(await cli(['account', 'list'], service)).toMatch(/alice[\s\S]*bob/);
    expectServiceOwned();
  });

  it('a new store created by root in the service user\'s folder belongs to the service user: database, key, folder', async () => {
    // Catches: `sudo mailgate account add` before the first start leaving a root-owned store the service cannot open.
    await cli(['account', 'add', 'alice'], null);
    expectServiceOwned();
    await cli(['app-password', 'create', 'alice', '--name', 'laptop'], service);
    expect(await cli(['account', 'list'], service)).toMatch(/alice/);
    expectServiceOwned();
  });

  it('a store in a folder of root\'s stays root\'s', async () => {
    chownSync(state, 0, 0);
    await cli(['account', 'add', 'alice'], null);
    for (const entry of listing()) expect(entry.uid, entry.name).toBe(0);
  });
});
