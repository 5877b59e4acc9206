/**
 * Client-IP spoofing. The client address the gateway forwards to Dovecot
 * (IMAP ID x-originating-ip, POP3 XCLIENT; Dovecot trusts it from
 * login_trusted_networks and logs it as rip=) decides per-IP limits and what
 * the logs say, so a client must never choose it:
 *  - an ID with x-originating-ip sent by the client is never forwarded;
 *  - a client cannot send XCLIENT itself;
 *  - a PROXY header is refused from an untrusted peer, and honoured (v1 and
 *    v2) from a trusted one.
 * Real Dovecot, real mailgate; clients bind 127.0.0.2 so the real address is
 * distinguishable from the gateway's own.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { logLines, startGateway, type GatewayHandle } from '../support/gateway.js';
import { ImapClient, imaps, taggedLine } from '../support/imap-client.js';
import { pop3s } from '../support/pop3-client.js';
import { RawClient } from '../support/raw-client.js';
import { waitUntil } from '../support/timing.js';

let dc: DovecotHandle;
let gw: GatewayHandle;
let proxyPort: number;
let appPassword: string;

beforeAll(async () => {
  dc = await startDovecot();
  gw = await startGateway(dc, {
    config: {
      listen: [
        { protocol: 'imap', host: '127.0.0.1', port: 0, tls: 'implicit' },
        { protocol: 'imap', host: '127.0.0.1', port: 0, tls: 'starttls' },
        { protocol: 'pop3', host: '127.0.0.1', port: 0, tls: 'implicit' },
        { protocol: 'pop3', host: '127.0.0.1', port: 0, tls: 'starttls' },
        { protocol: 'imap', host: '127.0.0.1', port: 0, tls: 'implicit', proxy_protocol: true },
      ],
      // Only the load balancer at 127.0.0.1 may send PROXY headers; 127.0.0.2 is a client.
      proxy: { trusted: ['127.0.0.1'] },
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

describe('forged client addresses from the client itself', () => {
  it('an ID with x-originating-ip before LOGIN is never forwarded: Dovecot sees the real address', async () => {
    // Catches: relaying the client's ID fields upstream (the client picks its own rip=).
    const c = await imaps(gw, { from: '127.0.0.2' });
    const id = await c.command('i', 'ID ("x-originating-ip" "6.6.6.6" "x-originating-port" "6666" "x-connected-ip" "6.6.6.7" "name" "evil")');
    expect(taggedLine(id, 'i')).toBe('i OK ID completed');
    expect(taggedLine(await c.command('L', `LOGIN alice "${appPassword}"`), 'L')).toMatch(/^L OK /);
    c.destroy();
    expect(await dc.waitForLog(/-login: Info: Login: user=<alice>/)).toMatch(/rip=127\.0\.0\.2,/);
    const text = await dc.logText();
    expect(text).not.toContain('6.6.6.6');
    expect(text).not.toContain('6.6.6.7');
  });

  it('a client cannot send XCLIENT itself over POP3', async () => {
    // Catches: a gateway that relays client commands it does not know before login (XCLIENT would set rip=).
    const p = await pop3s(gw, { from: '127.0.0.2' });
    expect(await p.command('XCLIENT ADDR=6.6.6.6 PORT=1')).toBe('-ERR Unknown command.\r\n');
    expect(await p.command('USER alice')).toBe('+OK Send PASS\r\n');
    expect(await p.command(`PASS ${appPassword}`)).toMatch(/^\+OK/);
    p.destroy();
    expect(await dc.waitForLog(/pop3-login: Info: Login: user=<alice>/)).toMatch(/rip=127\.0\.0\.2,/);
    expect(await dc.logText()).not.toContain('6.6.6.6');
  });
});

/** 12-byte PROXY v2 signature, version 2 / PROXY, TCP over IPv4, 12 address bytes. */
function proxyV2(src: string, dst: string, srcPort: number, dstPort: number): Buffer {
  const header = Buffer.alloc(16 + 12);
  Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]).copy(header, 0);
  header[12] = 0x21;
  header[13] = 0x11;
  header.writeUInt16BE(12, 14);
  Buffer.from(src.split('.').map(Number)).copy(header, 16);
  Buffer.from(dst.split('.').map(Number)).copy(header, 20);
  header.writeUInt16BE(srcPort, 24);
  header.writeUInt16BE(dstPort, 26);
  return header;
}

/** Connects to the PROXY listener, sends the header, then does TLS and reads the greeting. */
async function viaProxy(header: Buffer | string, from = '127.0.0.1'): Promise<ImapClient> {
  const c = await ImapClient.connect({ port: proxyPort, ca: gw.caCert, localAddress: from });
  c.send(header);
  await c.startTls();
  expect(await c.readLine()).toMatch(/^\* OK /);
  return c;
}

describe('PROXY protocol', () => {
  it('is refused from an untrusted peer, before a single byte is answered', async () => {
    // Catches: any client claiming any address (dodging per-IP limits, poisoning logs).
    const c = await RawClient.connect({ port: proxyPort, ca: gw.caCert, localAddress: '127.0.0.2' });
    c.send('PROXY TCP4 203.0.113.66 127.0.0.1 4000 993\r\n');
    expect(await c.waitClosed(2_000)).toBe('');
    await waitUntil(() => logLines(gw, 'refused a connection to a PROXY listener from an untrusted peer', { peer: '127.0.0.2' })[0], 'the refusal in the log');
    expect(logLines(gw, 'session closed', { clientIp: '203.0.113.66' })).toEqual([]);
  });

  it('from a trusted peer, a v1 header sets the client address: session log and Dovecot rip=', async () => {
    // Catches: a PROXY header read but ignored (every client behind the balancer would share one IP and its limits).
    const c = await viaProxy('PROXY TCP4 203.0.113.7 127.0.0.1 40000 993\r\n');
    expect(taggedLine(await c.command('L', `LOGIN alice "${appPassword}"`), 'L')).toMatch(/^L OK /);
    c.destroy();
    const closed = await waitUntil(() => logLines(gw, 'session closed', { clientIp: '203.0.113.7' })[0], 'the session log');
    expect(closed.clientPort).toBe(40000);
    expect(closed.user).toBe('alice');
    await dc.waitForLog(/Login: user=<alice>.*rip=203\.0\.113\.7,/);
  });

  it('from a trusted peer, a v2 header sets the client address too', async () => {
    // Catches: a v2 (binary) header misparsed, or its address not carried to the session and upstream.
    const c = await viaProxy(proxyV2('198.51.100.9', '127.0.0.1', 4444, 993));
    expect(taggedLine(await c.command('L', `LOGIN alice "${appPassword}"`), 'L')).toMatch(/^L OK /);
    c.destroy();
    await waitUntil(() => logLines(gw, 'session closed', { clientIp: '198.51.100.9', clientPort: 4444 })[0], 'the session log');
    await dc.waitForLog(/Login: user=<alice>.*rip=198\.51\.100\.9,/);
  });

  it('a trusted peer that sends no (or a broken) header is refused', async () => {
    // Catches: a session started on a header whose address is not one (it would become the client IP).
    for (const junk of ['HELLO there\r\n', 'PROXY TCP4 not-an-ip 127.0.0.1 1 2\r\n', 'PROXY TCP4 203.0.113.1 127.0.0.1 99999 993\r\n']) {
      const c = await RawClient.connect({ port: proxyPort, ca: gw.caCert });
      c.send(junk);
      expect(await c.waitClosed(2_000)).toBe('');
    }
    // A TLS ClientHello straight away (no header) fails too.
    await expect(RawClient.connect({ port: proxyPort, tls: true, ca: gw.caCert })).rejects.toThrow();
    expect(logLines(gw, 'bad PROXY header').length).toBeGreaterThanOrEqual(4);
  });
});
