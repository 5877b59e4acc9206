/**
 * The PROXY protocol (HAProxy, v1 text and v2 binary) on listeners behind a
 * load balancer: the balancer's first bytes name the real client.
 *
 * Only peers listed in `proxy.trusted` may send it. From anyone else a PROXY
 * header would let a client claim any address (and so dodge per-IP limits or
 * poison logs), so a connection from an untrusted peer to a PROXY listener is
 * refused outright. Parsing is proxy-protocol-js's; framing (how many bytes
 * the header is) and the deadline are ours.
 */
import net from 'node:net';
import { IPv4ProxyAddress, IPv6ProxyAddress, V1ProxyProtocol, V2ProxyProtocol } from 'proxy-protocol-js';
import { canonicalAddress } from '../auth/client-key.js';
import { FIXED_LIMITS } from '../config/limits.js';

export interface ProxiedOrigin {
  address: string;
  port: number;
}

const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
const V1_MAX = FIXED_LIMITS.proxy_v1_max_bytes;
const V2_MAX = FIXED_LIMITS.proxy_v2_max_bytes;

export function trustedProxies(cidrs: readonly string[]): net.BlockList {
  const list = new net.BlockList();
  for (const cidr of cidrs) {
    const [address, prefix] = cidr.split('/');
    const type = net.isIPv6(address!) ? 'ipv6' : 'ipv4';
    if (prefix === undefined) list.addAddress(address!, type);
    else list.addSubnet(address!, Number(prefix), type);
  }
  return list;
}

export function isTrusted(list: net.BlockList, address: string): boolean {
  const plain = canonicalAddress(address);
  return list.check(plain, net.isIPv6(plain) ? 'ipv6' : 'ipv4');
}

/**
 * Reads one PROXY header from the socket. Resolves with the client's origin
 * (null for a v2 LOCAL command or UNKNOWN, meaning "use the socket's own
 * address"); rejects on a malformed header or after `timeoutMs`. Bytes after
 * the header are put back for the session.
 */
export function readProxyHeader(socket: net.Socket, timeoutMs: number): Promise<ProxiedOrigin | null> {
  return new Promise((resolve, reject) => {
    let buffered = Buffer.alloc(0);
    const timer = setTimeout(() => finish(new Error('no PROXY header in time')), timeoutMs);
    const finish = (result: Error | { origin: ProxiedOrigin | null; used: number }) => {
      clearTimeout(timer);
      socket.removeListener('data', onData);
      socket.removeListener('error', onError);
      socket.pause();
      if (result instanceof Error) return reject(result);
      const rest = buffered.subarray(result.used);
      if (rest.length > 0) socket.unshift(rest);
      resolve(result.origin);
    };
    const onError = (err: Error) => finish(err);
    const onData = (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk]);
      const outcome = tryParse(buffered);
      if (outcome) finish(outcome);
    };
    socket.on('data', onData);
    socket.on('error', onError);
    socket.resume();
  });
}

/** A parse result, an Error, or undefined when more bytes are needed. */
function tryParse(data: Buffer): Error | { origin: ProxiedOrigin | null; used: number } | undefined {
  if (data.length >= V2_SIGNATURE.length && data.subarray(0, V2_SIGNATURE.length).equals(V2_SIGNATURE)) return parseV2(data);
  if (V2_SIGNATURE.subarray(0, Math.min(data.length, V2_SIGNATURE.length)).equals(data.subarray(0, V2_SIGNATURE.length))) return undefined;
  if (!'PROXY '.startsWith(data.subarray(0, 6).toString('latin1'))) return new Error('the connection did not start with a PROXY header');
  const end = data.indexOf('\r\n');
  if (end < 0) return data.length > V1_MAX ? new Error('PROXY v1 header too long') : undefined;
  const line = data.subarray(0, end + 2).toString('latin1');
  if (line.startsWith('PROXY UNKNOWN')) return { origin: null, used: end + 2 };
  try {
    const parsed = V1ProxyProtocol.parse(line);
    const { ipAddress, port } = parsed.source;
    // The library checks the shape of the line, not its values ("PROXY TCP4 not-an-ip ..." parses).
    if (net.isIP(ipAddress) === 0 || !Number.isInteger(port) || port < 0 || port > 65535) return new Error('malformed PROXY v1 header');
    return { origin: { address: canonicalAddress(ipAddress), port }, used: end + 2 };
  } catch {
    return new Error('malformed PROXY v1 header');
  }
}

function parseV2(data: Buffer): Error | { origin: ProxiedOrigin | null; used: number } | undefined {
  if (data.length < 16) return undefined;
  const length = 16 + data.readUInt16BE(14);
  if (length > V2_MAX) return new Error('PROXY v2 header too long');
  if (data.length < length) return undefined;
  try {
    const parsed = V2ProxyProtocol.parse(new Uint8Array(data.subarray(0, length)));
    const address = parsed.proxyAddress;
    // LOCAL (health checks) and UNSPEC carry no client: use the socket's address.
    if (parsed.command === 0) return { origin: null, used: length };
    if (address instanceof IPv4ProxyAddress) {
      return { origin: { address: address.sourceAddress.address.join('.'), port: address.sourcePort }, used: length };
    }
    if (address instanceof IPv6ProxyAddress) {
      const bytes = address.sourceAddress.address;
      // canonicalAddress also turns an IPv4 client behind a dual-stack balancer (::ffff:a.b.c.d) into an IPv4 client.
      const groups: string[] = [];
      for (let i = 0; i < 16; i += 2) groups.push(((bytes[i]! << 8) | bytes[i + 1]!).toString(16));
      return { origin: { address: canonicalAddress(groups.join(':')), port: address.sourcePort }, used: length };
    }
    return { origin: null, used: length };
  } catch {
    return new Error('malformed PROXY v2 header');
  }
}

