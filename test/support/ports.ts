/**
 * Free TCP ports on loopback. The kernel picks them (listen on port 0), so
 * parallel workers get distinct ports. There is an unavoidable window between
 * closing our probe socket and the real server binding; callers that start
 * servers should retry on EADDRINUSE (startDovecot does).
 */
import net from 'node:net';

function listenEphemeral(host: string): Promise<net.Server> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', reject);
    // exclusive: do not share the handle with cluster workers.
    srv.listen({ host, port: 0, exclusive: true }, () => resolve(srv));
  });
}

function close(srv: net.Server): Promise<void> {
  return new Promise((resolve) => srv.close(() => resolve()));
}

function portOf(srv: net.Server): number {
  const addr = srv.address();
  if (addr === null || typeof addr === 'string') throw new Error('freePort: unexpected server address');
  return addr.port;
}

/** A port that was free on `host` a moment ago. */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  const [port] = await freePorts(1, host);
  return port as number;
}

/**
 * `n` distinct free ports on `host`. All probe sockets are held open at the
 * same time, so the kernel cannot hand out the same port twice.
 */
export async function freePorts(n: number, host = '127.0.0.1'): Promise<number[]> {
  if (!Number.isInteger(n) || n < 0) throw new RangeError(`freePorts: bad count ${n}`);
  const servers: net.Server[] = [];
  try {
    for (let i = 0; i < n; i++) servers.push(await listenEphemeral(host));
    return servers.map(portOf);
  } finally {
    await Promise.all(servers.map(close));
  }
}
