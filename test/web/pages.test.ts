/**
 * The rest of what the page promises, in a real Chromium in front of a real
 * Dovecot: revoking one app password (with a confirmation) closes its mail
 * sessions; "Confirm it's you" before sensitive actions; turning 2-step
 * verification off with a code, new recovery codes; the activity list; the
 * failed-login hint linking to the page; and no password, code, secret or
 * session id in the log or the audit table.
 */
import { readFileSync } from 'node:fs';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { assertNoInternalErrors, imapsLogin } from '../support/attack.js';
import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { credentialFailure, imaps, taggedLine } from '../support/imap-client.js';
import { freePort } from '../support/ports.js';
import { enableTotp } from '../support/store.js';
import { launchChromium, openPage, secretOnPage, sessionCookie, signIn, startPageGateway, SteppingClock, type PageGateway } from '../support/web.js';

let dc: DovecotHandle;
let gw: PageGateway;
let browser: Browser;
const clock = new SteppingClock();

beforeAll(async () => {
  dc = await startDovecot({ users: ['alice', 'bob', 'carol', 'dave', 'erin'].map((name) => ({ name, password: `${name}-upstream-pw` })) });
  // No help_url: failed logins link to the page (on a port chosen here, as the link names it).
  gw = await startPageGateway(dc, {
    now: clock.now,
    config: { web: { listen: `127.0.0.1:${await freePort()}` }, policy: { help_url: '' }, timeouts: { revocation_check_seconds: 2 } },
  });
  browser = await launchChromium();
});

afterAll(async () => {
  await browser?.close();
  await gw?.stop();
  await dc?.stop();
});

const heading = (page: Page) => page.getByRole('heading', { level: 1 }).innerText();

/** Creates an app password on the page; returns it as shown. */
async function createOnPage(page: Page, name: string): Promise<string> {
  await page.getByRole('link', { name: 'Create a new app password' }).click();
  await page.getByLabel('Name').fill(name);
  await page.getByRole('button', { name: 'Create' }).click();
  expect(await heading(page)).toBe('Use this app password to sign in');
  const shown = await page.locator('#app-password').innerText();
  await page.getByRole('link', { name: 'Done' }).click();
  return shown;
}

describe('the page', () => {
  it('revoking one app password asks first, then closes its IDLE session at once; the other one keeps working', async () => {
    const { context, page } = await openPage(browser, gw.url);
    await signIn(page, 'alice', 'alice-upstream-pw');
    const laptop = await createOnPage(page, 'Laptop');
    const phone = await createOnPage(page, 'Phone');
    const { c: idle, answer } = await imapsLogin(gw, 'alice', laptop);
    expect(taggedLine(answer, 'L1')).toMatch(/^L1 OK /);
    expect(taggedLine(await idle.command('s', 'SELECT INBOX'), 's')).toMatch(/^s OK /);
    idle.send('i IDLE\r\n');
    expect(await idle.readLine()).toBe('+ idling\r\n');

    await page.getByRole('link', { name: 'Revoke Laptop' }).click();
    expect(await heading(page)).toBe('Revoke "Laptop"?');
    // Cancel changes nothing.
    await page.getByRole('link', { name: 'Cancel' }).click();
    expect(await heading(page)).toBe('Security');
    expect(gw.store.appPasswords.list('alice').filter((p) => p.revokedAt === null)).toHaveLength(2);
    await page.getByRole('link', { name: 'Revoke Laptop' }).click();
    const since = Date.now();
    await page.getByRole('button', { name: 'Revoke' }).click();
    expect(await idle.waitClosed(6_000)).toMatch(/^\* BYE \[UNAVAILABLE\] /);
    expect(Date.now() - since).toBeLessThan(5_000);
    expect(await page.getByRole('status').innerText()).toMatch(/"Laptop" is revoked/);
    expect(await page.getByRole('row', { name: /Laptop/ }).count()).toBe(0);
    expect(await page.getByRole('row', { name: /Phone/ }).count()).toBe(1);
    // A mail program that says its name (IMAP ID before login): the table says which one used it.
    const c = await imaps(gw);
    expect(taggedLine(await c.command('i', 'ID ("name" "Thunderbird" "version" "153.0")'), 'i')).toMatch(/^i OK /);
    expect(taggedLine(await c.command('L1', `LOGIN alice "${phone}"`), 'L1')).toMatch(/^L1 OK /);
    c.destroy();
    await page.reload();
    expect(await page.getByRole('row', { name: /Phone/ }).innerText()).toMatch(/from 127\.0\.0\.1 over IMAP with Thunderbird\/153\.0/);
    await context.close();
  });

  it('sensitive actions ask for the password again after reauth_minutes; a wrong one is refused like any sign-in', async () => {
    const { context, page } = await openPage(browser, gw.url);
    await signIn(page, 'bob', 'bob-upstream-pw');
    const before = await sessionCookie(context);
    clock.advance(11 * 60_000);
    for (const path of ['app-passwords/new', 'app-passwords/remove', 'app-passwords/1/revoke', 'two-step/turn-off', 'two-step/recovery-codes']) {
      await page.goto(`${gw.url}${path}`);
      expect(await heading(page), path).toBe("Confirm it's you");
    }
    // Turning 2-step verification on is guarded too (a stolen cookie must not lock the owner out).
    await page.goto(gw.url);
    await page.getByRole('button', { name: 'Turn on 2-Step Verification' }).click();
    expect(await heading(page)).toBe("Confirm it's you");
    expect(gw.store.accounts.get('bob').totpState).toBe('none');
    await page.goto(`${gw.url}app-passwords/new`);
    await page.getByLabel('Password', { exact: true }).fill('not-my-password');
    await page.getByRole('button', { name: 'Continue' }).click();
    expect(await heading(page)).toBe("Confirm it's you");
    expect(await page.getByRole('alert').innerText()).toMatch(/^Sign-in failed\./);
    await page.getByLabel('Password', { exact: true }).fill('bob-upstream-pw');
    await page.getByRole('button', { name: 'Continue' }).click();
    // Back where the user was going, with a new session id.
    expect(await heading(page)).toBe('Create a new app password');
    expect(await sessionCookie(context)).not.toBe(before);
    await context.close();
  });

  it('turning 2-step verification off needs a current code; new recovery codes replace the old ones', async () => {
    gw.store.accounts.add('carol');
    const secret = enableTotp(gw.store, 'carol', clock.now());
    const oldCodes = gw.store.recoveryCodes.regenerate('carol');
    const { context, page } = await openPage(browser, gw.url);
    await signIn(page, 'carol', 'carol-upstream-pw');
    await page.getByLabel('Code', { exact: true }).fill(clock.nextCode(secret));
    await page.getByRole('button', { name: 'Verify' }).click();
    expect(await page.locator('main').innerText()).toMatch(/10 of 10 recovery codes left/);

    await page.getByRole('link', { name: 'New recovery codes' }).click();
    await page.getByRole('button', { name: 'Make new recovery codes' }).click();
    expect(await heading(page)).toBe('Your recovery codes');
    const newCodes = await page.locator('ol.codes code').allInnerTexts();
    expect(newCodes).toHaveLength(10);
    expect(newCodes.filter((code) => oldCodes.includes(code))).toEqual([]);
    expect(gw.store.recoveryCodes.consume('carol', oldCodes[0]!)).toBe(false);
    await page.getByRole('link', { name: 'Done' }).click();

    await page.getByRole('link', { name: 'Turn off' }).click();
    expect(await heading(page)).toBe('Turn off 2-Step Verification');
    await page.getByLabel('Code', { exact: true }).fill('123456');
    await page.getByRole('button', { name: 'Turn off' }).click();
    expect(await page.getByRole('alert').innerText()).toMatch(/That code did not work/);
    expect(gw.store.accounts.get('carol').totpState).toBe('enabled');
    await page.getByLabel('Code', { exact: true }).fill(clock.nextCode(secret));
    await page.getByRole('button', { name: 'Turn off' }).click();
    expect(await page.getByRole('status').innerText()).toBe('2-Step Verification is off.');
    expect(gw.store.accounts.get('carol').totpState).toBe('none');
    expect(gw.store.recoveryCodes.remaining('carol')).toBe(0);
    const activity = await page.locator('ul.activity').innerText();
    expect(activity).toMatch(/2-Step Verification turned off/);
    expect(activity).toMatch(/New recovery codes made/);
    await context.close();
  });

  it('recent security activity: the last 20 events, with time, address and protocol, failed mail logins included', async () => {
    gw.store.accounts.add('dave');
    // With 2-step verification on, a main password is refused by mailgate itself: quick failures.
    const secret = enableTotp(gw.store, 'dave', clock.now());
    for (let i = 0; i < 22; i++) {
      const { c } = await imapsLogin(gw, 'dave', `wrong-${i}`);
      c.destroy();
    }
    const { context, page } = await openPage(browser, gw.url);
    await signIn(page, 'dave', 'dave-upstream-pw');
    await page.getByLabel('Code', { exact: true }).fill(clock.nextCode(secret));
    await page.getByRole('button', { name: 'Verify' }).click();
    const items = await page.locator('ul.activity li').allInnerTexts();
    expect(items).toHaveLength(20);
    expect(items[0]).toMatch(/^\d{4}-\d\d-\d\d \d\d:\d\d UTC · Signed in to this page · from 127\.0\.0\.1 on this page$/);
    expect(items[1]).toMatch(/^\d{4}-\d\d-\d\d \d\d:\d\d UTC · Failed sign-in · from 127\.0\.0\.1 over IMAP$/);
    await context.close();
  });

  it('failed mail logins link to the page when policy.help_url is not set', async () => {
    gw.store.accounts.add('erin');
    const { c, answer } = await imapsLogin(gw, 'erin', 'wrong');
    expect(answer).toBe(credentialFailure('L1', gw.url));
    c.destroy();
  });

  it('no password, app password, code, secret, recovery code or session id reaches the log or the audit table', async () => {
    const { context, page } = await openPage(browser, gw.url);
    await signIn(page, 'erin', 'erin-upstream-pw');
    await page.getByRole('button', { name: 'Turn on 2-Step Verification' }).click();
    const secret = await secretOnPage(page);
    const code = clock.nextCode(secret);
    await page.getByLabel('Code', { exact: true }).fill(code);
    await page.getByRole('button', { name: 'Turn on' }).click();
    const codes = await page.locator('ol.codes code').allInnerTexts();
    await page.getByRole('link', { name: 'Done' }).click();
    const appPassword = await createOnPage(page, 'Mail');
    const cookie = (await sessionCookie(context)).split('=')[1]!;
    await page.getByRole('button', { name: 'Sign out' }).click();
    await signIn(page, 'erin', 'erin-upstream-pw');
    await page.getByRole('link', { name: 'Use a recovery code' }).click();
    await page.getByLabel('Recovery code').fill(codes[3]!);
    await page.getByRole('button', { name: 'Verify' }).click();
    expect(await heading(page)).toBe('Security');
    await context.close();

    const secrets = [
      'erin-upstream-pw',
      appPassword,
      appPassword.replace(/ /g, ''),
      secret,
      code,
      ...codes,
      ...codes.map((c) => c.replace(/-/g, '')),
      cookie,
      decodeURIComponent(cookie).split('.')[0]!,
    ];
    const audit = JSON.stringify(gw.store.audit.list({ limit: 10_000 }));
    const log = gw.logText();
    for (const value of secrets) {
      expect(log, 'log').not.toContain(value);
      expect(audit, 'audit').not.toContain(value);
    }
    // The store file itself holds none of them either (only hashes, and the secret sealed).
    const file = readFileSync(gw.config.store.path).toString('latin1') + readFileSync(`${gw.config.store.path}-wal`).toString('latin1');
    for (const value of secrets) expect(file).not.toContain(value);
    assertNoInternalErrors(gw);
  });
});
