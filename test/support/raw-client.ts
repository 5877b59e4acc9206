/**
 * A raw line client for the hostile-client (attack) tests: it speaks no
 * protocol, sends exactly the bytes a test gives it, and reads back exactly
 * what the server answered. Unlike a real mail client it can bind its source
 * address (127.0.0.x: Linux routes all of 127/8 to lo, so each address is a
 * distinct client IP for the gateway's per-IP limits), offer any ALPN list,
 * start TLS whenever the test says, stall, or reset.
 *
 * Loopback only: every connection targets 127.0.0.1 and binds 127.0.0.x.
 */
import { readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';

export interface RawConnectOptions {
  port: number;
  /** Implicit TLS from the first byte. */
  tls?: boolean;
  /** CA file (PEM) to verify the server against; required for TLS. */
  ca?: string;
  /** Source address, e.g. '127.0.0.2'; default: the kernel's choice (127.0.0.1). */
  localAddress?: string;
  /** ALPN protocols to offer during the TLS handshake. */
  alpn?: string[];
  /** Deadline of each read, default 5 s. */
  timeoutMs?: number;
}

export class RawClient {
  socket: net.Socket;
  private chunks: Buffer[] = [];
  private length = 0;
  private transcriptChunks: Buffer[] = [];
  private waiter: (() => void) | null = null;
  private ended = false;
  private error: Error | null = null;
  readonly timeoutMs: number;
  /** Resolves when the (outermost) socket has closed. */
  closed: Promise<void>;
  private readonly onData = (chunk: Buffer) => {
    this.chunks.push(chunk);
    this.transcriptChunks.push(chunk);
    this.length += chunk.length;
    this.wake();
  };

  private constructor(
    socket: net.Socket,
    private readonly options: RawConnectOptions,
  ) {
    this.socket = socket;
    this.timeoutMs = options.timeoutMs ?? 5_000;
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    this.attach(socket);
  }

  /** Connects (and completes the TLS handshake when `tls`); rejects if either fails. */
  static connect(options: RawConnectOptions): Promise<RawClient> {
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
      const client = new RawClient(socket, options);
      const fail = (err: Error) => reject(err);
      socket.once('error', fail);
      socket.once(options.tls ? 'secureConnect' : 'connect', () => {
        socket.removeListener('error', fail);
        void client.localPort;
        resolve(client);
      });
    });
  }

  private attach(socket: net.Socket): void {
    socket.on('data', this.onData);
    socket.on('end', () => {
      this.ended = true;
      this.wake();
    });
    socket.on('close', () => {
      this.ended = true;
      this.wake();
    });
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

  get isClosed(): boolean {
    return this.ended;
  }

  private knownLocalPort = 0;

  /** The client's source port (remembered: it is what the gateway logs as clientPort, even after the close). */
  get localPort(): number {
    this.knownLocalPort ||= this.socket.localPort ?? 0;
    return this.knownLocalPort;
  }

  /** Everything received so far (latin1: bytes map 1:1 to characters). */
  transcript(): string {
    return Buffer.concat(this.transcriptChunks).toString('latin1');
  }

  /** Bytes received but not read yet. */
  get pending(): number {
    return this.length;
  }

  send(data: string | Buffer): void {
    if (this.socket.writable) this.socket.write(typeof data === 'string' ? Buffer.from(data, 'latin1') : data);
  }

  private peek(): string {
    return Buffer.concat(this.chunks).toString('latin1').slice(0, 300);
  }

  private async waitFor(check: () => boolean, what: string, timeoutMs = this.timeoutMs): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!check()) {
      if (this.ended) throw new Error(`RawClient: connection closed while waiting for ${what}; unread ${JSON.stringify(this.peek())}`);
      if (this.error) throw new Error(`RawClient: socket error while waiting for ${what}: ${this.error.message}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`RawClient: timed out waiting for ${what}; unread ${JSON.stringify(this.peek())}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
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
    const all = Buffer.concat(this.chunks, this.length);
    const rest = all.subarray(n);
    this.chunks = rest.length > 0 ? [rest] : [];
    this.length = rest.length;
    return all.subarray(0, n);
  }

  /** The next line with its CRLF. */
  async readLine(timeoutMs?: number): Promise<string> {
    await this.waitFor(() => this.indexOfLf() >= 0, 'a line', timeoutMs);
    return this.take(this.indexOfLf() + 1).toString('latin1');
  }

  /** Exactly n bytes. */
  async readBytes(n: number, timeoutMs?: number): Promise<Buffer> {
    await this.waitFor(() => this.length >= n, `${n} bytes`, timeoutMs);
    return Buffer.from(this.take(n));
  }

  /** Lines up to and including the first that matches; returns them all joined. */
  async readUntil(match: RegExp, timeoutMs?: number): Promise<string> {
    const deadline = Date.now() + (timeoutMs ?? this.timeoutMs);
    let out = '';
    for (;;) {
      const line = await this.readLine(Math.max(1, deadline - Date.now()));
      out += line;
      if (match.test(line)) return out;
    }
  }

  /** Sends an IMAP command and reads up to its tagged answer. */
  async imap(tag: string, command: string, timeoutMs?: number): Promise<string> {
    this.send(`${tag} ${command}\r\n`);
    return this.readUntil(new RegExp(`^${escapeRegExp(tag)} (OK|NO|BAD)\\b`), timeoutMs);
  }

  /** Sends a POP3 command line and reads its status line. */
  async pop3(command: string, timeoutMs?: number): Promise<string> {
    this.send(`${command}\r\n`);
    return this.readUntil(/^(\+OK|-ERR)/, timeoutMs);
  }

  /**
   * Waits until the server closes the connection and returns whatever arrived
   * unread until then. Throws if it stays open past the deadline.
   */
  async waitClosed(timeoutMs = this.timeoutMs): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    while (!this.ended) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`RawClient: the server did not close the connection; unread ${JSON.stringify(this.peek())}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
    return this.take(this.length).toString('latin1');
  }

  /** Nothing arrives (and the connection stays open) for `ms`. */
  async expectSilence(ms: number): Promise<void> {
    const before = this.length;
    await new Promise((r) => setTimeout(r, ms));
    if (this.length !== before) throw new Error(`RawClient: unexpected data ${JSON.stringify(this.peek())}`);
  }

  /**
   * The client half of STARTTLS/STLS after the server's go-ahead was read.
   * Returns how many plaintext bytes were unread at that point.
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

  /** Hangs up at once. */
  destroy(): void {
    this.socket.destroy();
  }

  /** Hangs up with a TCP reset. */
  reset(): void {
    const s = this.socket as net.Socket & { resetAndDestroy?: () => void };
    if (typeof s.resetAndDestroy === 'function' && !(s instanceof tls.TLSSocket)) s.resetAndDestroy();
    else s.destroy();
  }
}

function requireCa(options: RawConnectOptions): string {
  if (!options.ca) throw new Error('RawClient: TLS needs the test CA file');
  return options.ca;
}

export function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `check` until it returns something truthy; throws after the deadline. */
export async function until<T>(check: () => T | null | undefined | false | Promise<T | null | undefined | false>, what: string, timeoutMs = 5_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
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

/** base64 of a SASL PLAIN message (authzid NUL authcid NUL password), from raw bytes. */
export function saslPlainB64(user: string | Buffer, password: string | Buffer, authzid: string | Buffer = ''): string {
  const b = (v: string | Buffer) => (typeof v === 'string' ? Buffer.from(v, 'utf8') : v);
  return Buffer.concat([b(authzid), Buffer.from([0]), b(user), Buffer.from([0]), b(password)]).toString('base64');
}

/** The median of some numbers. */
export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}
