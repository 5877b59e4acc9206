/**
 * The unit that per-client limits count by. One IPv4 address is one client;
 * for IPv6, a /64 is one client, since a single host routinely holds a whole
 * /64 and could otherwise rotate addresses to escape every limit.
 */
import net from 'node:net';

export function clientKey(address: string): string {
  const ip = canonicalAddress(address);
  if (!net.isIPv6(ip)) return ip;
  return `${expandIpv6(ip).slice(0, 4).join(':')}::/64`;
}

/** The eight 16-bit groups of an IPv6 address, as lower-case hex without leading zeros. */
function expandIpv6(ip: string): string[] {
  const withoutZone = ip.split('%')[0]!;
  const [head, tail] = withoutZone.includes('::') ? withoutZone.split('::') : [withoutZone, undefined];
  const headGroups = head ? head.split(':') : [];
  const tailGroups = tail ? tail.split(':') : [];
  // An embedded IPv4 tail (::ffff:1.2.3.4 style) takes two groups.
  const last = tailGroups.length > 0 ? tailGroups : headGroups;
  if (last.length > 0 && last[last.length - 1]!.includes('.')) {
    const v4 = last.pop()!.split('.').map(Number);
    last.push(((v4[0]! << 8) | v4[1]!).toString(16), ((v4[2]! << 8) | v4[3]!).toString(16));
  }
  const missing = tail === undefined ? 0 : 8 - headGroups.length - tailGroups.length;
  const groups = [...headGroups, ...Array<string>(Math.max(0, missing)).fill('0'), ...tailGroups];
  return groups.map((g) => parseInt(g || '0', 16).toString(16));
}

/**
 * One spelling per address (RFC 5952: lower case, shortest form; IPv4-mapped
 * as dotted IPv4), so that limits, logs, fail2ban and the upstream see
 * the same client however a balancer or the socket wrote it.
 */
export function canonicalAddress(address: string): string {
  // A zone id (fe80::1%eth0) is not valid in a URL host: such an address is kept as given.
  if (!net.isIPv6(address) || address.includes('%')) return address;
  // WHATWG URL parsing serialises IPv6 hosts in RFC 5952 form.
  const canonical = new URL(`http://[${address}]/`).hostname.slice(1, -1);
  const mapped = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(canonical);
  if (!mapped) return canonical;
  const high = parseInt(mapped[1]!, 16);
  const low = parseInt(mapped[2]!, 16);
  return [high >> 8, high & 0xff, low >> 8, low & 0xff].join('.');
}
