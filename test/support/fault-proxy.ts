/**
 * A TCP proxy on 127.0.0.1 that sits between mailgate and the REAL Dovecot
 * and misbehaves on cue: it can stay silent, hold back the server's
 * greeting, go quiet right after the server's STARTTLS/STLS go-ahead (so the
 * TLS handshake never completes), stop reading what mailgate sends, or reset.
 * Dovecot itself cannot be made slow or silent on demand; with the proxy the
 * peer is still the real server whenever the test lets bytes through.
 *
 * It also counts the bytes it read from each side, per connection, so a test
 * can see how much mailgate pulled from the server (backpressure) and that
 * every connection got closed (no leak).
 */
import net from 'node:net';

export type ProxyFault =
  /** A transparent pipe with backpressure both ways. */
  | { kind: 'pass' }
  /** Accepts, never connects to the server, never sends a byte. */
  | { kind: 'silent' }
  /** Connects to the server at once but forwards nothing from it for `ms`. */
  | { kind: 'delay-greeting'; ms: number }
  /** Forwards the login dialogue up to the server's answer to STARTTLS/STLS, then nothing either way. */
  | { kind: 'stall-after-starttls' };

export interface ProxyConnection {
  readonly id: number;
  readonly fault: ProxyFault;
  /** Bytes read from the real server so far. */
  readonly fromServer: number;
  /** Bytes read from mailgate so far. */
  readonly fromGateway: number;
  /** True once both of its sockets are closed. */
  readonly closed: boolean;
  /** Stops reading from mailgate (pass mode): mailgate's writes back up. */
  holdGatewayBytes(): void;
  releaseGatewayBytes(): void;
  /** Resets the connection towards mailgate (and closes the server side). */
  reset(): void;
}

export interface FaultProxy {
  readonly port: number;
  /** The behaviour of connections accepted from now on. */
  fault: ProxyFault;
  readonly connections: readonly ProxyConnection[];
  /** Connections with a socket still open. */
  openConnections(): number;
  close(): Promise<void>;
}

const STARTTLS_COMMAND = /\b(STARTTLS|STLS)\r?\n/i;

export async function startFaultProxy(target: { host?: string; port: number }, initial: ProxyFault = { kind: 'pass' }): Promise<FaultProxy> {
  const host = target.host ?? '127.0.0.1';
  const connections: ProxyConnection[] = [];
  const sockets = new Set<net.Socket>();
  const track = (s: net.Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => s.destroy());
  };
  let nextId = 1;

  const server = net.createServer((front) => {
    track(front);
    const fault = proxy.fault;
    let back: net.Socket | null = null;
    let timer: NodeJS.Timeout | null = null;
    const closeBoth = () => {
      if (timer) clearTimeout(timer);
      front.destroy();
      back?.destroy();
    };
    front.on('close', closeBoth);
    const conn: ProxyConnection = {
      id: nextId++,
      fault,
      get fromServer() {
        return back?.bytesRead ?? 0;
      },
      get fromGateway() {
        return front.bytesRead;
      },
      get closed() {
        return front.destroyed && (back === null || back.destroyed);
      },
      holdGatewayBytes() {
        if (back) front.unpipe(back);
        front.pause();
      },
      releaseGatewayBytes() {
        if (back) front.pipe(back);
      },
      reset() {
        if (timer) clearTimeout(timer);
        front.resetAndDestroy();
        back?.destroy();
      },
    };
    connections.push(conn);

    if (fault.kind === 'silent') {
      front.resume(); // read and drop: silence, not a full receive window
      return;
    }
    back = net.connect({ host, port: target.port });
    track(back);
    back.on('close', closeBoth);
    const server = back;
    if (fault.kind === 'pass') {
      front.pipe(server);
      server.pipe(front);
    } else if (fault.kind === 'delay-greeting') {
      front.pipe(server);
      server.pause();
      timer = setTimeout(() => server.pipe(front), fault.ms);
    } else {
      stallAfterStartTls(front, server);
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: '127.0.0.1', port: 0 }, () => resolve());
  });

  const proxy: FaultProxy = {
    port: (server.address() as net.AddressInfo).port,
    fault: initial,
    connections,
    openConnections: () => connections.filter((c) => !c.closed).length,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
  return proxy;
}

/**
 * Login dialogues are small, so this mode forwards chunk by chunk without
 * backpressure: once mailgate has sent STARTTLS/STLS and the server's next
 * line (its go-ahead) has been passed on, everything else is dropped, so the
 * TLS handshake hangs.
 */
function stallAfterStartTls(front: net.Socket, server: net.Socket): void {
  let asked = false;
  let stalled = false;
  front.on('data', (chunk: Buffer) => {
    if (stalled) return;
    server.write(chunk);
    if (STARTTLS_COMMAND.test(chunk.toString('latin1'))) asked = true;
  });
  server.on('data', (chunk: Buffer) => {
    if (stalled) return;
    front.write(chunk);
    if (asked && chunk.includes(0x0a)) stalled = true;
  });
}
