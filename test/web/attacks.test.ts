/**
 * The self-service page under attack: forms posted from elsewhere, missing
 * or stolen CSRF tokens, replayed and fixed session cookies, guessing
 * passwords and codes, app passwords tried as account passwords, account
 * enumeration by the message, and malformed input. A real Dovecot checks
 * the passwords; a real Chromium plays the victim's browser where the
 * browser's own behaviour is what is tested.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { assertNoInternalErrors, imapsLogin, PENALTIES_ON } from '../support/attack.js';
import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { taggedLine } from '../support/imap-client.js';
import { enableTotp } from '../support/store.js';
import { h1, launchChromium, openPage, PageClient, pageError, request, sessionCookie, signIn, startPageGateway, SteppingClock, type PageGateway } from '../support/web.js';

const SIGN_IN_FAILED = 'Sign-in failed. Check your username and password (your account password, not an app password), or try again in a few minutes.';
const CODE_FAILED = 'That code did not work. Check it and try again, or try again in a few minutes.';
const USERS = ['alice', 'bob', 'carol', 'dave', 'erin', 'frank', 'grace', 'heidi', 'ivan', 'judy', 'kim', 'leo', 'mia'];

let dc: DovecotHandle;
let gw: PageGateway;
let browser: Browser;
const clock = new SteppingClock();

beforeAll(async () => {
  dc = await startDovecot({ users: USERS.map((name) => ({ name, password: `${name}-upstream-pw` })) });
  gw = await startPageGateway(dc, {
    now: clock.now,
    config: { limits: { ...PENALTIES_ON, account_block_after: 4, ip_block_after: 8 }, timeouts: { revocation_check_seconds: 2 } },
  });
  browser = await launchChromium();
});

afterAll(async () => {
  await browser?.close();
  await gw?.stop();
  await dc?.stop();
});

/** An account with one app password, signed in on the page by a scripted client. */
async function signedInWithAppPassword(user: string, from: string): Promise<{ client: PageClient; appPassword: string; id: number }> {
  if (!gw.store.accounts.find(user)) gw.store.accounts.add(user);
  const created = await gw.store.appPasswords.create(user, { name: `laptop-${Math.random().toString(36).slice(2, 8)}` });
  const client = new PageClient(gw, from);
  expect(h1(await client.signIn(user, `${user}-upstream-pw`))).toBe('Security');
  return { client, appPassword: created.password, id: created.info.id };
}

const active = (user: string) => gw.store.appPasswords.list(user).filter((p) => p.revokedAt === null).length;

describe('forms posted from elsewhere', () => {
  it('a cross-site form in a real browser is refused with 403 and changes nothing', async () => {
    // Catches: a state change that trusts the cookie alone (the classic CSRF).
    const { context, page } = await openPage(browser, gw.url);
    gw.store.accounts.add('alice');
    await gw.store.appPasswords.create('alice', { name: 'phone' });
    await signIn(page, 'alice', 'alice-upstream-pw');
    expect(await page.getByRole('heading', { level: 1 }).innerText()).toBe('Security');
    // The attacker's page: another origin, a form that posts itself to "remove all".
    const evil = http.createServer((_req, res) => {
      res.setHeader('content-type', 'text/html');
      res.end(`<form method="post" action="${gw.url}app-passwords/remove"><input name="_csrf" value="guess"></form><script>document.forms[0].submit()</script>`);
    });
    await new Promise<void>((resolve) => evil.listen(0, '127.0.0.1', resolve));
    try {
      const answer = page.waitForResponse((r) => r.url() === `${gw.url}app-passwords/remove`);
      await page.goto(`http://127.0.0.1:${(evil.address() as AddressInfo).port}/`);
      expect((await answer).status()).toBe(403);
      expect(active('alice')).toBe(1);
    } finally {
      evil.close();
      await context.close();
    }
  });

  it('with the victim\'s cookie and a valid token, a POST that says it comes from another site is refused; the same POST from the page works', async () => {
    // Catches: relying on SameSite alone (older browsers, same-site subdomains), or on the token alone.
    const { client } = await signedInWithAppPassword('bob', '127.0.0.21');
    await client.get('/app-passwords/remove');
    const elsewhere: Array<Record<string, string>> = [{ 'sec-fetch-site': 'cross-site' }, { 'sec-fetch-site': 'same-site' }, { 'sec-fetch-site': 'same-origin', origin: 'https://evil.example' }];
    for (const headers of elsewhere) {
      const refused = await client.post('/app-passwords/remove', {}, { headers });
      expect(refused.status, JSON.stringify(headers)).toBe(403);
      expect(refused.body).toMatch(/did not come from this page/);
      expect(active('bob')).toBe(1);
    }
    expect((await client.post('/app-passwords/remove', {})).status).toBe(303);
    expect(active('bob')).toBe(0);
  });

  it('a POST without the CSRF token, with a made-up one, or with another session\'s is refused with 403 and changes nothing', async () => {
    const { client } = await signedInWithAppPassword('carol', '127.0.0.22');
    const other = new PageClient(gw, '127.0.0.22');
    await other.get('/');
    await client.get('/app-passwords/remove');
    for (const csrf of [null, 'made-up', other.csrf!]) {
      const refused = await client.post('/app-passwords/remove', {}, { csrf });
      expect(refused.status, String(csrf)).toBe(403);
      expect(refused.body).not.toMatch(/\bat .+:\d+:\d+/);
      expect(active('carol')).toBe(1);
    }
  });

  it('GET never changes anything: every action\'s address only shows its confirmation', async () => {
    const { client, id } = await signedInWithAppPassword('dave', '127.0.0.23');
    for (const path of ['/app-passwords/remove', `/app-passwords/${id}/revoke`, '/sign-out', '/two-step/start', '/two-step/turn-off', '/two-step/recovery-codes', '/app-passwords']) {
      const answer = await client.get(path);
      expect([200, 404], path).toContain(answer.status);
    }
    expect(active('dave')).toBe(1);
    expect(gw.store.accounts.get('dave').totpState).toBe('none');
    expect(h1(await client.get('/'))).toBe('Security');
  });
});

describe('the session cookie', () => {
  it('is __Host- prefixed, Secure, HttpOnly, SameSite=Strict, Path=/, without Domain, in the browser too', async () => {
    const client = new PageClient(gw, '127.0.0.24');
    const first = await client.get('/');
    const header = first.cookies.find((c) => c.startsWith('__Host-mailgate='))!;
    expect(header).toBeDefined();
    const attributes = header.split(';').slice(1).map((a) => a.trim().toLowerCase());
    expect(attributes).toEqual(expect.arrayContaining(['path=/', 'httponly', 'secure', 'samesite=strict']));
    expect(attributes.some((a) => a.startsWith('domain='))).toBe(false);

    const { context, page } = await openPage(browser, gw.url);
    const cookies = await context.cookies();
    expect(cookies).toHaveLength(1);
    expect(cookies[0]).toMatchObject({ name: '__Host-mailgate', path: '/', secure: true, httpOnly: true, sameSite: 'Strict' });
    // Not readable from the page's own script either.
    expect(await page.evaluate('document.cookie')).toBe('');
    await context.close();
  });

  it('gets a new id at sign-in and at "Confirm it\'s you": a cookie fixed before sign-in is worth nothing after', async () => {
    const client = new PageClient(gw, '127.0.0.25');
    await client.get('/');
    const before = client.cookie!;
    expect(h1(await client.signIn('erin', 'erin-upstream-pw'))).toBe('Security');
    expect(client.cookie).not.toBe(before);
    // The attacker who planted `before` is not signed in.
    expect(h1(await request(gw, 'GET', '/', { headers: { cookie: before } }))).toBe('Sign in');

    clock.advance(11 * 60_000);
    expect(h1(await client.get('/app-passwords/new'))).toBe("Confirm it's you");
    const signedIn = client.cookie!;
    const confirmed = await client.followed(await client.post('/reauth', { password: 'erin-upstream-pw', next: '/app-passwords/new' }));
    expect(h1(confirmed)).toBe('Create a new app password');
    expect(client.cookie).not.toBe(signedIn);
    expect(h1(await request(gw, 'GET', '/', { headers: { cookie: signedIn } }))).toBe('Sign in');
  });

  it('replayed after sign-out, it is refused: no page, no action', async () => {
    const { context, page } = await openPage(browser, gw.url);
    await signIn(page, 'frank', 'frank-upstream-pw');
    await page.getByRole('link', { name: 'Create a new app password' }).click();
    const cookie = await sessionCookie(context);
    const token = await page.locator('input[name="_csrf"]').first().getAttribute('value');
    await page.getByRole('button', { name: 'Sign out' }).click();
    expect(await page.getByRole('heading', { level: 1 }).innerText()).toBe('Sign in');

    expect(h1(await request(gw, 'GET', '/', { headers: { cookie } }))).toBe('Sign in');
    const replayed = await request(gw, 'POST', '/app-passwords', {
      headers: { cookie, 'sec-fetch-site': 'same-origin' },
      body: new URLSearchParams({ name: 'stolen', imap: 'on', _csrf: token! }).toString(),
    });
    expect(replayed.status).toBe(403);
    expect(gw.store.appPasswords.list('frank')).toEqual([]);
    await context.close();
  });

  it('ends after session_idle_minutes unused, and after session_max_hours however busy', async () => {
    const idle = new PageClient(gw, '127.0.0.26');
    expect(h1(await idle.signIn('grace', 'grace-upstream-pw'))).toBe('Security');
    clock.advance(14 * 60_000);
    expect(h1(await idle.get('/'))).toBe('Security');
    clock.advance(16 * 60_000);
    expect(h1(await idle.get('/'))).toBe('Sign in');

    const busy = new PageClient(gw, '127.0.0.26');
    expect(h1(await busy.signIn('grace', 'grace-upstream-pw'))).toBe('Security');
    let stillIn = 0;
    for (let minutes = 0; minutes < 8 * 60 + 30; minutes += 10) {
      clock.advance(10 * 60_000);
      if (h1(await busy.get('/')) === 'Security') stillIn += 10;
    }
    expect(stillIn).toBeGreaterThanOrEqual(7 * 60 + 50);
    expect(stillIn).toBeLessThanOrEqual(8 * 60);
  });

  it('end everywhere else when 2-step verification is turned on, and everywhere when the account is removed', async () => {
    const here = new PageClient(gw, '127.0.0.27');
    const there = new PageClient(gw, '127.0.0.28');
    expect(h1(await here.signIn('heidi', 'heidi-upstream-pw'))).toBe('Security');
    expect(h1(await there.signIn('heidi', 'heidi-upstream-pw'))).toBe('Security');
    const setup = await here.post('/two-step/start', {});
    const secret = /id="secret">([^<]+)</.exec(setup.body)![1]!.replace(/\s+/g, '');
    expect(h1(await here.post('/two-step/enable', { code: clock.code(secret) }))).toBe('Your recovery codes');
    expect(h1(await here.get('/'))).toBe('Security');
    expect(h1(await there.get('/'))).toBe('Sign in');

    gw.store.accounts.remove('heidi');
    expect(h1(await here.get('/'))).toBe('Sign in');
  });
});

describe('headers', () => {
  it('a strict CSP without inline script, HSTS, no referrer, no sniffing, no framing, no caching, on every kind of answer', async () => {
    const { client } = await signedInWithAppPassword('erin', '127.0.0.29');
    const answers = {
      'sign-in page': await request(gw, 'GET', '/'),
      'security page': await client.get('/'),
      'create form': await client.get('/app-passwords/new'),
      'not found': await client.get('/no-such-page'),
      'refused POST': await client.post('/app-passwords/remove', {}, { csrf: null }),
      'bad form': await client.post('/app-passwords', { name: 'x', imap: 'on', extra: '1' }),
    };
    for (const [what, answer] of Object.entries(answers)) {
      const h = answer.headers;
      expect(h['content-security-policy'], what).toBe(
        "default-src 'none';script-src 'self';style-src 'self';img-src 'self';connect-src 'self';form-action 'self';frame-ancestors 'none';base-uri 'none'",
      );
      expect(h['strict-transport-security'], what).toBe('max-age=31536000');
      expect(h['referrer-policy'], what).toBe('no-referrer');
      expect(h['x-content-type-options'], what).toBe('nosniff');
      expect(h['x-frame-options'], what).toBe('DENY');
      expect(h['x-powered-by'], what).toBeUndefined();
      if (h['content-type']?.toString().startsWith('text/html')) {
        expect(h['cache-control'], what).toBe('no-store');
        // Every script is a file of this site: nothing inline for the CSP to have to allow.
        expect(answer.body.match(/<script\b[^>]*>/g) ?? [], what).toEqual(['<script src="/assets/page.js" defer>']);
        expect(answer.body, what).not.toMatch(/\son[a-z]+=|style=/i);
      }
    }
  });

  it('"Confirm it\'s you" only ever leads to a path on the page', async () => {
    const client = new PageClient(gw, '127.0.0.30');
    await client.signIn('erin', 'erin-upstream-pw');
    clock.advance(11 * 60_000);
    for (const next of ['//evil.example/', 'https://evil.example/', '/\\evil.example', 'javascript:alert(1)']) {
      await client.get('/app-passwords/new');
      const answer = await client.post('/reauth', { password: 'erin-upstream-pw', next });
      expect(answer.status, next).toBe(303);
      expect(answer.headers.location, next).toBe('/');
    }
  });
});

describe('signing in is guarded like a mail login', () => {
  it('wrong passwords are delayed, counted with IMAP\'s, and block the account; then the mail server is not asked', async () => {
    // Catches: the page as a side door for guessing (its own counters, or none).
    gw.store.accounts.add('ivan');
    const attacker = new PageClient(gw, '127.0.0.31');
    await attacker.get('/');
    // Two wrong IMAP logins and one wrong page sign-in...
    for (const from of ['127.0.0.32', '127.0.0.33']) {
      const { c, answer } = await imapsLogin(gw, 'ivan', `wrong-imap-${from}`, { from });
      expect(taggedLine(answer, 'L1')).toMatch(/^L1 NO /);
      c.destroy();
    }
    let started = performance.now();
    const third = await attacker.post('/sign-in', { username: 'ivan', password: 'wrong-page-1' });
    expect(pageError(third)).toBe(SIGN_IN_FAILED);
    // ...the page's failure is delayed like the third failure of the account would be over IMAP.
    expect(performance.now() - started).toBeGreaterThanOrEqual(PENALTIES_ON.failure_delay_base_ms);
    const fourth = await attacker.post('/sign-in', { username: 'ivan', password: 'wrong-page-2' });
    expect(pageError(fourth)).toBe(SIGN_IN_FAILED);
    expect(gw.store.penalties.get('account', 'ivan', 3_600_000).blockedUntil).not.toBeNull();

    // Blocked: the right password gets the same answer, and Dovecot never hears of it.
    const dovecotLog = (await dc.logText()).length;
    started = performance.now();
    const right = await new PageClient(gw, '127.0.0.34').signIn('ivan', 'ivan-upstream-pw');
    expect(pageError(right)).toBe(SIGN_IN_FAILED);
    const { c, answer } = await imapsLogin(gw, 'ivan', 'ivan-upstream-pw', { from: '127.0.0.35' });
    expect(taggedLine(answer, 'L1')).toMatch(/^L1 NO \[UNAVAILABLE\]/);
    c.destroy();
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect((await dc.logText()).slice(dovecotLog)).not.toMatch(/ivan/);
    expect(gw.logs().filter((l) => l.msg === 'login failed' && l.protocol === 'web' && l.user === 'ivan')).toHaveLength(2);
  });

  it('an app password never signs in to the page, and gets the same message as a wrong password', async () => {
    gw.store.accounts.add('judy');
    const { password } = await gw.store.appPasswords.create('judy', { name: 'phone' });
    const client = new PageClient(gw, '127.0.0.41');
    const answer = await client.signIn('judy', password);
    expect(h1(answer)).toBe('Sign in');
    expect(pageError(answer)).toBe(SIGN_IN_FAILED);
    // Grouped as shown, or run together: neither.
    expect(pageError(await client.signIn('judy', password.replace(/ /g, '')))).toBe(SIGN_IN_FAILED);
  });

  it('unknown names, wrong passwords, app passwords and names that cannot be accounts all get the one same page', async () => {
    const bodies: string[] = [];
    for (const [i, [username, password]] of [
      ['nosuchuser', 'whatever-pw'],
      ['alice', 'wrong-pw'],
      ['alice*gwmaster', 'alice-upstream-pw'],
      ['bad\u0001name', 'x'],
    ].entries()) {
      const client = new PageClient(gw, `127.0.0.${51 + i}`);
      const answer = await client.signIn(username!, password!);
      expect(answer.status).toBe(200);
      expect(pageError(answer), username).toBe(SIGN_IN_FAILED);
      // The whole page, but for the token and the name typed back into the field.
      bodies.push(answer.body.replace(/value="[^"]*"/g, 'value=""'));
    }
    expect(new Set(bodies).size).toBe(1);
  });

  it('a TOTP code works once: the same code again (a replay) is refused', async () => {
    gw.store.accounts.add('kim');
    const secret = enableTotp(gw.store, 'kim', clock.now());
    const code = clock.nextCode(secret);
    expect(h1(await new PageClient(gw, '127.0.0.61').signIn('kim', 'kim-upstream-pw', code))).toBe('Security');
    const replay = await new PageClient(gw, '127.0.0.62').signIn('kim', 'kim-upstream-pw', code);
    expect(h1(replay)).toBe('2-Step Verification');
    expect(pageError(replay)).toBe(CODE_FAILED);
  });

  it('a recovery code works once, typed any way; the others still work', async () => {
    gw.store.accounts.add('leo');
    enableTotp(gw.store, 'leo', clock.now());
    const codes = gw.store.recoveryCodes.regenerate('leo');
    const useRecovery = async (from: string, code: string) => {
      const client = new PageClient(gw, from);
      expect(h1(await client.signIn('leo', 'leo-upstream-pw'))).toBe('2-Step Verification');
      await client.get('/recovery');
      return client.followed(await client.post('/recovery', { code }));
    };
    expect(h1(await useRecovery('127.0.0.63', codes[0]!))).toBe('Security');
    const again = await useRecovery('127.0.0.64', codes[0]!);
    expect(pageError(again)).toBe(CODE_FAILED);
    expect(h1(await useRecovery('127.0.0.65', codes[1]!.replace(/-/g, '').toUpperCase()))).toBe('Security');
    expect(gw.store.recoveryCodes.remaining('leo')).toBe(8);
  });

  it('wrong codes count as failures of the account: they block it, and then the right code does not get in', async () => {
    gw.store.accounts.add('mia');
    const secret = enableTotp(gw.store, 'mia', clock.now());
    const client = new PageClient(gw, '127.0.0.66');
    expect(h1(await client.signIn('mia', 'mia-upstream-pw'))).toBe('2-Step Verification');
    for (let i = 0; i < 4; i++) expect(pageError(await client.post('/verify', { code: String(100000 + i) }))).toBe(CODE_FAILED);
    expect(pageError(await client.post('/verify', { code: clock.nextCode(secret) }))).toBe(CODE_FAILED);
    expect(gw.logs().filter((l) => l.msg === 'login failed' && l.user === 'mia' && l.reason === 'wrong-code')).toHaveLength(4);
  });
});

describe('malformed input', () => {
  it('gets a clear page, changes nothing, and never shows how the server failed', async () => {
    const { client } = await signedInWithAppPassword('alice', '127.0.0.71');
    const before = gw.store.appPasswords.list('alice').length;
    await client.get('/app-passwords/new');
    const cases: Array<[string, Promise<import('../support/web.js').HttpAnswer>, number, RegExp]> = [
      ['a body over 16 KiB', client.post('/app-passwords', { name: 'x'.repeat(20_000), imap: 'on' }), 413, /not filled in as expected/],
      ['an unknown field', client.post('/app-passwords', { name: 'ok', imap: 'on', admin: '1' }), 400, /not filled in as expected/],
      ['a name over the field limit', client.post('/app-passwords', { name: 'x'.repeat(300), imap: 'on' }), 400, /not filled in as expected/],
      ['a name too long for an app password', client.post('/app-passwords', { name: 'x'.repeat(200), imap: 'on' }), 400, /The name must be 1 to \d+ characters/],
      ['a name with a control character', client.post('/app-passwords', { name: 'evil\u001b[2Jname', imap: 'on' }), 400, /without control characters/],
      ['neither IMAP nor POP3', client.post('/app-passwords', { name: 'none' }), 400, /Choose IMAP, POP3 or both/],
      ['an expiry not offered', client.post('/app-passwords', { name: 'odd', imap: 'on', expires: '1000y' }), 400, /not filled in as expected/],
      ['a revoke of an id that is not a number', client.post('/app-passwords/1e3/revoke', {}), 400, /not filled in as expected/],
    ];
    for (const [what, pending, status, message] of cases) {
      const answer = await pending;
      expect(answer.status, what).toBe(status);
      expect(answer.body, what).toMatch(message);
      expect(answer.body, what).not.toMatch(/\bat .+:\d+:\d+|Error:|FST_|node_modules|\/src\//);
    }
    const json = await request(gw, 'POST', '/app-passwords', {
      headers: { cookie: client.cookie!, 'sec-fetch-site': 'same-origin', 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'json', imap: 'on', _csrf: client.csrf }),
    });
    expect(json.status).toBe(415);
    expect(gw.store.appPasswords.list('alice').length).toBe(before);
    // Another user's app password: revoking it by id is "not found", and it stays.
    const { id: bobsId } = await signedInWithAppPassword('bob', '127.0.0.72');
    await client.get('/');
    const foreign = await client.post(`/app-passwords/${bobsId}/revoke`, {});
    expect(gw.store.appPasswords.list('bob').find((p) => p.id === bobsId)?.revokedAt).toBeNull();
    expect(foreign.status).toBe(303);
    assertNoInternalErrors(gw);
  });
});

describe('timing', () => {
  let quiet: PageGateway;

  beforeAll(async () => {
    // Without self-enrolment an unknown name is refused locally, a known one by the mail server.
    quiet = await startPageGateway(dc, { config: { web: { self_enroll: false } } });
    quiet.store.accounts.add('alice');
  });

  afterAll(async () => {
    await quiet?.stop();
  });

  it('an unknown name and a known account with a wrong password are refused in the same time', async () => {
    // Catches: a local refusal answered at once while the mail server takes its time (enumeration).
    const unknown: number[] = [];
    const known: number[] = [];
    const client = new PageClient(quiet);
    await client.get('/');
    for (let i = 0; i < 14; i++) {
      const [username, into] = i % 2 === 0 ? ['nosuchuser', unknown] : ['alice', known];
      const started = performance.now();
      expect(pageError(await client.post('/sign-in', { username, password: `wrong-${i}` }))).toBe(SIGN_IN_FAILED);
      if (i >= 2) into.push(performance.now() - started);
    }
    const median = (v: number[]) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)]!;
    const [u, k] = [median(unknown), median(known)];
    expect(Math.max(u, k) / Math.min(u, k), `unknown ${u.toFixed(0)} ms, known ${k.toFixed(0)} ms`).toBeLessThanOrEqual(1.5);
  });
});
