import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { isTrusted, readProxyHeader, trustedProxies } from '../../src/session/proxy-header.js';

const servers: net.Server[] = [];
afterEach(() => {
  for (const s of servers.splice(0)) s.close();
});

/** Sends `bytes` to a loopback server and returns what readProxyHeader made of them, plus what followed. */
async function roundTrip(bytes: Buffer): Promise<{ origin: unknown; rest: string } | { error: string }> {
  return new Promise((resolve) => {
    const server = net.createServer((socket) => {
      readProxyHeader(socket, 1000).then(
        (origin) => {
          let rest = '';
          socket.on('data', (d) => (rest += d.toString('latin1')));
          socket.resume();
          setTimeout(() => {
            socket.destroy();
            resolve({ origin, rest });
          }, 50);
        },
        (err: Error) => {
          socket.destroy();
          resolve({ error: err.message });
        },
      );
    });
    servers.push(server);
    server.listen(0, '127.0.0.1', () => {
      const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1', () => client.write(bytes));
      client.on('error', () => undefined);
    });
  });
}

describe('PROXY protocol', () => {
  it('reads a v1 header and leaves what follows for the session', async () => {
    const result = await roundTrip(Buffer.from('PROXY TCP4 203.0.113.9 192.0.2.1 51234 993\r\na CAPABILITY\r\n'));
    expect(result).toEqual({ origin: { address: '203.0.113.9', port: 51234 }, rest: 'a CAPABILITY\r\n' });
  });

  it('reads a v2 header (IPv4 and IPv6)', async () => {
    const v4 = Buffer.concat([
      Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x11, 0x00, 0x0c]),
      Buffer.from([198, 51, 100, 7, 192, 0, 2, 1, 0x30, 0x39, 0x03, 0xe1]),
      Buffer.from('x'),
    ]);
    expect(await roundTrip(v4)).toEqual({ origin: { address: '198.51.100.7', port: 12345 }, rest: 'x' });
    const src = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01];
    const v6 = Buffer.concat([
      Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x21, 0x00, 0x24]),
      Buffer.from([...src, ...new Array(16).fill(0), 0x00, 0x50, 0x03, 0xe1]),
    ]);
    expect(await roundTrip(v6)).toEqual({ origin: { address: '2001:db8::1', port: 80 }, rest: '' });
    // An IPv4 client behind a dual-stack balancer arrives as ::ffff:a.b.c.d and is an IPv4 client.
    const mapped = Buffer.concat([
      Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x21, 0x00, 0x24]),
      Buffer.from([...new Array(10).fill(0), 0xff, 0xff, 203, 0, 113, 5, ...new Array(16).fill(0), 0x00, 0x50, 0x03, 0xe1]),
    ]);
    expect(await roundTrip(mapped)).toEqual({ origin: { address: '203.0.113.5', port: 80 }, rest: '' });
  });

  it('gives every address one spelling, so logs and fail2ban see one client', async () => {
    // Catches: a balancer's upper-case or uncompressed IPv6 reaching the log as a different address.
    const v1 = await roundTrip(Buffer.from('PROXY TCP6 2001:0DB8:0001:0002:0000:0000:0000:00A1 2001:db8::2 51234 993\r\n'));
    expect(v1).toEqual({ origin: { address: '2001:db8:1:2::a1', port: 51234 }, rest: '' });
  });

  it('refuses anything that is not a PROXY header', async () => {
    expect(await roundTrip(Buffer.from('a LOGIN alice secret\r\n'))).toEqual({ error: 'the connection did not start with a PROXY header' });
    expect(await roundTrip(Buffer.from('PROXY TCP4 nonsense\r\n'))).toEqual({ error: 'malformed PROXY v1 header' });
    expect(await roundTrip(Buffer.from(`PROXY ${'x'.repeat(200)}`))).toEqual({ error: 'PROXY v1 header too long' });
  });

  it('times out when the header never comes', async () => {
    expect(await roundTrip(Buffer.from('PROX'))).toEqual({ error: 'no PROXY header in time' });
  });

  it('matches trusted peers by address and CIDR', () => {
    const list = trustedProxies(['10.0.0.0/8', '192.0.2.5', '2001:db8::/32']);
    expect(isTrusted(list, '10.1.2.3')).toBe(true);
    expect(isTrusted(list, '::ffff:10.1.2.3')).toBe(true);
    expect(isTrusted(list, '192.0.2.5')).toBe(true);
    expect(isTrusted(list, '192.0.2.6')).toBe(false);
    expect(isTrusted(list, '2001:db8:ffff::1')).toBe(true);
    expect(isTrusted(list, '127.0.0.1')).toBe(false);
  });
});
