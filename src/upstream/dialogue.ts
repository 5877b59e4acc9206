/**
 * What the IMAP and POP3 login dialogues share: the socket and its line
 * reader (which move to the TLS socket after STARTTLS), writes that fail as
 * UpstreamError, and the wrapper that turns the dialogue's outcome into an
 * UpstreamLoginResult and never leaves a socket behind.
 */
import type { Socket } from 'node:net';
import { connectUpstream, UpstreamError, type UpstreamTarget } from './connect.js';
import type { UpstreamLoginResult } from './credentials.js';
import { ResponseReader } from './response-reader.js';
import { errorMessage } from '../errors.js';

/** The upstream refused the credentials themselves (or, POP3, the mailbox is busy). */
export class UpstreamRejected extends Error {
  constructor(
    readonly reason: string,
    readonly code: string | null,
  ) {
    super(reason);
  }
}

/** The upstream took the master credentials but does not know the account to act as. */
export class UpstreamNoSuchAccount extends UpstreamRejected {}

export abstract class UpstreamDialogue {
  protected socket: Socket;
  protected reader: ResponseReader;

  constructor(socket: Socket, responseTimeoutMs: number) {
    this.socket = socket;
    this.reader = new ResponseReader(socket, responseTimeoutMs);
  }

  abstract run(): Promise<UpstreamLoginResult>;

  destroy(): void {
    this.reader.detach();
    this.socket.destroy();
  }

  /** After STARTTLS/STLS: read and write over the TLS socket from now on. */
  protected switchTo(socket: Socket): void {
    this.socket = socket;
    this.reader.switchTo(socket);
  }

  protected write(data: Buffer): Promise<void> {
    return new Promise((resolve, reject) => {
      this.socket.write(data, (err) => (err ? reject(new UpstreamError(`writing to the upstream failed: ${err.message}`)) : resolve()));
    });
  }
}

/**
 * Connects, runs the dialogue, and maps every way it can end to a result.
 * When `clientLeft` fires (the client hung up), the dialogue is abandoned and
 * its connection closed: there is no one left to log in for.
 */
export async function runLoginDialogue(
  target: UpstreamTarget,
  connectTimeoutMs: number,
  create: (socket: Socket) => UpstreamDialogue,
  clientLeft?: AbortSignal,
): Promise<UpstreamLoginResult> {
  let dialogue: UpstreamDialogue | null = null;
  let onAbort: (() => void) | null = null;
  const abandoned = new Promise<never>((_, reject) => {
    onAbort = () => reject(new UpstreamError('the client left during the upstream login'));
    if (clientLeft?.aborted) onAbort();
    else clientLeft?.addEventListener('abort', onAbort, { once: true });
  });
  // The losers of the races below settle later; nobody awaits them.
  abandoned.catch(() => undefined);
  const connecting = connectUpstream(target, connectTimeoutMs);
  connecting.catch(() => undefined);
  try {
    const socket = await Promise.race([connecting, abandoned]);
    dialogue = create(socket);
    const running = dialogue.run();
    running.catch(() => undefined);
    return await Promise.race([running, abandoned]);
  } catch (err) {
    if (dialogue) dialogue.destroy();
    // Abandoned while still connecting: close the connection when it comes.
    else connecting.then((socket) => socket.destroy(), () => undefined);
    if (err instanceof UpstreamNoSuchAccount) return { ok: false, kind: 'no-such-account', reason: err.reason, code: err.code };
    if (err instanceof UpstreamRejected) return { ok: false, kind: 'rejected', reason: err.reason, code: err.code };
    return { ok: false, kind: 'unavailable', reason: errorMessage(err), code: null };
  } finally {
    if (onAbort) clientLeft?.removeEventListener('abort', onAbort);
  }
}
