/**
 * The page behind a TLS-terminating reverse proxy (`web.tls = false`): the
 * client address and scheme come from X-Forwarded-For / -Proto only when the
 * peer is a trusted proxy, penalties count against the real client, the
 * cookie stays __Host- and Secure for the browser's https origin, and the
 * same-origin check uses `public_url`. Plain HTTP requests stand in for the
 * proxy, on loopback.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PENALTIES_ON } from '../support/attack.js';
import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { h1, PageClient, pageError, startPageGateway, type PageGateway } from '../support/web.js';

const PUBLIC = 'https://mail.example.test';

let dc: DovecotHandle;
let proxied: PageGateway;
let direct: PageGateway;

beforeAll(async () => {
  dc = await startDovecot({ users: ['alice', 'bob'].map((name) => ({ name, password: `${name}-upstream-pw` })) });
  const limits = { ...PENALTIES_ON, ip_block_after: 3 };
  proxied = await startPageGateway(dc, { config: { limits, web: { tls: false, public_url: `${PUBLIC}/`, trusted_proxies: ['127.0.0.1/32'] } } });
  direct = await startPageGateway(dc, { config: { limits, web: { tls: false } } });
});

afterAll(async () => {
  await proxied?.stop();
  await direct?.stop();
  await dc?.stop();
});

/** A visitor behind the proxy: every request carries what the proxy adds. */
function behindProxy(gw: PageGateway, clientIp: string): PageClient {
  const client = new PageClient(gw);
  const forwarded = { 'x-forwarded-for': clientIp, 'x-forwarded-proto': 'https', origin: PUBLIC };
  const get = client.get.bind(client);
  const post = client.post.bind(client);
  client.get = (path, headers = {}) => get(path, { ...forwarded, ...headers });
  client.post = (path, fields, options = {}) => post(path, fields, { ...options, headers: { ...forwarded, ...options.headers } });
  return client;
}

describe('behind a reverse proxy', () => {
  it('the browser gets a __Host- Secure cookie and HSTS for the https origin it sees', async () => {
    const answer = await behindProxy(proxied, '203.0.113.5').get('/');
    expect(answer.cookies.some((c) => c.startsWith('__Host-mailgate=') && /;\s*Secure/i.test(c))).toBe(true);
    expect(answer.headers['strict-transport-security']).toBe('max-age=31536000');
  });

  it('failures count against the client the trusted proxy names; another client signs in meanwhile', async () => {
    const guesser = behindProxy(proxied, '203.0.113.7');
    await guesser.get('/');
    for (let i = 0; i < 3; i++) await guesser.post('/sign-in', { username: 'alice', password: `wrong-${i}` });
    expect(proxied.logs().filter((l) => l.msg === 'login failed' && l.clientIp === '203.0.113.7')).toHaveLength(3);
    expect(proxied.store.penalties.get('ip', '203.0.113.7', 3_600_000).blockedUntil).not.toBeNull();
    expect(pageError(await guesser.post('/sign-in', { username: 'bob', password: 'bob-upstream-pw' }))).toMatch(/^Sign-in failed/);
    // The proxy's own address is not blocked: other users behind it sign in.
    expect(h1(await behindProxy(proxied, '203.0.113.8').signIn('bob', 'bob-upstream-pw'))).toBe('Security');
  });

  it('a POST must come from public_url\'s origin', async () => {
    const client = behindProxy(proxied, '203.0.113.9');
    await client.get('/');
    const refused = await client.post('/sign-in', { username: 'bob', password: 'bob-upstream-pw' }, { headers: { origin: proxied.url.replace(/\/$/, '') } });
    expect(refused.status).toBe(403);
  });

  it('without trusted_proxies, X-Forwarded-For is ignored: the peer is the client', async () => {
    const client = behindProxy(direct, '198.51.100.1');
    await client.get('/');
    await client.post('/sign-in', { username: 'alice', password: 'wrong' }, { headers: { origin: direct.url.replace(/\/$/, '') } });
    const failures = direct.logs().filter((l) => l.msg === 'login failed');
    expect(failures.map((l) => l.clientIp)).toEqual(['127.0.0.1']);
    // Served over plain HTTP to the browser itself: no Secure cookie it could not send back, no HSTS.
    const plain = await new PageClient(direct).get('/');
    expect(plain.cookies.some((c) => c.startsWith('mailgate=') && !/;\s*Secure/i.test(c))).toBe(true);
    expect(plain.headers['strict-transport-security']).toBeUndefined();
  });
});
