/**
 * A scripted fake IMAP/POP3 upstream on 127.0.0.1, for the "malicious or
 * broken upstream" attack tests ONLY (a real Dovecot cannot be made to inject
 * bytes after its STARTTLS OK, greet with PREAUTH, or die half-way through a
 * literal on cue). Every other test talks to the real Dovecot.
 *
 * It records every byte it receives on every connection, decrypted after a
 * STARTTLS upgrade, so a test can assert that no credentials ever reached it.
 * Behaviour is a line handler the test supplies (and may swap at any time).
 */
import { readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';

export interface FakeConnection {
  readonly id: number;
  /** True after upgrade(). */
  secure: boolean;
  write(data: string | Buffer): void;
  /** Server side of STARTTLS with the test PKI's certificate (valid for 127.0.0.1 and localhost). */
  upgrade(): Promise<void>;
  /** Closes with a TCP reset. */
  reset(): void;
  end(data?: string): void;
  /** Bytes received on this connection (plaintext, then decrypted). */
  received(): Buffer;
  /** Runs `listener` when the connection closes (from either side). */
  onClose(listener: () => void): void;
  /** True once the connection is closed (from either side). */
  readonly closed: boolean;
}

export interface FakeUpstreamScript {
  /** Called on accept: typically writes the greeting. */
  onConnect(conn: FakeConnection): void;
  /** Called for every line received (without CRLF, latin1). */
  onLine(conn: FakeConnection, line: string): void;
}

export interface FakeUpstream {
  port: number;
  /** Replace the behaviour for new and existing connections. */
  script: FakeUpstreamScript;
  connections: FakeConnection[];
  /** Everything every connection received, latin1. */
  receivedText(): string;
  /** Forget what was recorded so far. */
  clear(): void;
  close(): Promise<void>;
}

export async function startFakeUpstream(script: FakeUpstreamScript, pki: { serverCert: string; serverKey: string }): Promise<FakeUpstream> {
  const secureContext = tls.createSecureContext({ cert: readFileSync(pki.serverCert), key: readFileSync(pki.serverKey) });
  const sockets = new Set<net.Socket>();
  let nextId = 1;
  const fake: FakeUpstream = {
    port: 0,
    script,
    connections: [],
    receivedText: () => Buffer.concat(fake.connections.map((c) => c.received())).toString('latin1'),
    clear: () => {
      fake.connections.length = 0;
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };

  const server = net.createServer((raw) => {
    sockets.add(raw);
    raw.on('close', () => sockets.delete(raw));
    raw.on('error', () => undefined);
    let socket: net.Socket = raw;
    const chunks: Buffer[] = [];
    let pending = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      chunks.push(chunk);
      pending = Buffer.concat([pending, chunk]);
      for (let lf = pending.indexOf(0x0a); lf >= 0 && socket === current(); lf = pending.indexOf(0x0a)) {
        const line = pending.subarray(0, lf).toString('latin1').replace(/\r$/, '');
        pending = pending.subarray(lf + 1);
        fake.script.onLine(conn, line);
      }
    };
    const current = () => socket;
    const conn: FakeConnection = {
      id: nextId++,
      secure: false,
      write(data) {
        if (socket.writable) socket.write(data);
      },
      async upgrade() {
        socket.removeListener('data', onData);
        pending = Buffer.alloc(0);
        const secure = new tls.TLSSocket(raw, { isServer: true, secureContext });
        secure.on('error', () => undefined);
        socket = secure;
        await new Promise<void>((resolve, reject) => {
          secure.once('secure', () => resolve());
          secure.once('error', reject);
          secure.once('close', () => reject(new Error('closed during the TLS handshake')));
        });
        conn.secure = true;
        secure.on('data', onData);
      },
      reset() {
        if (socket === raw) raw.resetAndDestroy();
        else {
          // A TLSSocket cannot be reset itself; reset the TCP connection under it.
          raw.resetAndDestroy();
          socket.destroy();
        }
      },
      end(data) {
        if (data === undefined) socket.end();
        else socket.end(data);
      },
      received: () => Buffer.concat(chunks),
      onClose: (listener) => {
        if (raw.destroyed) listener();
        else raw.once('close', listener);
      },
      get closed() {
        return raw.destroyed;
      },
    };
    fake.connections.push(conn);
    raw.on('data', onData);
    fake.script.onConnect(conn);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: '127.0.0.1', port: 0 }, () => resolve());
  });
  fake.port = (server.address() as net.AddressInfo).port;
  return fake;
}

/** What an upstream must never see when it misbehaved before the login. */
export const CREDENTIAL_COMMANDS = /\b(LOGIN|AUTHENTICATE|AUTH|USER|PASS|APOP|XCLIENT)\b/i;
