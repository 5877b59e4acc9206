/**
 * A tiny raw POP3 client for exact-byte protocol checks in integration tests.
 *
 * It knows almost no POP3: tests write the bytes they mean to send (several
 * commands in one write when they want to pipeline or inject) and read back
 * exactly what the server answered, line by line or as a multi-line block.
 *
 * Always loopback: connects to 127.0.0.1 and, over TLS (implicit or after
 * STLS), verifies the server certificate against the test CA as 'localhost'.
 */
import { readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';

export interface RawPop3Options {
  port: number;
  /** Implicit TLS from the first byte (POP3S); otherwise plain TCP (STLS later with startTls()). */
  tls: boolean;
  /** CA file (PEM) to verify the server against; required for TLS. */
  ca: string;
  /** Name to verify the certificate against (and SNI); default 'localhost'. */
  servername?: string;
  /** Deadline for each read, default 5 s. */
  timeoutMs?: number;
}

export class RawPop3 {
  socket: net.Socket;
  /** The client's own TCP port: what the gateway sees as the client's source port. */
  readonly localPort: number;
  readonly closed: Promise<void>;
  private buffer = Buffer.alloc(0);
  private waiter: (() => void) | null = null;
  private ended = false;
  private error: Error | null = null;
  private readonly timeoutMs: number;
  private readonly onData = (chunk: Buffer) => {
    this.buffer = Buffer.concat([this.buffer, chunk]);
    this.wake();
  };

  private constructor(
    socket: net.Socket,
    private readonly options: RawPop3Options,
    localPort: number,
  ) {
    this.socket = socket;
    this.localPort = localPort;
    this.timeoutMs = options.timeoutMs ?? 5_000;
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    this.attach(socket);
  }

  static connect(options: RawPop3Options): Promise<RawPop3> {
    return new Promise((resolve, reject) => {
      const socket = options.tls
        ? tls.connect({
            host: '127.0.0.1',
            port: options.port,
            ca: readFileSync(options.ca),
            servername: options.servername ?? 'localhost',
            minVersion: 'TLSv1.2',
          })
        : net.connect({ host: '127.0.0.1', port: options.port });
      const fail = (err: Error) => reject(err);
      socket.once('error', fail);
      socket.once(options.tls ? 'secureConnect' : 'connect', () => {
        socket.removeListener('error', fail);
        resolve(new RawPop3(socket, options, socket.localPort ?? 0));
      });
    });
  }

  /** Connects and reads the greeting line (with its CRLF). */
  static async open(options: RawPop3Options): Promise<{ client: RawPop3; greeting: string }> {
    const client = await RawPop3.connect(options);
    return { client, greeting: await client.readLine() };
  }

  get encrypted(): boolean {
    return this.socket instanceof tls.TLSSocket;
  }

  /** Bytes received and not read yet. */
  get pending(): Buffer {
    return this.buffer;
  }

  send(data: string | Buffer): void {
    this.socket.write(data);
  }

  /** Sends one command line (CRLF added) and reads one response line. */
  async command(line: string): Promise<string> {
    this.send(`${line}\r\n`);
    return this.readLine();
  }

  /** The next line, CRLF included (so tests can assert exact bytes). */
  async readLine(timeoutMs = this.timeoutMs): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const lf = this.buffer.indexOf(0x0a);
      if (lf >= 0) {
        const line = this.buffer.subarray(0, lf + 1);
        this.buffer = this.buffer.subarray(lf + 1);
        return line.toString('utf8');
      }
      await this.waitForData(deadline, 'a line');
    }
  }

  /** A status line and, when it is +OK, the multi-line body up to and including ".\r\n"; returned verbatim. */
  async readMultiline(timeoutMs = this.timeoutMs): Promise<string> {
    const first = await this.readLine(timeoutMs);
    if (!first.startsWith('+OK')) return first;
    let out = first;
    for (;;) {
      const line = await this.readLine(timeoutMs);
      out += line;
      if (line === '.\r\n') return out;
    }
  }

  /** Reads exactly n bytes. */
  async readBytes(n: number, timeoutMs = this.timeoutMs): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.buffer.length < n) await this.waitForData(deadline, `${n} bytes`);
    const out = this.buffer.subarray(0, n);
    this.buffer = this.buffer.subarray(n);
    return Buffer.from(out);
  }

  /** Everything until the server closes the connection. */
  async readToEnd(timeoutMs = this.timeoutMs): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    while (!this.ended) await this.waitForData(deadline, 'the end of the connection');
    const out = this.buffer.toString('utf8');
    this.buffer = Buffer.alloc(0);
    return out;
  }

  /** Waits `ms` and returns whatever arrived unasked (should usually be ''). */
  async unsolicited(ms = 200): Promise<string> {
    await new Promise((r) => setTimeout(r, ms));
    const out = this.buffer.toString('utf8');
    this.buffer = Buffer.alloc(0);
    return out;
  }

  /** True once the server has closed (or reset) the connection. */
  get isEnded(): boolean {
    return this.ended;
  }

  /**
   * The client side of STLS: after the server's +OK, wrap the same TCP socket
   * in TLS and verify the certificate. Bytes still unread are an error (the
   * server must not send anything between +OK and the handshake).
   */
  async startTls(): Promise<void> {
    if (this.buffer.length > 0) throw new Error(`data after the STLS answer: ${JSON.stringify(this.buffer.toString('latin1'))}`);
    const plain = this.socket;
    plain.removeListener('data', this.onData);
    const secure = tls.connect({
      socket: plain,
      ca: readFileSync(this.options.ca),
      servername: this.options.servername ?? 'localhost',
      minVersion: 'TLSv1.2',
    });
    await new Promise<void>((resolve, reject) => {
      secure.once('secureConnect', () => resolve());
      secure.once('error', reject);
    });
    this.socket = secure;
    this.attach(secure);
  }

  /** Polite end: QUIT, read the answer, wait for the close. */
  async quit(): Promise<string> {
    const answer = await this.command('QUIT');
    await this.waitClosed();
    return answer;
  }

  async waitClosed(timeoutMs = this.timeoutMs): Promise<void> {
    await Promise.race([
      this.closed,
      new Promise<never>((_, reject) => setTimeout(() => reject(new Error('connection not closed in time')), timeoutMs).unref()),
    ]);
  }

  destroy(): void {
    this.socket.destroy();
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
      this.ended = true;
      this.wake();
    });
  }

  private wake(): void {
    const waiter = this.waiter;
    this.waiter = null;
    waiter?.();
  }

  private waitForData(deadline: number, what: string): Promise<void> {
    if (this.ended) {
      const seen = JSON.stringify(this.buffer.toString('latin1'));
      return Promise.reject(new Error(`connection closed while waiting for ${what}${this.error ? ` (${this.error.message})` : ''}; unread: ${seen}`));
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = null;
        reject(new Error(`timed out waiting for ${what}; unread: ${JSON.stringify(this.buffer.toString('latin1'))}`));
      }, Math.max(0, deadline - Date.now()));
      this.waiter = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }
}

/** base64 of a SASL PLAIN message: authzid NUL authcid NUL password. */
export function saslPlain(user: string, password: string, authzid = ''): string {
  return Buffer.from(`${authzid}\0${user}\0${password}`, 'utf8').toString('base64');
}

export function b64(text: string): string {
  return Buffer.from(text, 'utf8').toString('base64');
}

/** The lines of a multi-line answer between the status line and ".", without CRLF or dot-stuffing. */
export function multilineBody(block: string): string[] {
  const lines = block.split('\r\n');
  // status line first, then body lines, then "." and the empty string after the last CRLF
  if (lines[lines.length - 1] !== '' || lines[lines.length - 2] !== '.') throw new Error(`not a complete multi-line answer: ${JSON.stringify(block)}`);
  return lines.slice(1, -2).map((l) => (l.startsWith('..') ? l.slice(1) : l));
}
