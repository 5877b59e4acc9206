/**
 * After login: a plain two-way pipe between the client and the upstream.
 *
 * Each side's data is written to the other; a write the other side cannot
 * take yet pauses the reader until it drains (backpressure, as pipe() does).
 * No JavaScript runs per chunk beyond that. When either side ends, errors or
 * goes idle, both are closed, and the listeners go with the sockets. Byte
 * counts are read from the sockets once, at the end.
 *
 * An idle session holds a relay for hours, thousands at a time: the
 * listeners are created in one place (one closure context for all of them)
 * and pipe() is not used, as it adds nine closures and two event names per
 * direction that idle sessions would keep.
 */
import type { Socket } from 'node:net';

export interface RelayOptions {
  /** Bytes the client pipelined after its login command, sent upstream first. */
  toUpstream: Buffer;
  /** Bytes the upstream sent after its login confirmation, sent to the client first. */
  toClient: Buffer;
  /** Close both sides after this long with no traffic either way. */
  idleTimeoutMs: number;
  onClose: (result: RelayResult) => void;
}

export interface RelayResult {
  /** Why the relay ended, for the session log. */
  reason: 'client-closed' | 'upstream-closed' | 'client-error' | 'upstream-error' | 'idle-timeout' | 'terminated';
  /** Client -> gateway and gateway -> client bytes on the client socket, over the whole session. */
  clientBytesIn: number;
  clientBytesOut: number;
}

export class Relay {
  private reason: RelayResult['reason'] | null = null;
  private closedSides = 0;
  /** Kept alone: the options' buffers are written at once and not needed after. */
  private readonly onClose: (result: RelayResult) => void;

  constructor(
    private readonly client: Socket,
    private readonly upstream: Socket,
    options: RelayOptions,
  ) {
    this.onClose = options.onClose;
    // Every listener is made here, in one function, so all of them share one
    // closure context. A side that has ended or was destroyed takes no more
    // data: the relay is closing anyway (and a farewell must stay last).
    client.on('data', (chunk: Buffer) => {
      if (upstream.writable && !upstream.write(chunk)) client.pause();
    });
    upstream.on('data', (chunk: Buffer) => {
      if (client.writable && !client.write(chunk)) upstream.pause();
    });
    client.on('drain', () => upstream.resume());
    upstream.on('drain', () => client.resume());
    // A half-close is passed on, as pipe() would.
    client.on('end', () => {
      if (this.reason === null) this.reason = 'client-closed';
      upstream.end();
    });
    upstream.on('end', () => {
      if (this.reason === null) this.reason = 'upstream-closed';
      client.end();
    });
    client.on('error', () => {
      if (this.reason === null) this.reason = 'client-error';
      upstream.destroy();
    });
    upstream.on('error', () => {
      if (this.reason === null) this.reason = 'upstream-error';
      client.destroy();
    });
    // Whatever closed one side closes the other, so no half-dead pair lingers.
    client.on('close', () => this.sideClosed('client-closed', upstream));
    upstream.on('close', () => this.sideClosed('upstream-closed', client));
    if (options.toUpstream.length > 0) upstream.write(options.toUpstream);
    if (options.toClient.length > 0) client.write(options.toClient);
    // Node counts reads and writes as activity, so one timer on the client
    // covers traffic in both directions (IDLE keep-alives included). A plain
    // listener rather than setTimeout's callback, which Node wraps in once().
    client.setTimeout(options.idleTimeoutMs);
    client.on('timeout', () => this.stop('idle-timeout'));
    upstream.setTimeout(0);
    client.resume();
    upstream.resume();
    // A side that closed during the login (before its listeners existed) will
    // not emit 'close' again: count it now, and take the other side down.
    for (const [socket, other] of [[client, upstream], [upstream, client]] as const) {
      if (socket.closed) {
        this.reason ??= socket === client ? 'client-closed' : 'upstream-closed';
        this.closedSides += 1;
        other.destroy();
      }
    }
    if (this.closedSides === 2) process.nextTick(() => this.finish());
  }

  /** Ends the session from outside (revocation, shutdown); `farewell` goes to the client first. */
  terminate(farewell?: string): void {
    if (this.reason === null) this.reason = 'terminated';
    // Nothing from the upstream may follow the farewell.
    this.upstream.pause();
    if (farewell && this.client.writable) this.client.end(farewell);
    else this.client.destroy();
    this.upstream.destroy();
    // A client that never reads its farewell must not hold the socket open.
    setTimeout(() => this.client.destroy(), 2000).unref();
  }

  private sideClosed(reason: 'client-closed' | 'upstream-closed', other: Socket): void {
    if (this.reason === null) this.reason = reason;
    other.destroy();
    this.closedSides += 1;
    if (this.closedSides === 2) this.finish();
  }

  private stop(reason: RelayResult['reason']): void {
    if (this.reason === null) this.reason = reason;
    this.client.destroy();
    this.upstream.destroy();
  }

  private finish(): void {
    this.onClose({
      reason: this.reason ?? 'client-closed',
      clientBytesIn: this.client.bytesRead,
      clientBytesOut: this.client.bytesWritten,
    });
  }
}
