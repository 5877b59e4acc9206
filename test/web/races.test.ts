/**
 * The self-service page when things happen at once or out of order: forms
 * sent twice or from a stale tab, sessions ended while a request is in
 * flight, half-signed-in sessions, the absolute timeout across changes of
 * session id, and refusal timing before anything was measured. Each case was
 * a defect found by attacking the page. A real Dovecot checks the passwords;
 * a scripted HTTPS client (PageClient) plays the browser.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PENALTIES_ON } from '../support/attack.js';
import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { startFaultProxy, type FaultProxy } from '../support/fault-proxy.js';
import { enableTotp } from '../support/store.js';
import { h1, PageClient, pageError, startPageGateway, SteppingClock, type PageGateway } from '../support/web.js';
import { isErrorLevel } from '../support/log-levels.js';

const USERS = ['amy', 'ben', 'cat', 'dan', 'eve', 'fay', 'gus', 'hal', 'ida', 'jon', 'kai', 'lou'];

let dc: DovecotHandle;
let gw: PageGateway;
let proxy: FaultProxy;
const clock = new SteppingClock();

beforeAll(async () => {
  dc = await startDovecot({ users: USERS.map((name) => ({ name, password: `${name}-upstream-pw` })) });
  // The page checks passwords through this proxy: a test can make the mail server slow to answer.
  proxy = await startFaultProxy({ port: dc.imapPort });
  gw = await startPageGateway(dc, { now: clock.now, upstreamImapPort: proxy.port, config: { limits: { ...PENALTIES_ON } } });
});

afterAll(async () => {
  await gw?.stop();
  await proxy?.close();
  await dc?.stop();
});

/** Failed logins of `user` in the audit trail. */
const failures = (user: string) => gw.store.audit.list({ username: user, limit: 1000 }).filter((r) => r.event === 'login-failed').length;

/** Errors the gateway logged (level error and above). */
const errorLines = () => gw.logs().filter((l) => isErrorLevel(l));

function secretOf(body: string): string {
  return /id="secret">([^<]+)</.exec(body)![1]!.replace(/\s+/g, '');
}

describe('2-step verification forms sent twice, or from a stale tab', () => {
  it('"Turn on" sent again after it worked (a double click, a second tab) gets a page, not "Something went wrong"', async () => {
    const client = new PageClient(gw, '127.0.0.61');
    expect(h1(await client.signIn('amy', 'amy-upstream-pw'))).toBe('Security');
    const setup = await client.post('/two-step/start', {});
    const secret = secretOf(setup.body);
    const csrf = client.csrf;
    const code = clock.code(secret);
    const errorsBefore = errorLines().length;
    expect(h1(await client.post('/two-step/enable', { code }))).toBe('Your recovery codes');
    // The second tab's form (the same token as it was then, the session's new token now).
    for (const token of [csrf, client.csrf]) {
      const again = await client.followed(await client.post('/two-step/enable', { code: clock.nextCode(secret) }, { csrf: token }));
      expect(again.status).toBeLessThan(500);
      expect(again.body).not.toMatch(/Something went wrong/);
    }
    // "Turn on 2-Step Verification" from a stale security page, while it is on.
    await client.get('/');
    const start = await client.followed(await client.post('/two-step/start', {}));
    expect(start.status).toBeLessThan(500);
    expect(start.body).not.toMatch(/Something went wrong/);
    expect(gw.store.accounts.get('amy').totpState).toBe('enabled');
    expect(errorLines().length).toBe(errorsBefore);
  });

  it('"New recovery codes" and "Turn off" from a stale tab, once it is off, get a page and count no failure', async () => {
    const secret = enableTotp(gw.store, (gw.store.accounts.find('ben') ?? gw.store.accounts.add('ben')).username, clock.now());
    const client = new PageClient(gw, '127.0.0.62');
    expect(h1(await client.signIn('ben', 'ben-upstream-pw', clock.nextCode(secret)))).toBe('Security');
    await client.get('/two-step/recovery-codes');
    const staleToken = client.csrf;
    // Another tab turns it off.
    await client.get('/two-step/turn-off');
    expect((await client.post('/two-step/turn-off', { code: clock.nextCode(secret) })).status).toBe(303);
    expect(gw.store.accounts.get('ben').totpState).toBe('none');
    const errorsBefore = errorLines().length;
    const failuresBefore = failures('ben');
    await client.get('/');
    const codes = await client.followed(await client.post('/two-step/recovery-codes', {}, { csrf: client.csrf ?? staleToken }));
    expect(codes.status).toBeLessThan(500);
    expect(codes.body).not.toMatch(/Something went wrong/);
    expect(errorLines().length).toBe(errorsBefore);
    const off = await client.followed(await client.post('/two-step/turn-off', { code: clock.nextCode(secret) }));
    expect(off.status).toBeLessThan(500);
    const failuresAfter = failures('ben');
    expect(failuresAfter).toBe(failuresBefore);
  });
});

describe('the absolute timeout', () => {
  it('counts from the sign-in: turning 2-step verification on does not stretch it past session_max_hours', async () => {
    const client = new PageClient(gw, '127.0.0.63');
    expect(h1(await client.signIn('cat', 'cat-upstream-pw'))).toBe('Security');
    // Busy for 7 h 50 min (never idle).
    for (let minutes = 0; minutes < 7 * 60 + 50; minutes += 10) {
      clock.advance(10 * 60_000);
      expect(h1(await client.get('/'))).toBe('Security');
    }
    // Turning it on needs the password again ("Confirm it's you"): neither may stretch the session.
    expect((await client.post('/reauth', { password: 'cat-upstream-pw', next: '/' })).status).toBe(303);
    await client.get('/');
    const setup = await client.post('/two-step/start', {});
    expect(h1(await client.post('/two-step/enable', { code: clock.code(secretOf(setup.body)) }))).toBe('Your recovery codes');
    clock.advance(5 * 60_000);
    expect(h1(await client.get('/'))).toBe('Security');
    clock.advance(10 * 60_000);
    // 8 h 5 min after the sign-in.
    expect(h1(await client.get('/'))).toBe('Sign in');
  });
});

describe('a session half signed in (password right, code not yet given)', () => {
  it('is ended with the account\'s other sessions when 2-step verification is turned off and on again', async () => {
    const dan = gw.store.accounts.find('dan') ?? gw.store.accounts.add('dan');
    const secret = enableTotp(gw.store, dan.username, clock.now());
    // Someone with the password (phished) reaches the code step.
    const attacker = new PageClient(gw, '127.0.0.64');
    await attacker.get('/');
    await attacker.followed(await attacker.post('/sign-in', { username: 'dan', password: 'dan-upstream-pw' }));
    // The owner, signed in elsewhere, turns 2-step verification off and on again with a new key.
    const owner = new PageClient(gw, '127.0.0.65');
    expect(h1(await owner.signIn('dan', 'dan-upstream-pw', clock.nextCode(secret)))).toBe('Security');
    await owner.get('/two-step/turn-off');
    expect((await owner.post('/two-step/turn-off', { code: clock.nextCode(secret) })).status).toBe(303);
    await owner.get('/');
    const setup = await owner.post('/two-step/start', {});
    const fresh = secretOf(setup.body);
    expect(h1(await owner.post('/two-step/enable', { code: clock.nextCode(fresh) }))).toBe('Your recovery codes');
    // The half-signed-in session is over: a code of the new key does not finish it.
    const verified = await attacker.followed(await attacker.post('/verify', { code: clock.nextCode(fresh) }));
    expect(h1(verified)).not.toBe('Security');
  });

  it('is ended by "mailgate web sessions USER --revoke-all"', async () => {
    const eve = gw.store.accounts.find('eve') ?? gw.store.accounts.add('eve');
    const secret = enableTotp(gw.store, eve.username, clock.now());
    const attacker = new PageClient(gw, '127.0.0.66');
    await attacker.get('/');
    await attacker.followed(await attacker.post('/sign-in', { username: 'eve', password: 'eve-upstream-pw' }));
    gw.store.webSessions.endAll(gw.store.accounts.get('eve'));
    const verified = await attacker.followed(await attacker.post('/verify', { code: clock.nextCode(secret) }));
    expect(h1(verified)).not.toBe('Security');
  });
});

describe('requests in flight while the session ends', () => {
  it('"Confirm it\'s you" answered after the session was ended does not bring it back', async () => {
    const client = new PageClient(gw, '127.0.0.67');
    expect(h1(await client.signIn('fay', 'fay-upstream-pw'))).toBe('Security');
    clock.advance(11 * 60_000);
    expect(h1(await client.get('/app-passwords/new'))).toBe("Confirm it's you");
    // The mail server is slow to check the password...
    proxy.fault = { kind: 'delay-greeting', ms: 1500 };
    try {
      const confirming = client.post('/reauth', { password: 'fay-upstream-pw', next: '/app-passwords/new' });
      await new Promise((resolve) => setTimeout(resolve, 500));
      // ...and meanwhile the administrator ends the account's sessions.
      gw.store.webSessions.endAll(gw.store.accounts.get('fay'));
      const confirmed = await client.followed(await confirming);
      expect(h1(confirmed)).not.toBe('Create a new app password');
      expect(h1(await client.get('/'))).toBe('Sign in');
    } finally {
      proxy.fault = { kind: 'pass' };
    }
  });
});

describe('refusal timing with a configuration that passes no mail password through', () => {
  let strict: PageGateway;
  beforeAll(async () => {
    // Mail logins are all decided locally; the page still checks passwords upstream (Dovecot's answer: a 500 ms tick).
    strict = await startPageGateway(dc, {
      config: { policy: { unknown_users: 'reject', main_password_without_2fa: 'reject', expected_upstream_refusal_ms: 500 }, web: { self_enroll: false } },
    });
  });
  afterAll(async () => {
    await strict?.stop();
  });

  it('the first sign-in with a name mailgate does not know takes as long as a wrong password checked upstream', async () => {
    // Catches: no estimate of the upstream's refusal time for the page, so that until a wrong
    // password was checked upstream, a name mailgate does not know is refused at once.
    strict.store.accounts.add('gus');
    const unknown = new PageClient(strict, '127.0.0.71');
    await unknown.get('/');
    let started = performance.now();
    expect(pageError(await unknown.post('/sign-in', { username: 'nobody-here', password: 'whatever-pw' }))).toMatch(/^Sign-in failed/);
    const unknownMs = performance.now() - started;
    const known = new PageClient(strict, '127.0.0.72');
    await known.get('/');
    started = performance.now();
    expect(pageError(await known.post('/sign-in', { username: 'gus', password: 'wrong-pw' }))).toMatch(/^Sign-in failed/);
    const knownMs = performance.now() - started;
    expect(knownMs).toBeGreaterThan(300);
    expect(unknownMs).toBeGreaterThan(300);
  });
});
