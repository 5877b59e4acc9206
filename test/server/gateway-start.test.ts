/**
 * A gateway that fails half-way through starting (a port already taken)
 * takes down what it had started, so the process can exit instead of
 * serving from a gateway that reported failure; and it takes away the store
 * files this start created, but never a store that was there before.
 */
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterEach, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { silentLogger } from '../../src/log/logger.js';
import { Gateway } from '../../src/server/gateway.js';
import { SqliteRepositories, storeOptionsFromConfig } from '../../src/store/sqlite/repositories.js';
import { makeTestPki } from '../support/pki.js';
import { freePort } from '../support/ports.js';
import { FAST_ARGON2 } from '../support/store.js';
import { makeTempDir, removeTempDir } from '../support/tmp.js';

let dir = '';
const cleanups: Array<() => void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0)) c();
  if (dir) await removeTempDir(dir);
});

/** A port another server holds until the test ends. */
async function takenPort(): Promise<number> {
  const taken = await freePort();
  const blocker = net.createServer().listen(taken, '127.0.0.1');
  cleanups.push(() => blocker.close());
  await new Promise((resolve) => blocker.once('listening', resolve));
  return taken;
}

/** A configuration whose second listener cannot bind; the store lives in dir/db. */
async function configWithTakenPort(free: number) {
  dir ||= await makeTempDir('gwstart');
  const pki = await makeTestPki(path.join(dir, 'pki'));
  return parseConfig(
    {
      store: { path: path.join(dir, 'db', 'mailgate.db'), key_file: path.join(dir, 'db', 'mailgate.key') },
      tls: { cert: pki.serverCert, key: pki.serverKey, self_signed: false },
      listen: [
        { protocol: 'imap', port: free, tls: 'implicit' },
        { protocol: 'pop3', port: await takenPort(), tls: 'implicit' },
      ],
      upstream: { imap: { port: await freePort() }, pop3: { port: await freePort() } },
      timeouts: { upstream_connect_seconds: 1 },
      web: { listen: '' },
    },
    'test',
  );
}

const start = (config: ReturnType<typeof parseConfig>) => Gateway.start({ config, log: silentLogger(), argon2: FAST_ARGON2 });

it('closes the listeners it had bound when a later one fails, and says which one failed', async () => {
  const free = await freePort();
  const config = await configWithTakenPort(free);
  const taken = config.listen[1]!.port;
  await expect(start(config)).rejects.toThrow(new RegExp(`^listen\\[1\\] 127\\.0\\.0\\.1:${taken}: the port is already in use`));
  // The first listener is closed again: nothing answers there.
  const refused = await new Promise<boolean>((resolve) => {
    const s = net.connect(free, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(false);
    });
    s.once('error', () => resolve(true));
  });
  expect(refused).toBe(true);
});

it('removes the store it created when the start fails, folder included', async () => {
  // Catches: a failed first start leaving an empty database and a fresh key behind.
  const config = await configWithTakenPort(await freePort());
  await expect(start(config)).rejects.toThrow(/already in use/);
  expect(existsSync(path.join(dir, 'db'))).toBe(false);
});

it('leaves a store that existed before a failed start exactly as it was', async () => {
  // Catches: a clean-up that removes the operator's real database, key, or a -wal another process is using.
  const config = await configWithTakenPort(await freePort());
  const options = storeOptionsFromConfig(config, { argon2: FAST_ARGON2 });
  // Another process (the CLI, say) has the store open while the gateway fails to start: its -wal and -shm exist.
  const other = SqliteRepositories.open(options);
  cleanups.unshift(() => other.close());
  other.accounts.add('alice');
  const before = readdirSync(path.join(dir, 'db')).sort();
  expect(before).toEqual(['mailgate.db', 'mailgate.db-shm', 'mailgate.db-wal', 'mailgate.key']);
  const key = readFileSync(options.keyFile);

  await expect(start(config)).rejects.toThrow(/already in use/);

  expect(readdirSync(path.join(dir, 'db')).sort()).toEqual(before);
  expect(readFileSync(options.keyFile).equals(key)).toBe(true);
  expect(other.accounts.find('alice')).not.toBeNull();
});
