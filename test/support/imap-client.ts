/**
 * A tiny raw IMAP client for exact-byte protocol checks in integration tests.
 *
 * It speaks no IMAP by itself: tests write the bytes they mean to send and
 * read back exactly what the server answered. Reading is line oriented, with
 * one convenience: a line that ends with a literal announcement `{n}` is
 * followed by its n bytes, so a FETCH response (even a 20 MiB one) can be
 * read as one piece.
 *
 * Always loopback: connects to 127.0.0.1 and, over TLS, verifies the server
 * certificate against the test CA as 'localhost'.
 */
import { readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { generateSync } from 'otplib';

export interface RawImapOptions {
  port: number;
  /** Implicit TLS from the first byte (IMAPS); otherwise plain TCP (STARTTLS later if wanted). */
  tls: boolean;
  /** CA file (PEM) to verify the server against; required for TLS. */
  ca?: string;
  /** Name to verify the certificate against (and SNI); default 'localhost'. */
  servername?: string;
  /** Deadline for each read, default 5 s. */
  timeoutMs?: number;
}

const LITERAL_AT_END = /\{(\d+)\+?\}\r\n$/;

export class RawImap {
  socket: net.Socket;
  private chunks: Buffer[] = [];
  private length = 0;
  private waiter: (() => void) | null = null;
  private ended = false;
  private error: Error | null = null;
  /** Every byte received, in order (for byte-equality checks across connections). */
  private transcript: Buffer[] = [];
  private readonly timeoutMs: number;
  readonly closed: Promise<void>;
  private onData = (chunk: Buffer) => {
    this.chunks.push(chunk);
    this.transcript.push(chunk);
    this.length += chunk.length;
    this.wake();
  };

  private constructor(
    socket: net.Socket,
    private readonly options: RawImapOptions,
  ) {
    this.socket = socket;
    this.timeoutMs = options.timeoutMs ?? 5_000;
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    this.attach(socket);
  }

  static connect(options: RawImapOptions): Promise<RawImap> {
    return new Promise((resolve, reject) => {
      let socket: net.Socket;
      if (options.tls) {
        socket = tls.connect({
          host: '127.0.0.1',
          port: options.port,
          ca: readFileSync(requireCa(options)),
          servername: options.servername ?? 'localhost',
          minVersion: 'TLSv1.2',
        });
      } else {
        socket = net.connect({ host: '127.0.0.1', port: options.port });
      }
      const ready = options.tls ? 'secureConnect' : 'connect';
      const client = new RawImap(socket, options);
      const fail = (err: Error) => reject(err);
      socket.once('error', fail);
      socket.once(ready, () => {
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
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  private port = 0;

  /** Our end's port (remembered, so it is still known after the close). */
  get localPort(): number {
    if (this.port === 0) this.port = this.socket.localPort ?? 0;
    return this.port;
  }

  get bufferedBytes(): number {
    return this.length;
  }

  /** All bytes received so far, as text (latin1 keeps bytes 1:1). */
  transcriptText(): string {
    return Buffer.concat(this.transcript).toString('latin1');
  }

  send(data: string | Buffer): void {
    this.socket.write(typeof data === 'string' ? Buffer.from(data, 'utf8') : data);
  }

  private async waitFor(check: () => boolean, what: string): Promise<void> {
    const deadline = Date.now() + this.timeoutMs;
    while (!check()) {
      if (this.error) throw new Error(`RawImap: socket error while waiting for ${what}: ${this.error.message}`);
      if (this.ended) throw new Error(`RawImap: connection closed while waiting for ${what}; got ${JSON.stringify(this.peek())}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`RawImap: timed out waiting for ${what}; got ${JSON.stringify(this.peek())}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }

  private peek(): string {
    return Buffer.concat(this.chunks).toString('latin1').slice(0, 500);
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
    const out = all.subarray(0, n);
    const rest = all.subarray(n);
    this.chunks = rest.length > 0 ? [rest] : [];
    this.length = rest.length;
    return out;
  }

  /** The next line, including its CRLF, as latin1 text. */
  async readLine(): Promise<string> {
    await this.waitFor(() => this.indexOfLf() >= 0, 'a line');
    return this.take(this.indexOfLf() + 1).toString('latin1');
  }

  /** Exactly n bytes. */
  async readBytes(n: number): Promise<Buffer> {
    await this.waitFor(() => this.length >= n, `${n} bytes`);
    return Buffer.from(this.take(n));
  }

  /**
   * Everything up to and including the line tagged `tag`, with CRLFs, as raw
   * bytes; literals announced at the end of a line are read whole.
   */
  async readUntilTaggedBytes(tag: string): Promise<Buffer> {
    const parts: Buffer[] = [];
    for (;;) {
      const line = await this.readLine();
      parts.push(Buffer.from(line, 'latin1'));
      if (line.startsWith(`${tag} `)) return Buffer.concat(parts);
      const literal = LITERAL_AT_END.exec(line);
      if (literal) parts.push(await this.readBytes(Number(literal[1])));
    }
  }

  /** Like readUntilTaggedBytes, as latin1 text. */
  async readUntilTagged(tag: string): Promise<string> {
    return (await this.readUntilTaggedBytes(tag)).toString('latin1');
  }

  /** Sends `tag command\r\n` and returns the whole answer up to the tagged line. */
  async command(tag: string, command: string): Promise<string> {
    this.send(`${tag} ${command}\r\n`);
    return this.readUntilTagged(tag);
  }

  /**
   * Sends `tag command` (a FETCH of one message body) and returns the bytes of
   * the one literal in its answer; fails unless the answer ends with `tag OK`.
   */
  async readFetchedLiteral(taggedCommand: string): Promise<Buffer> {
    const tag = taggedCommand.split(' ')[0]!;
    this.send(`${taggedCommand}\r\n`);
    let literal: Buffer | null = null;
    for (;;) {
      const line = await this.readLine();
      if (line.startsWith(`${tag} `)) {
        if (!line.startsWith(`${tag} OK`)) throw new Error(`RawImap: ${taggedCommand} failed: ${line}`);
        if (!literal) throw new Error(`RawImap: no literal in the answer to ${taggedCommand}`);
        return literal;
      }
      const m = LITERAL_AT_END.exec(line);
      if (m) {
        const data = await this.readBytes(Number(m[1]));
        literal ??= data;
      }
    }
  }

  /**
   * Client side of STARTTLS, after the server's OK was read: upgrades the
   * socket and verifies the certificate. Returns how many plaintext bytes were
   * still unread when the handshake started (anything there would be an injection).
   */
  async upgrade(): Promise<number> {
    const plain = this.socket;
    plain.removeListener('data', this.onData);
    const leftover = this.length;
    const secure = tls.connect({
      socket: plain,
      ca: readFileSync(requireCa(this.options)),
      servername: this.options.servername ?? 'localhost',
      minVersion: 'TLSv1.2',
    });
    await new Promise<void>((resolve, reject) => {
      secure.once('secureConnect', () => resolve());
      secure.once('error', reject);
    });
    this.socket = secure;
    this.attach(secure);
    return leftover;
  }

  /** TLS version of the connection, or null on plain TCP. */
  get tlsVersion(): string | null {
    return this.socket instanceof tls.TLSSocket ? this.socket.getProtocol() : null;
  }

  /** Resolves once the server closed the connection (within the read deadline), with what was left unread. */
  async waitClosed(): Promise<string> {
    const deadline = Date.now() + this.timeoutMs;
    while (!this.ended) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`RawImap: the server did not close the connection; unread ${JSON.stringify(this.peek())}`);
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

  /** Hangs up without LOGOUT and waits for the socket to close. */
  async destroy(): Promise<void> {
    this.socket.destroy();
    await this.closed;
  }

  /** Ends our side politely and waits for the close. */
  async end(): Promise<void> {
    this.socket.end();
    await Promise.race([this.closed, new Promise((r) => setTimeout(r, 2_000))]);
    this.socket.destroy();
  }
}

function requireCa(options: RawImapOptions): string {
  if (!options.ca) throw new Error('RawImap: TLS needs the test CA file');
  return options.ca;
}

/** base64 of a SASL PLAIN message: authzid NUL authcid NUL password. */
export function saslPlain(authcid: string, password: string, authzid = ''): string {
  return Buffer.from(`${authzid}\0${authcid}\0${password}`, 'utf8').toString('base64');
}

export function b64(text: string): string {
  return Buffer.from(text, 'utf8').toString('base64');
}

/** Resolves when `check` holds, polling; for log lines that arrive a moment later. */
export async function waitUntil<T>(check: () => T | undefined | null | false | Promise<T | undefined | null | false>, what: string, timeoutMs = 5_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Turns two-step verification on for `user` (an existing store account); returns the TOTP secret. */
export function enableTotp(store: { totp: { enroll(u: string): { secret: string }; confirm(u: string, code: string): unknown } }, user: string, epochMs = Date.now()): string {
  const { secret } = store.totp.enroll(user);
  store.totp.confirm(user, generateSync({ secret, epoch: Math.floor(epochMs / 1000) }));
  return secret;
}

type LogLine = Record<string, unknown>;

/** The gateway's log lines with this message (and, optionally, these field values). */
export function logLines(logs: () => LogLine[], msg: string, fields: LogLine = {}): LogLine[] {
  return logs().filter((l) => l.msg === msg && Object.entries(fields).every(([k, v]) => l[k] === v));
}

/** Waits for the one `session closed` line of the session from this client port. */
export function sessionClosed(logs: () => LogLine[], clientPort: number, timeoutMs = 5_000): Promise<LogLine> {
  return waitUntil(() => logLines(logs, 'session closed', { clientPort })[0], `session closed for client port ${clientPort}`, timeoutMs);
}

/** The standard credential-failure answer: the ALERT line, then the tagged NO. */
export function credentialFailure(tag: string, helpUrl: string): string {
  return (
    `* NO [ALERT] Sign-in failed. If your account has 2-step verification, sign in with an app password, not your account password: ${helpUrl}\r\n` +
    `${tag} NO [AUTHENTICATIONFAILED] Authentication failed.\r\n`
  );
}
