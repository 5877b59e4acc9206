/**
 * A gateway that fails half-way through starting (a port already taken)
 * takes down what it had started, so the process can exit instead of
 * serving from a gateway that reported failure.
 */
import net from 'node:net';
import path from 'node:path';
import { afterEach, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { silentLogger } from '../../src/log/logger.js';
import { Gateway } from '../../src/server/gateway.js';
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

it('closes the listeners it had bound when a later one fails', async () => {
  dir = await makeTempDir('gwstart');
  const pki = await makeTestPki(path.join(dir, 'pki'));
  const [free, taken] = [await freePort(), await freePort()];
  const blocker = net.createServer().listen(taken, '127.0.0.1');
  cleanups.push(() => blocker.close());
  await new Promise((resolve) => blocker.once('listening', resolve));
  const config = parseConfig(
    {
      store: { path: path.join(dir, 'db', 'mailgate.db'), key_file: path.join(dir, 'db', 'mailgate.key') },
      tls: { cert: pki.serverCert, key: pki.serverKey, self_signed: false },
      listen: [
        { protocol: 'imap', port: free, tls: 'implicit' },
        { protocol: 'pop3', port: taken, tls: 'implicit' },
      ],
      upstream: { imap: { port: await freePort() }, pop3: { port: await freePort() } },
      timeouts: { upstream_connect_seconds: 1 },
    },
    'test',
  );
  await expect(Gateway.start({ config, log: silentLogger(), storeOptions: { argon2: FAST_ARGON2 } })).rejects.toThrow(/EADDRINUSE/);
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
