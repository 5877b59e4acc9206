/**
 * An IPv6 /64 is one client. A single host routinely holds a whole /64, so an
 * attacker who rotates through its addresses must still hit the per-IP
 * failure block and connection cap of one client, while the neighbouring /64
 * (someone else) is untouched.
 *
 * A real mailgate with real Dovecot behind it. Loopback has no routable IPv6
 * prefixes to rotate through, so the addresses come in PROXY headers (v1 text
 * in several spellings, and v2 binary) from the trusted balancer at
 * 127.0.0.1, as they would behind HAProxy. Penalties on, scaled down: 10 ms
 * doubling to 40 ms, a block after 6 failures, 4 unauthenticated connections
 * per client.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { logLines, startGateway, type GatewayHandle } from '../support/gateway.js';
import { PENALTIES_ON } from '../support/attack.js';
import { ImapClient, imapQuote, taggedLine } from '../support/imap-client.js';

const UNAVAILABLE = 'NO [UNAVAILABLE] The mail service is temporarily unavailable; try again in a few minutes.';
const TOO_MANY_CONNECTIONS = '* BYE [UNAVAILABLE] Too many connections; try again later.\r\n';
const LIMITS = { ...PENALTIES_ON, failure_delay_base_ms: 10, failure_delay_max_ms: 40, ip_block_after: 6, account_block_after: 1000, max_connections_per_ip: 4 };

let dc: DovecotHandle;
let gw: GatewayHandle;
let proxyPort: number;
let appPassword: string;
let sourcePort = 40_000;

beforeAll(async () => {
  dc = await startDovecot();
  gw = await startGateway(dc, {
    config: {
      listen: [
        { protocol: 'imap', host: '127.0.0.1', port: 0, tls: 'implicit' },
        { protocol: 'imap', host: '127.0.0.1', port: 0, tls: 'implicit', proxy_protocol: true },
      ],
      proxy: { trusted: ['127.0.0.1'] },
      limits: LIMITS,
    },
  });
  proxyPort = gw.gateway.listeners.find((l) => l.config.proxy_protocol)!.port;
  gw.store.accounts.add('alice');
  appPassword = (await gw.store.appPasswords.create('alice', { name: 'phone' })).password;
});

afterAll(async () => {
  await gw?.stop();
  await dc?.stop();
});

/** A PROXY v2 header for a TCP-over-IPv6 client (address given as eight groups). */
function proxyV2Ipv6(groups: number[], port: number): Buffer {
  const header = Buffer.alloc(16 + 36);
  Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x21, 0x00, 0x24]).copy(header, 0);
  groups.forEach((g, i) => header.writeUInt16BE(g, 16 + 2 * i));
  header.writeUInt16BE(0x2001, 32); // destination 2001:db8::1, irrelevant here
  header.writeUInt16BE(0x0db8, 34);
  header.writeUInt16BE(1, 46);
  header.writeUInt16BE(port, 48);
  header.writeUInt16BE(993, 50);
  return header;
}

/** Connects through the trusted balancer as `client` (a v1 spelling, or a v2 header); returns the first line. */
async function connectAs(client: string | Buffer): Promise<{ c: ImapClient; first: string }> {
  const c = await ImapClient.connect({ port: proxyPort, ca: gw.caCert, localAddress: '127.0.0.1' });
  c.send(typeof client === 'string' ? `PROXY TCP6 ${client} 2001:db8::1 ${sourcePort++} 993\r\n` : client);
  await c.startTls();
  return { c, first: await c.readLine() };
}

/** One LOGIN from `client` on a fresh connection: the tagged answer, and the argon2 runs it cost. */
async function loginFrom(client: string | Buffer, user: string, password: string): Promise<{ line: string; hashes: number }> {
  const { c, first } = await connectAs(client);
  expect(first).toMatch(/^\* OK /);
  const before = gw.hasher.stats.verifications;
  const line = taggedLine(await c.command('L', `LOGIN ${imapQuote(user)} ${imapQuote(password)}`), 'L');
  c.destroy();
  return { line, hashes: gw.hasher.stats.verifications - before };
}

const windowMs = () => gw.config.limits.ip_failure_window_seconds * 1000;

describe('IPv6 clients count by /64', () => {
  it('wrong passwords from six addresses of one /64 add up to its block; the next /64 still logs in', async () => {
    // Catches: per-address counting (an attacker rotating through a /64 would never be blocked),
    // spellings of one /64 counted apart, or a block that spills into the neighbouring /64.
    const sameSlash64: Array<string | Buffer> = [
      '2001:db8:1:2::1',
      '2001:db8:1:2::2',
      '2001:0db8:0001:0002:0000:0000:0000:0003', // uncompressed, leading zeros
      '2001:DB8:1:2:FFFF:FFFF:FFFF:FFFF', // upper case, the last address of the /64
      proxyV2Ipv6([0x2001, 0xdb8, 1, 2, 0, 0, 0, 5], 40_500), // binary, arrives as 2001:db8:1:2:0:0:0:5
      '2001:db8:1:2:a:b:c:d',
    ];
    for (const [i, client] of sameSlash64.entries()) {
      expect(await loginFrom(client, `ghost${i}`, `wrong-${i}`)).toEqual({ line: 'L NO [AUTHENTICATIONFAILED] Authentication failed.', hashes: 1 });
    }
    const key = '2001:db8:1:2::/64';
    expect(gw.store.penalties.get('ip', key, windowMs())).toMatchObject({ failures: 6, blockedUntil: expect.any(Number) });
    expect(logLines(gw, 'temporary block started', { kind: 'ip', key })).toMatchObject([{ failures: 6 }]);
    // The log still names each address (what fail2ban and an operator need), not the prefix.
    expect(logLines(gw, 'login failed', { clientIp: '2001:db8:1:2::2' })).toHaveLength(1);

    // A seventh address of the /64, with the right app password: refused without a check.
    expect(await loginFrom('2001:db8:1:2:1234::99', 'alice', appPassword)).toEqual({ line: `L ${UNAVAILABLE}`, hashes: 0 });
    // The neighbouring /64 (the same /48) is another client: clean, and it logs in.
    const neighbour = await loginFrom('2001:db8:1:3::1', 'alice', appPassword);
    expect(neighbour.line).toMatch(/^L OK /);
    expect(gw.store.penalties.get('ip', '2001:db8:1:3::/64', windowMs()).failures).toBe(0);
  });

  it('connections from different addresses of one /64 share its connection cap', async () => {
    // Catches: the per-IP connection cap counted per address (one host could hold it many times over).
    const open: ImapClient[] = [];
    try {
      for (let i = 1; i <= LIMITS.max_connections_per_ip; i++) {
        const { c, first } = await connectAs(`2001:db8:5:6::${i}`);
        expect(first).toMatch(/^\* OK /);
        open.push(c);
      }
      const { c: over, first } = await connectAs('2001:db8:5:6:ffff::1');
      expect(first + (await over.waitClosed(2_000))).toBe(TOO_MANY_CONNECTIONS);
      over.destroy();
      // Another /64 is not affected.
      const { c: other, first: greeting } = await connectAs('2001:db8:5:7::1');
      expect(greeting).toMatch(/^\* OK /);
      open.push(other);
    } finally {
      for (const c of open) c.destroy();
    }
  });
});
