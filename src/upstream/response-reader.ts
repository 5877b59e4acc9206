/**
 * Reads the upstream's responses line by line during the login dialogue,
 * with a deadline per response. Once the login is done it hands back any
 * bytes that arrived after the last line read, so the relay can forward them.
 */
import type { Socket } from 'node:net';
import { FIXED_LIMITS } from '../config/limits.js';
import { LineBuffer } from '../protocols/line-buffer.js';
import { UpstreamError } from './connect.js';

function ignoreError(): void {}

/** Upstream lines are trusted more than client lines, but still bounded. */
const MAX_UPSTREAM_LINE = FIXED_LIMITS.upstream_max_line_bytes;

export class ResponseReader {
  private readonly buffer = new LineBuffer();
  private waiter: { resolve: () => void; reject: (err: Error) => void } | null = null;
  private failure: Error | null = null;
  private readonly onData = (chunk: Buffer) => {
    this.buffer.push(chunk);
    this.wake();
  };
  private readonly onEnd = () => this.fail(new UpstreamError('the upstream closed the connection'));
  private readonly onError = (err: Error) => this.fail(new UpstreamError(`upstream connection error: ${err.message}`));

  constructor(
    private socket: Socket,
    private readonly timeoutMs: number,
  ) {
    this.attach();
  }

  /** The next line, without its CRLF; rejects on timeout, close or error. */
  async readLine(): Promise<string> {
    const deadline = Date.now() + this.timeoutMs;
    for (;;) {
      const result = this.buffer.readLine(MAX_UPSTREAM_LINE);
      if (result.kind === 'line') return result.line.toString('utf8');
      if (result.kind === 'too-long') throw new UpstreamError('the upstream sent an over-long line');
      if (this.failure) throw this.failure;
      await this.waitForData(deadline);
    }
  }

  /** Bytes received but not yet read as lines. */
  get pendingBytes(): number {
    return this.buffer.bufferedBytes;
  }

  /** Stops listening and returns the unread bytes (for the relay). */
  detach(): Buffer {
    this.socket.removeListener('data', this.onData);
    this.socket.removeListener('end', this.onEnd);
    this.socket.removeListener('error', this.onError);
    // Until the relay attaches its own handlers, an error (a reset upstream)
    // must not become an uncaught exception; the relay sees the close.
    if (this.socket.listenerCount('error') === 0) this.socket.on('error', ignoreError);
    this.socket.pause();
    // A read still waiting (the dialogue was abandoned: the client left) ends
    // now, and its deadline timer with it, instead of ticking on for seconds.
    const waiter = this.waiter;
    this.waiter = null;
    waiter?.reject(new UpstreamError('the upstream login was abandoned'));
    return this.buffer.takeAll();
  }

  /** Moves to a new socket (after a STARTTLS upgrade); unread bytes must already be dealt with. */
  switchTo(socket: Socket): void {
    this.detach();
    this.failure = null;
    this.socket = socket;
    this.attach();
  }

  private attach(): void {
    this.socket.on('data', this.onData);
    this.socket.on('end', this.onEnd);
    this.socket.on('error', this.onError);
    this.socket.resume();
  }

  private waitForData(deadline: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = null;
        reject(new UpstreamError('the upstream did not answer in time'));
      }, Math.max(0, deadline - Date.now()));
      this.waiter = {
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
        reject: (err) => {
          clearTimeout(timer);
          reject(err);
        },
      };
    });
  }

  private wake(): void {
    const waiter = this.waiter;
    this.waiter = null;
    waiter?.resolve();
  }

  private fail(err: Error): void {
    this.failure ??= err;
    const waiter = this.waiter;
    this.waiter = null;
    waiter?.reject(err);
  }
}
