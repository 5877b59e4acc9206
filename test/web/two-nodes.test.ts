/**
 * The self-service page on two gateway nodes sharing one real PostgreSQL
 * store, in front of a real Dovecot (the nodes run in this process; the
 * HAProxy tests run them as processes):
 *  - a page session started on node A is valid on node B (a load balancer
 *    may send the next request anywhere), an app password made there logs
 *    in through node A, and signing out on one node ends it on both;
 *  - a TOTP code that signed in on node A is refused on node B;
 *  - PostgreSQL stopped: the page fails closed, with a page that names no
 *    error; started again: sign-in works, with no restart.
 */
import { generateSync } from 'otplib';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { imapsLogin } from '../support/attack.js';
import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { taggedLine } from '../support/imap-client.js';
import type { PostgresHandle } from '../support/postgres.js';
import { enableTotpVia, postgresServer, useEngine } from '../support/store.js';
import { waitUntil } from '../support/timing.js';
import { makeTempDir, removeTempDir } from '../support/tmp.js';
import { h1, PageClient, pageError, startPageGateway, unescapeHtml, type PageGateway } from '../support/web.js';

useEngine('postgres');

const CODE_FAILED = 'That code did not work. Check it and try again, or try again in a few minutes.';

let pg: PostgresHandle;
let dc: DovecotHandle;
let nodeA: PageGateway;
let nodeB: PageGateway;
let dir: string;

beforeAll(async () => {
  pg = await postgresServer();
  dc = await startDovecot({ users: ['alice', 'bob', 'carol'].map((name) => ({ name, password: `${name}-upstream-pw` })) });
  dir = await makeTempDir('web-nodes');
  const url = await pg.createDatabase();
  const config = { store: { backend: 'postgres', url, key_file: path.join(dir, 'mailgate.key') } };
  nodeA = await startPageGateway(dc, { config });
  nodeB = await startPageGateway(dc, { config });
  for (const user of ['alice', 'bob', 'carol']) await nodeA.gateway.store.accounts.add(user);
});

afterAll(async () => {
  await nodeA?.stop();
  await nodeB?.stop();
  await dc?.stop();
  if (dir) await removeTempDir(dir);
});

describe('the page on two nodes sharing PostgreSQL', () => {
  it('a session started on node A is valid on node B; an app password made there logs in through A; signing out on B ends it on A', async () => {
    // Catches: page sessions kept per node (or signed with a per-node key), so that the next request a
    // load balancer sends to the other node finds the user signed out; a sign-out that only one node honours.
    const onA = new PageClient(nodeA);
    expect(h1(await onA.signIn('alice', 'alice-upstream-pw'))).toBe('Security');
    const onB = new PageClient(nodeB);
    onB.cookie = onA.cookie;
    expect(h1(await onB.get('/'))).toBe('Security');
    expect(h1(await onB.get('/app-passwords/new'))).toBe('Create a new app password');
    const created = await onB.post('/app-passwords', { name: 'laptop', imap: 'on' });
    expect(h1(created)).toBe('Use this app password to sign in');
    const password = unescapeHtml(/<code id="app-password"[^>]*>([^<]+)<\/code>/.exec(created.body)![1]!).replace(/\s/g, '');
    const { c, answer } = await imapsLogin(nodeA, 'alice', password);
    expect(taggedLine(answer, 'L1')).toMatch(/^L1 OK /);
    c.destroy();
    expect((await onB.post('/sign-out', {})).status).toBe(303);
    expect(h1(await onA.get('/'))).toBe('Sign in');
  });

  it('a TOTP code that signed in on node A is refused on node B', async () => {
    // Catches: replay protection kept per node: one phished code would then open the page once per node.
    const secret = await enableTotpVia(nodeA.gateway.store, 'bob');
    // The code of the next step (the page takes ±1 step): the current one was spent turning 2-step verification on.
    const code = generateSync({ secret, epoch: Math.floor(Date.now() / 1000) + 30 });
    const onA = new PageClient(nodeA);
    expect(h1(await onA.signIn('bob', 'bob-upstream-pw', code))).toBe('Security');
    const onB = new PageClient(nodeB);
    const replayed = await onB.signIn('bob', 'bob-upstream-pw', code);
    expect(h1(replayed)).not.toBe('Security');
    expect(pageError(replayed)).toBe(CODE_FAILED);
  });

  it('PostgreSQL stopped: the page fails closed with a page that says to try again, naming no error; started again: sign-in works, with no restart', async () => {
    // Catches: a page that lets a user in while the store cannot record the sign-in, and the answer
    // fastify gives when an error page fails too (JSON naming the error and the database's address).
    const signedIn = new PageClient(nodeA);
    expect(h1(await signedIn.signIn('carol', 'carol-upstream-pw'))).toBe('Security');
    try {
      await pg.stopServer();
      const visitor = new PageClient(nodeB);
      const answers = [await visitor.get('/'), await visitor.post('/sign-in', { username: 'carol', password: 'carol-upstream-pw' }), await signedIn.get('/')];
      for (const answer of answers) {
        expect(answer.status, answer.body).toBeGreaterThanOrEqual(400);
        expect(answer.headers['content-type']).toBe('text/html; charset=utf-8');
        expect(answer.body).not.toMatch(/ECONN|127\.0\.0\.1|postgres|statusCode/i);
        expect(h1(answer)).not.toBe('Security');
      }
      expect(h1(answers[0]!)).toBe('Something went wrong');
      expect(answers[0]!.body).toContain('Try again in a few minutes.');
    } finally {
      await pg.startServer();
    }
    await waitUntil(async () => h1(await new PageClient(nodeB).signIn('carol', 'carol-upstream-pw')) === 'Security', 'sign-in to work again', 15_000);
    // The session from before the outage is still good.
    expect(h1(await signedIn.get('/'))).toBe('Security');
  });
});
