/**
 * A minimal IMAP client for timing: node:tls (or node:net for the plain
 * upstream baseline), line reading with literal skipping (a 20 MiB FETCH is
 * counted, never buffered), and high-resolution timestamps for each phase.
 */
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import tls from 'node:tls';
import { sleep } from './proc.js';

export interface Endpoint {
  host: string;
  port: number;
  /** Implicit TLS from the first byte; false is plain TCP. */
  tls: boolean;
  /** PEM CA to verify the server's certificate against, as 'localhost'. */
  ca?: string | Buffer;
}

export interface TaggedResult {
  status: 'OK' | 'NO' | 'BAD' | 'BYE';
  line: string;
  untagged: string[];
  /** Bytes of literals inside the response. */
  literalBytes: number;
}

/**
 * One client TLS context per endpoint: creating one per connection (what
 * passing `ca` to tls.connect does) costs the client several ms of CPU per
 * handshake and would be measured as server latency.
 */
const contexts = new WeakMap<Endpoint, tls.SecureContext>();
function clientContext(ep: Endpoint): tls.SecureContext {
  let ctx = contexts.get(ep);
  if (!ctx) {
    ctx = tls.createSecureContext({ ...(ep.ca ? { ca: ep.ca } : {}), minVersion: 'TLSv1.2' });
    contexts.set(ep, ctx);
  }
  return ctx;
}

const LITERAL_AT_END = /\{(\d+)\+?\}\r?\n$/;
const MAX_LINE = 1024 * 1024;

export class ImapError extends Error {}

export class ImapConn {
  private partial: Buffer[] = [];
  private partialLength = 0;
  private literalLeft = 0;
  /** The text of a response line interrupted by literals, without them. */
  private pendingLine = '';
  private literalBytes = 0;
  private lines: string[] = [];
  private waiter: (() => void) | null = null;
  private failure: Error | null = null;
  closed = false;
  readonly closedPromise: Promise<void>;
  cipher = '';
  protocol = '';

  private constructor(readonly socket: net.Socket) {
    this.closedPromise = new Promise((resolve) =>
      socket.once('close', () => {
        this.closed = true;
        this.failure ??= new ImapError('connection closed');
        this.wake();
        resolve();
      }),
    );
    socket.on('error', (err) => {
      this.failure ??= err;
      this.wake();
    });
    socket.on('data', (chunk: Buffer) => this.feed(chunk));
  }

  /**
   * Connects (and completes the TLS handshake for TLS endpoints). `localAddress`
   * picks the client's source address (127.0.0.x).
   */
  static connect(ep: Endpoint, opts: { localAddress?: string; timeoutMs?: number } = {}): Promise<ImapConn> {
    const timeoutMs = opts.timeoutMs ?? 30_000;
    return new Promise((resolve, reject) => {
      let socket: net.Socket;
      const ready = () => {
        clearTimeout(timer);
        socket.removeListener('error', fail);
        socket.setNoDelay(true);
        const conn = new ImapConn(socket);
        if (socket instanceof tls.TLSSocket) {
          conn.cipher = socket.getCipher()?.name ?? '';
          conn.protocol = socket.getProtocol() ?? '';
        }
        resolve(conn);
      };
      const fail = (err: Error) => {
        clearTimeout(timer);
        socket.destroy();
        reject(err);
      };
      if (ep.tls) {
        socket = tls.connect(
          {
            host: ep.host,
            port: ep.port,
            secureContext: clientContext(ep),
            servername: 'localhost',
            ...(opts.localAddress ? { localAddress: opts.localAddress } : {}),
          },
          ready,
        );
      } else {
        socket = net.connect({ host: ep.host, port: ep.port, ...(opts.localAddress ? { localAddress: opts.localAddress } : {}) }, ready);
      }
      socket.once('error', fail);
      const timer = setTimeout(() => fail(new ImapError(`connect to ${ep.host}:${ep.port} timed out`)), timeoutMs);
    });
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  private feed(chunk: Buffer): void {
    let off = 0;
    while (off < chunk.length) {
      if (this.literalLeft > 0) {
        const take = Math.min(this.literalLeft, chunk.length - off);
        this.literalLeft -= take;
        this.literalBytes += take;
        off += take;
        continue;
      }
      const nl = chunk.indexOf(10, off);
      if (nl < 0) {
        this.partial.push(chunk.subarray(off));
        this.partialLength += chunk.length - off;
        if (this.partialLength > MAX_LINE) {
          this.failure = new ImapError('line too long');
          this.socket.destroy();
        }
        return;
      }
      let lineBuf = chunk.subarray(off, nl + 1);
      if (this.partial.length > 0) {
        this.partial.push(lineBuf);
        lineBuf = Buffer.concat(this.partial);
        this.partial = [];
        this.partialLength = 0;
      }
      off = nl + 1;
      const text = lineBuf.toString('latin1');
      const lit = LITERAL_AT_END.exec(text);
      if (lit) {
        this.pendingLine += text.slice(0, lit.index);
        this.literalLeft = Number(lit[1]);
        continue;
      }
      this.lines.push(this.pendingLine + text.replace(/\r?\n$/, ''));
      this.pendingLine = '';
    }
    if (this.lines.length > 0) this.wake();
  }

  /** The next complete response line (literals skipped). */
  async readLine(timeoutMs = 30_000): Promise<string> {
    for (;;) {
      const line = this.lines.shift();
      if (line !== undefined) return line;
      if (this.failure) throw this.failure;
      let timer: NodeJS.Timeout | undefined;
      await new Promise<void>((resolve) => {
        this.waiter = resolve;
        timer = setTimeout(() => {
          this.failure ??= new ImapError('read timed out');
          resolve();
        }, timeoutMs);
      });
      clearTimeout(timer);
    }
  }

  async greeting(timeoutMs?: number): Promise<string> {
    const line = await this.readLine(timeoutMs);
    if (!/^\* (OK|PREAUTH)\b/i.test(line)) throw new ImapError(`unexpected greeting: ${line.slice(0, 200)}`);
    return line;
  }

  /** Sends `tag text` and reads up to the tagged answer. */
  async command(tag: string, text: string, timeoutMs?: number): Promise<TaggedResult> {
    this.literalBytes = 0;
    this.socket.write(`${tag} ${text}\r\n`);
    return this.readTagged(tag, timeoutMs);
  }

  async readTagged(tag: string, timeoutMs?: number): Promise<TaggedResult> {
    const untagged: string[] = [];
    for (;;) {
      let line: string;
      try {
        line = await this.readLine(timeoutMs);
      } catch (err) {
        // A server that says BYE and closes (LOGOUT, or a refusal) answered.
        const bye = untagged.find((l) => /^\* BYE\b/i.test(l));
        if (bye && this.closed) return { status: 'BYE', line: bye, untagged, literalBytes: this.literalBytes };
        throw err;
      }
      if (line.startsWith(`${tag} `)) {
        const status = line.slice(tag.length + 1, tag.length + 4).toUpperCase().replace(/ $/, '');
        return { status: (status === 'OK' || status === 'NO' || status === 'BAD' ? status : 'BAD') as TaggedResult['status'], line, untagged, literalBytes: this.literalBytes };
      }
      untagged.push(line);
    }
  }

  destroy(): void {
    this.socket.destroy();
  }
}

export function quote(s: string): string {
  return `"${s.replace(/[\\"]/g, (c) => `\\${c}`)}"`;
}

export interface CycleTiming {
  ok: boolean;
  /** ms from connect() to the tagged OK of LOGIN: the login latency a client sees. */
  loggedIn: number;
  /** ms from connect() to the tagged answer of LOGOUT (the whole cycle; NaN when LOGOUT was not awaited). */
  total: number;
  /** ms for TCP connect + TLS handshake. */
  connect: number;
  /** ms from connected to the greeting. */
  greeting: number;
  /** ms from sending LOGIN to its tagged OK. */
  login: number;
  /** ms from sending LOGOUT to its tagged OK. */
  logout: number;
  error?: string;
}

/**
 * One full client login cycle: connect, TLS handshake, greeting, LOGIN,
 * LOGOUT (until its tagged OK, unless `waitLogout` is false: then LOGOUT is
 * sent and the connection closed at once). The connection is closed afterwards.
 */
export async function loginCycle(
  ep: Endpoint,
  user: string,
  password: string,
  opts: { localAddress?: string; timeoutMs?: number; waitLogout?: boolean } = {},
): Promise<CycleTiming> {
  const t0 = performance.now();
  let conn: ImapConn | null = null;
  const timing: CycleTiming = { ok: false, loggedIn: 0, total: 0, connect: 0, greeting: 0, login: 0, logout: 0 };
  try {
    conn = await ImapConn.connect(ep, opts);
    const t1 = performance.now();
    await conn.greeting(opts.timeoutMs);
    const t2 = performance.now();
    const login = await conn.command('a1', `LOGIN ${quote(user)} ${quote(password)}`, opts.timeoutMs);
    const t3 = performance.now();
    if (login.status !== 'OK') throw new ImapError(`LOGIN: ${login.line.slice(0, 200)}`);
    Object.assign(timing, { loggedIn: t3 - t0, connect: t1 - t0, greeting: t2 - t1, login: t3 - t2, total: Number.NaN, logout: Number.NaN });
    if (opts.waitLogout === false) {
      conn.socket.end('a2 LOGOUT\r\n');
      timing.ok = true;
      return timing;
    }
    const logout = await conn.command('a2', 'LOGOUT', opts.timeoutMs);
    const t4 = performance.now();
    if (logout.status !== 'OK' && logout.status !== 'BYE') throw new ImapError(`LOGOUT: ${logout.line.slice(0, 200)}`);
    Object.assign(timing, { ok: true, total: t4 - t0, logout: t4 - t3 });
  } catch (err) {
    timing.error = (err as Error).message;
    timing.total = performance.now() - t0;
  } finally {
    if (conn && opts.waitLogout === false && timing.ok) {
      // Closed by end() above; make sure it goes even if the peer never answers.
      setTimeout(() => conn!.destroy(), 5_000).unref();
    } else {
      conn?.destroy();
    }
  }
  return timing;
}

/** Connects and logs in; returns the open session (or throws). */
export async function openSession(ep: Endpoint, user: string, password: string, opts: { localAddress?: string; timeoutMs?: number } = {}): Promise<ImapConn> {
  const conn = await ImapConn.connect(ep, opts);
  try {
    await conn.greeting(opts.timeoutMs);
    const login = await conn.command('a1', `LOGIN ${quote(user)} ${quote(password)}`, opts.timeoutMs);
    if (login.status !== 'OK') throw new ImapError(`LOGIN: ${login.line.slice(0, 200)}`);
    return conn;
  } catch (err) {
    conn.destroy();
    throw err;
  }
}

/**
 * Waits until a server just started greets on its implicit-TLS IMAP port,
 * failing at once if the process exits meanwhile. `output` (what the
 * process said) goes into either error; `ready` is any other check that
 * must pass first.
 */
export async function waitForGreeting(
  ep: Endpoint,
  opts: { label: string; timeoutMs: number; exited: () => boolean; output: () => Promise<string>; ready?: () => Promise<unknown> },
): Promise<void> {
  const deadline = Date.now() + opts.timeoutMs;
  for (;;) {
    if (opts.exited()) throw new Error(`${opts.label} exited during start-up:\n${await opts.output()}`);
    if (Date.now() > deadline) throw new Error(`${opts.label} did not come up within ${opts.timeoutMs / 1000} s:\n${await opts.output()}`);
    try {
      await opts.ready?.();
      const conn = await ImapConn.connect(ep, { timeoutMs: 2000 });
      await conn.greeting(2000);
      conn.destroy();
      return;
    } catch {
      await sleep(50);
    }
  }
}
