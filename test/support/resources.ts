/**
 * Leak checks: the process's live sockets and timers, by type, as Node
 * reports them (process.getActiveResourcesInfo(): only what keeps the event
 * loop alive, so unref'd safety timers do not count). The gateway, its test
 * clients and the fake peers all run in the test process, so a socket or
 * timer the gateway forgot shows up here.
 */
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
