/**
 * After login: a plain two-way pipe between the client and the upstream.
 *
 * Node's pipe() gives backpressure (a slow reader pauses the fast writer) and
 * no JavaScript runs per chunk beyond the streams themselves. When either side
 * ends, errors or goes idle, both are closed, and the listeners go with the
 * sockets. Byte counts are read from the sockets once, at the end.
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

  constructor(
    private readonly client: Socket,
    private readonly upstream: Socket,
    private readonly options: RelayOptions,
  ) {
    this.wire(client, upstream, 'client');
    this.wire(upstream, client, 'upstream');
    if (options.toUpstream.length > 0) upstream.write(options.toUpstream);
    if (options.toClient.length > 0) client.write(options.toClient);
    // Node counts reads and writes as activity, so one timer on the client
    // covers traffic in both directions (IDLE keep-alives included).
    client.setTimeout(options.idleTimeoutMs, () => this.stop('idle-timeout'));
    upstream.setTimeout(0);
    client.pipe(upstream);
    upstream.pipe(client);
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
    this.client.unpipe(this.upstream);
    this.upstream.unpipe(this.client);
    if (farewell && this.client.writable) this.client.end(farewell);
    else this.client.destroy();
    this.upstream.destroy();
    // A client that never reads its farewell must not hold the socket open.
    setTimeout(() => this.client.destroy(), 2000).unref();
  }

  private wire(from: Socket, to: Socket, side: 'client' | 'upstream'): void {
    from.on('end', () => {
      if (this.reason === null) this.reason = side === 'client' ? 'client-closed' : 'upstream-closed';
      // pipe() ends `to` for us; nothing else to do.
    });
    from.on('error', () => {
      if (this.reason === null) this.reason = side === 'client' ? 'client-error' : 'upstream-error';
      to.destroy();
    });
    from.on('close', () => {
      // Whatever closed one side closes the other, so no half-dead pair lingers.
      if (this.reason === null) this.reason = side === 'client' ? 'client-closed' : 'upstream-closed';
      to.destroy();
      this.closedSides += 1;
      if (this.closedSides === 2) this.finish();
    });
  }

  private stop(reason: RelayResult['reason']): void {
    if (this.reason === null) this.reason = reason;
    this.client.destroy();
    this.upstream.destroy();
  }

  private finish(): void {
    this.options.onClose({
      reason: this.reason ?? 'client-closed',
      clientBytesIn: this.client.bytesRead,
      clientBytesOut: this.client.bytesWritten,
    });
  }
}
