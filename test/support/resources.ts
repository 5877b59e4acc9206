/**
 * Leak checks: the process's live sockets and timers, by type, as Node
 * reports them (process.getActiveResourcesInfo(): only what keeps the event
 * loop alive, so unref'd safety timers do not count). The gateway, its test
 * clients and the fake peers all run in the test process, so a socket or
 * timer the gateway forgot shows up here.
 *
 * A check is always "nothing above the baseline" (resourcesBackTo), never
 * "equal to it": a socket of an earlier test that closes late may lower the
 * count, and must not fail a later test. Where a test must know that these
 * particular connections closed, it counts them by port
 * (openTcpConnections), which no unrelated socket can change.
 */
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { sleep } from './timing.js';

/** The resource types a leaked connection or timer shows up as. */
const WATCHED = ['TCPSocketWrap', 'TLSWrap', 'ConnectWrap', 'Timeout'] as const;

export type ResourceCounts = Record<(typeof WATCHED)[number], number>;

export function resourceCounts(): ResourceCounts {
  const counts = Object.fromEntries(WATCHED.map((type) => [type, 0])) as ResourceCounts;
  for (const type of process.getActiveResourcesInfo()) {
    if (type in counts) counts[type as keyof ResourceCounts] += 1;
  }
  return counts;
}

function same(a: ResourceCounts, b: ResourceCounts): boolean {
  return WATCHED.every((type) => a[type] === b[type]);
}

/**
 * The counts once they have not changed for `quietMs`: sockets and timers of
 * earlier tests that are still winding down must not become the baseline.
 */
export async function settledResources(quietMs = 500, timeoutMs = 10_000): Promise<ResourceCounts> {
  const deadline = Date.now() + timeoutMs;
  let last = resourceCounts();
  let since = Date.now();
  while (Date.now() - since < quietMs) {
    if (Date.now() > deadline) throw new Error(`resource counts never settled: ${JSON.stringify(last)}`);
    await sleep(25);
    const now = resourceCounts();
    if (!same(now, last)) {
      last = now;
      since = Date.now();
    }
  }
  return last;
}

/** Waits until no watched count is above `baseline`; throws with both counts otherwise. */
export async function resourcesBackTo(baseline: ResourceCounts, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const now = resourceCounts();
    if (WATCHED.every((type) => now[type] <= baseline[type])) return;
    if (Date.now() > deadline) {
      throw new Error(`sockets or timers leaked: ${JSON.stringify(now)}, baseline ${JSON.stringify(baseline)}`);
    }
    await sleep(20);
  }
}

export interface TcpConnection {
  localPort: number;
  remotePort: number;
  /** The kernel's TCP state, as /proc writes it: '01' established, '08' close-wait, ... */
  state: string;
}

/** Listening sockets are servers, not connections. */
const TCP_LISTEN = '0A';

/**
 * This process's open TCP connections, from /proc (Linux, as the suite's
 * Dovecot needs anyway): the sockets behind its file descriptors, listening
 * ones excluded. A connection shows up from its creation until its descriptor
 * is closed, whatever its TCP state, so a socket the gateway forgot to destroy
 * stays here even after the peer hung up. Filter by a port the test owns (its
 * gateway's listener, its Dovecot) to watch exactly its own connections.
 */
export function openTcpConnections(): TcpConnection[] {
  const inodes = new Set<string>();
  for (const fd of readdirSync('/proc/self/fd')) {
    let target: string;
    try {
      target = readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      continue; // closed while we looked
    }
    const inode = /^socket:\[(\d+)\]$/.exec(target)?.[1];
    if (inode) inodes.add(inode);
  }
  const found: TcpConnection[] = [];
  for (const table of ['/proc/self/net/tcp', '/proc/self/net/tcp6']) {
    let text: string;
    try {
      text = readFileSync(table, 'utf8');
    } catch {
      continue; // no IPv6 in this kernel
    }
    for (const line of text.split('\n').slice(1)) {
      // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ...
      const fields = line.trim().split(/\s+/);
      if (fields.length < 10 || fields[3] === TCP_LISTEN || !inodes.has(fields[9]!)) continue;
      const port = (address: string) => parseInt(address.slice(address.lastIndexOf(':') + 1), 16);
      found.push({ localPort: port(fields[1]!), remotePort: port(fields[2]!), state: fields[3]! });
    }
  }
  return found;
}
