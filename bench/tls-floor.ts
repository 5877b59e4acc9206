/**
 * The memory floor of an idle TLS session in Node itself, without mailgate:
 * a bare node:tls server (same certificate type, same TLSSocket-over-socket
 * wrapping as mailgate) holding N idle connections, optionally each piped to
 * a plain upstream socket like mailgate's relay. Run:
 *
 *   node --import tsx bench/tls-floor.ts [N]
 *
 * It prints the server's RSS growth per connection for both shapes, which is
 * what mailgate's "KiB per idle session" cannot go below without changing
 * how Node or OpenSSL hold a connection.
 */
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { makeTestPki } from '../test/support/pki.js';
import { freePorts } from '../test/support/ports.js';
import { makeTempDir, removeTempDir } from '../test/support/tmp.js';
import { ImapConn } from './lib/imap.js';
import { installSignalHandlers, onCleanup, rssBytes, runCleanups, sleep } from './lib/proc.js';

const SERVER = `
import tls from 'node:tls'; import net from 'node:net'; import { readFileSync } from 'node:fs';
const [cert, key, port, sinkPort, mode] = process.argv.slice(2);
const ctx = tls.createSecureContext({ cert: readFileSync(cert), key: readFileSync(key) });
const serve = (t) => {
  t.write('* OK ready\\r\\n');
  if (mode !== 'tls-only') {
    const up = net.connect(Number(sinkPort), '127.0.0.1');
    t.pipe(up); up.pipe(t);
    up.on('error', () => t.destroy()); t.on('error', () => up.destroy());
  } else t.on('data', () => {});
};
const server = mode === 'tls-server'
  ? tls.createServer({ cert: readFileSync(cert), key: readFileSync(key) }, (t) => { t.on('error', () => {}); serve(t); })
  : net.createServer((sock) => {
      sock.setNoDelay(true);
      const t = new tls.TLSSocket(sock, { isServer: true, secureContext: ctx });
      t.once('secure', () => serve(t));
      t.on('error', () => {});
    });
server.listen(Number(port), '127.0.0.1', () => console.log('ready'));
`;

async function main(): Promise<void> {
  installSignalHandlers();
  const n = Number(process.argv[2] ?? 2000);
  const dir = await makeTempDir('tlsfloor');
  onCleanup('temp dir', () => removeTempDir(dir));
  const pki = await makeTestPki(path.join(dir, 'pki'));
  const ca = readFileSync(pki.caCert, 'utf8');
  const serverFile = path.join(dir, 'server.mjs');
  writeFileSync(serverFile, SERVER);
  const sinkConns: net.Socket[] = [];
  const sink = net.createServer((s) => {
    sinkConns.push(s);
    s.on('error', () => undefined);
  });
  await new Promise<void>((r) => sink.listen(0, '127.0.0.1', r));
  onCleanup('sink', () => {
    for (const s of sinkConns) s.destroy();
    sink.close();
  });
  const sinkPort = (sink.address() as net.AddressInfo).port;
  for (const mode of ['tls-only', 'pipe', 'tls-server'] as const) {
    const [port] = (await freePorts(1)) as [number];
    const child = spawn(process.execPath, [serverFile, pki.serverCert, pki.serverKey, String(port), String(sinkPort), mode], { stdio: ['ignore', 'pipe', 'inherit'] });
    onCleanup(`server ${mode}`, () => void child.kill('SIGKILL'));
    await new Promise<void>((r) => child.stdout!.once('data', () => r()));
    const ep = { host: '127.0.0.1', port, tls: true, ca };
    for (let i = 0; i < 50; i++) {
      const c = await ImapConn.connect(ep);
      await c.greeting();
      c.destroy();
    }
    await sleep(1000);
    const before = rssBytes(child.pid!);
    const conns: ImapConn[] = [];
    let next = 0;
    await Promise.all(
      Array.from({ length: 16 }, async (_, w) => {
        while (next < n) {
          next++;
          const c = await ImapConn.connect(ep, { localAddress: `127.0.0.${80 + w}` });
          await c.greeting();
          conns.push(c);
        }
      }),
    );
    await sleep(2000);
    const after = rssBytes(child.pid!);
    const label = { 'tls-only': 'TLS only', pipe: 'TLS + piped upstream socket', 'tls-server': 'tls.Server (no wrapped net.Socket) + piped upstream' }[mode];
    process.stdout.write(`${label}: ${((after - before) / n / 1024).toFixed(1)} KiB RSS per idle connection (N = ${n})\n`);
    for (const c of conns) c.destroy();
    child.kill('SIGKILL');
    await sleep(500);
  }
}

main().then(
  () => runCleanups().then(() => process.exit(0)),
  async (err: unknown) => {
    process.stderr.write(`tls-floor: ${(err as Error).stack ?? String(err)}\n`);
    await runCleanups();
    process.exit(1);
  },
);
