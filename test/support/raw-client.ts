/**
 * The suite's one raw line client. It speaks no protocol: it sends exactly
 * the bytes a test gives it and reads back exactly what the server answered
 * (a line, lines up to a pattern, or n bytes, e.g. a literal), keeping a
 * transcript of everything received. Unlike a real mail client it can bind
 * its source address (127.0.0.x: Linux routes all of 127/8 to lo, so each
 * address is a distinct client IP for the gateway's per-IP limits), offer any
 * ALPN list, start TLS in place whenever the test says (STARTTLS, STLS, after
 * a PROXY header), stall, or reset.
 *
 * Loopback only: every connection targets 127.0.0.1; over TLS the server
 * certificate is verified against the test CA as 'localhost'.
 *
 * Text goes out as UTF-8 and comes back as latin1 (bytes map 1:1 to
 * characters). The protocol layers, ImapClient (imap-client.ts) and
 * Pop3Client (pop3-client.ts), subclass it: `connect` and `open` build
 * whichever class they are called on.
 */
import { readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { sleep } from './timing.js';

export interface RawConnectOptions {
  port: number;
  /** Implicit TLS from the first byte; otherwise plain TCP (startTls() later if wanted). */
  tls?: boolean;
  /** CA file (PEM) to verify the server against; required for TLS, implicit or started later. */
  ca?: string;
  /** Source address, e.g. '127.0.0.2'; default: the kernel's choice (127.0.0.1). */
  localAddress?: string;
  /** ALPN protocols to offer during the TLS handshake. */
  alpn?: string[];
  /** Deadline of each read (of the whole answer, for the multi-line reads), default 5 s. */
  timeoutMs?: number;
}

/** Who a test connects as: a source address (127.0.0.x) and a read deadline. */
export interface ConnectAs {
  from?: string;
  timeoutMs?: number;
}

type ClientClass<C extends RawClient> = new (socket: net.Socket, options: RawConnectOptions) => C;

export class RawClient {
  socket: net.Socket;
  /** Resolves when the (outermost) socket has closed. */
  closed: Promise<void>;
  readonly timeoutMs: number;
  private chunks: Buffer[] = [];
  private length = 0;
  private readonly received: Buffer[] = [];
  private waiter: (() => void) | null = null;
  private ended = false;
  private error: Error | null = null;
  private knownLocalPort = 0;
  private readonly onData = (chunk: Buffer) => {
    this.chunks.push(chunk);
    this.received.push(chunk);
    this.length += chunk.length;
    this.wake();
  };

  /** Use connect() or open(). */
  constructor(
    socket: net.Socket,
    private readonly options: RawConnectOptions,
  ) {
    this.socket = socket;
    this.timeoutMs = options.timeoutMs ?? 5_000;
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    this.attach(socket);
  }

  /** Connects (and completes the TLS handshake when `tls`); rejects if either fails. */
  static connect<C extends RawClient>(this: ClientClass<C>, options: RawConnectOptions): Promise<C> {
    return connectAs(this, options);
  }

  /** Connects and reads the first line (the greeting, or a refusal). */
  static async open<C extends RawClient>(this: ClientClass<C>, options: RawConnectOptions): Promise<{ client: C; greeting: string }> {
    const client = await connectAs(this, options);
    return { client, greeting: await client.readLine() };
  }

  private attach(socket: net.Socket): void {
    socket.on('data', this.onData);
    const end = () => {
      this.ended = true;
      this.wake();
    };
    socket.on('end', end);
    socket.on('close', end);
    socket.on('error', (err) => {
      this.error = err;
      this.wake();
    });
  }

  private wake(): void {
    const waiter = this.waiter;
    this.waiter = null;
    waiter?.();
  }

  /** True once the server has closed (or reset) the connection. */
  get isClosed(): boolean {
    return this.ended;
  }

  /** The client's source port (remembered: it is what the gateway logs as clientPort, even after the close). */
  get localPort(): number {
    this.knownLocalPort ||= this.socket.localPort ?? 0;
    return this.knownLocalPort;
  }

  /** TLS version of the connection, or null on plain TCP. */
  get tlsVersion(): string | null {
    return this.socket instanceof tls.TLSSocket ? this.socket.getProtocol() : null;
  }

  /** Everything received so far, read or not, before and after a STARTTLS. */
  transcript(): string {
    return Buffer.concat(this.received).toString('latin1');
  }

  send(data: string | Buffer): void {
    if (this.socket.writable) this.socket.write(typeof data === 'string' ? Buffer.from(data, 'utf8') : data);
  }

  private unread(): string {
    return JSON.stringify(Buffer.concat(this.chunks).toString('latin1').slice(0, 500));
  }

  /** Sleeps until new data, the end of the connection or `ms`, whichever comes first. */
  private nextEvent(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.waiter = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  private async waitFor(check: () => boolean, what: string, timeoutMs = this.timeoutMs): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!check()) {
      if (this.error) throw new Error(`RawClient: socket error while waiting for ${what}: ${this.error.message}; unread ${this.unread()}`);
      if (this.ended) throw new Error(`RawClient: connection closed while waiting for ${what}; unread ${this.unread()}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`RawClient: timed out waiting for ${what}; unread ${this.unread()}`);
      await this.nextEvent(left);
    }
  }

  private indexOfLf(): number {
    let offset = 0;
    for (const chunk of this.chunks) {
      const i = chunk.indexOf(0x0a);
      if (i >= 0) return offset + i;
      offset += chunk.length;
    }
    return -1;
  }

  private take(n: number): Buffer {
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.length);
    const rest = all.subarray(n);
    this.chunks = rest.length > 0 ? [rest] : [];
    this.length = rest.length;
    return all.subarray(0, n);
  }

  /** The next line, with its CRLF (so tests can assert exact bytes). */
  async readLine(timeoutMs?: number): Promise<string> {
    await this.waitFor(() => this.indexOfLf() >= 0, 'a line', timeoutMs);
    return this.take(this.indexOfLf() + 1).toString('latin1');
  }

  /** Exactly n bytes. */
  async readBytes(n: number, timeoutMs?: number): Promise<Buffer> {
    await this.waitFor(() => this.length >= n, `${n} bytes`, timeoutMs);
    return Buffer.from(this.take(n));
  }

  /** Lines up to and including the first that matches, joined; one deadline for them all. */
  async readUntil(match: RegExp, timeoutMs = this.timeoutMs): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    let out = '';
    for (;;) {
      const line = await this.readLine(Math.max(1, deadline - Date.now()));
      out += line;
      if (match.test(line)) return out;
    }
  }

  /**
   * Waits until the server closes the connection and returns whatever arrived
   * unread until then. Throws if it stays open past the deadline.
   */
  async waitClosed(timeoutMs = this.timeoutMs): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    while (!this.ended) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`RawClient: the server did not close the connection; unread ${this.unread()}`);
      await this.nextEvent(left);
    }
    return this.take(this.length).toString('latin1');
  }

  /** Throws unless nothing is unread after `ms` (nothing left over, nothing new). */
  async expectSilence(ms: number): Promise<void> {
    await sleep(ms);
    if (this.length > 0) throw new Error(`RawClient: unexpected data ${this.unread()}`);
  }

  /**
   * The client half of STARTTLS/STLS, once the server's go-ahead was read:
   * wraps the same TCP socket in TLS and verifies the certificate. Returns how
   * many plaintext bytes were unread at that point (anything there would be
   * an injection); they stay unread.
   */
  async startTls(): Promise<number> {
    const plain = this.socket;
    plain.removeListener('data', this.onData);
    const leftover = this.length;
    const secure = tls.connect({ socket: plain, ca: readFileSync(requireCa(this.options)), servername: 'localhost', minVersion: 'TLSv1.2' });
    await new Promise<void>((resolve, reject) => {
      secure.once('secureConnect', () => resolve());
      secure.once('error', reject);
    });
    this.socket = secure;
    this.closed = new Promise((resolve) => secure.once('close', () => resolve()));
    this.attach(secure);
    return leftover;
  }

  /** Stops reading from the socket (the server then feels backpressure). */
  pause(): void {
    this.socket.pause();
  }

  resume(): void {
    this.socket.resume();
  }

  /** Hangs up at once (see `closed`). */
  destroy(): void {
    this.socket.destroy();
  }

  /** Hangs up with a TCP reset. */
  reset(): void {
    const s = this.socket as net.Socket & { resetAndDestroy?: () => void };
    if (typeof s.resetAndDestroy === 'function' && !(s instanceof tls.TLSSocket)) s.resetAndDestroy();
    else s.destroy();
  }

  /** Ends our side politely and waits (up to 2 s) for the close. */
  async end(): Promise<void> {
    this.socket.end();
    await Promise.race([this.closed, sleep(2_000)]);
    this.socket.destroy();
  }
}

function connectAs<C extends RawClient>(Client: ClientClass<C>, options: RawConnectOptions): Promise<C> {
  return new Promise((resolve, reject) => {
    const base = { host: '127.0.0.1', port: options.port, ...(options.localAddress ? { localAddress: options.localAddress } : {}) };
    const socket = options.tls
      ? tls.connect({
          ...base,
          ca: readFileSync(requireCa(options)),
          servername: 'localhost',
          minVersion: 'TLSv1.2',
          ...(options.alpn ? { ALPNProtocols: options.alpn } : {}),
        })
      : net.connect(base);
    const client = new Client(socket, options);
    const fail = (err: Error) => reject(err);
    socket.once('error', fail);
    socket.once(options.tls ? 'secureConnect' : 'connect', () => {
      socket.removeListener('error', fail);
      void client.localPort;
      resolve(client);
    });
  });
}

function requireCa(options: RawConnectOptions): string {
  if (!options.ca) throw new Error('RawClient: TLS needs the test CA file');
  return options.ca;
}

/** A TCP connect that is expected to be refused (or reset before any byte): resolves true if so. */
export function connectRefused(port: number, timeoutMs = 2_000): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    const timer = setTimeout(() => {
      socket.destroy();
      resolve(false);
    }, timeoutMs);
    socket.once('error', () => {
      clearTimeout(timer);
      resolve(true);
    });
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.destroy();
      resolve(false);
    });
  });
}

/** base64 of a SASL PLAIN message (authzid NUL authcid NUL password); strings are UTF-8, Buffers raw bytes. */
export function saslPlain(user: string | Buffer, password: string | Buffer, authzid: string | Buffer = ''): string {
  const b = (v: string | Buffer) => (typeof v === 'string' ? Buffer.from(v, 'utf8') : v);
  return Buffer.concat([b(authzid), Buffer.from([0]), b(user), Buffer.from([0]), b(password)]).toString('base64');
}

/** base64 of UTF-8 text (SASL LOGIN exchanges). */
export function b64(text: string): string {
  return Buffer.from(text, 'utf8').toString('base64');
}
