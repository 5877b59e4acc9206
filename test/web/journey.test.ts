/**
 * The self-service page end to end, as a user goes through it, in a real
 * headless Chromium, against a real Dovecot, with real mail clients: sign in
 * with the mail password, turn on 2-step verification (the code computed
 * from the key on the page), see the main password refused over IMAP, create
 * an app password and log in with it from Python's imaplib, sign out and in
 * again with password and code, remove all app passwords and see the open
 * IDLE session of that password closed within 5 seconds. Then the same
 * create / remove-all journey with JavaScript off.
 */
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { assertNoInternalErrors, imapsLogin } from '../support/attack.js';
import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { taggedLine } from '../support/imap-client.js';
import { mailClientScript, pythonJson } from '../support/python.js';
import { launchChromium, openPage, secretOnPage, signIn, startPageGateway, SteppingClock, type PageGateway } from '../support/web.js';

const HELP_URL = 'https://mail.example.test/app-passwords';

let dc: DovecotHandle;
let gw: PageGateway;
let browser: Browser;
const clock = new SteppingClock();

beforeAll(async () => {
  dc = await startDovecot({ users: ['alice', 'bob'].map((name) => ({ name, password: `${name}-upstream-pw` })) });
  gw = await startPageGateway(dc, { now: clock.now, config: { policy: { help_url: HELP_URL }, timeouts: { revocation_check_seconds: 2 } } });
  browser = await launchChromium();
});

afterAll(async () => {
  await browser?.close();
  await gw?.stop();
  await dc?.stop();
});

/** Logs in with Python's imaplib over implicit TLS and SELECTs INBOX; what the server said. */
async function imaplibLogin(user: string, password: string): Promise<{ ok: boolean; error?: string; exists?: number }> {
  const script = mailClientScript(`
    M = IMAPS('localhost', INPUT['port'], ssl_context=ctx())
    try:
        M.login(INPUT['user'], INPUT['password'])
    except imaplib.IMAP4.error as e:
        emit({'ok': False, 'error': str(e)})
    else:
        typ, data = M.select('INBOX')
        M.logout()
        emit({'ok': True, 'exists': int(data[0])})
  `);
  return (await pythonJson(script, { ca: gw.caCert, port: gw.ports.imaps, user, password })) as { ok: boolean; error?: string; exists?: number };
}

async function heading(page: Page): Promise<string> {
  return page.getByRole('heading', { level: 1 }).innerText();
}

describe('the self-service page, in Chromium, in front of Dovecot', () => {
  it('sign in → 2-step verification on → main password refused over IMAP → app password works in imaplib → sign in again with a code → remove all closes the IDLE session', async () => {
    const { context, page } = await openPage(browser, gw.url);
    expect(await heading(page)).toBe('Sign in');

    // Signing in with the mail password (checked by Dovecot): alice becomes an account (self_enroll).
    await signIn(page, 'alice', 'alice-upstream-pw');
    expect(await heading(page)).toBe('Security');
    for (const name of ['2-Step Verification', 'App passwords', 'Recent security activity']) {
      await expect.poll(() => page.getByRole('heading', { level: 2, name }).count()).toBe(1);
    }
    expect(await page.getByRole('button', { name: 'Sign out' }).count()).toBe(1);
    expect(gw.store.accounts.find('alice')?.totpState).toBe('none');

    // Turning on 2-step verification: the QR code is an inline SVG, the key is there as text.
    await page.getByRole('button', { name: 'Turn on 2-Step Verification' }).click();
    expect(await heading(page)).toBe('Turn on 2-Step Verification');
    expect(await page.locator('figure.qr svg').count()).toBe(1);
    await expect.poll(() => page.getByText('Mail programs will then need app passwords.').count()).toBe(1);
    const secret = await secretOnPage(page);
    expect(secret).toMatch(/^[A-Z2-7]{32}$/);
    await page.getByLabel('Code', { exact: true }).fill(clock.code(secret));
    await page.getByRole('button', { name: 'Turn on' }).click();
    expect(await heading(page)).toBe('Your recovery codes');
    const codes = await page.locator('ol.codes code').allInnerTexts();
    expect(codes).toHaveLength(10);
    expect(new Set(codes).size).toBe(10);
    await page.getByRole('link', { name: 'Done' }).click();
    expect(await page.getByText('On.', { exact: true }).count()).toBe(1);
    expect(gw.store.accounts.find('alice')?.totpState).toBe('enabled');

    // The main password no longer works for mail: the [ALERT] sends the user to app passwords.
    const refused = await imaplibLogin('alice', 'alice-upstream-pw');
    expect(refused.ok).toBe(false);
    expect(refused.error).toMatch(/AUTHENTICATIONFAILED/);

    // Creating an app password: shown once, with the settings of this gateway's listeners.
    await page.getByRole('link', { name: 'Create a new app password' }).click();
    expect(await heading(page)).toBe('Create a new app password');
    expect(await page.getByLabel('IMAP').isChecked()).toBe(true);
    expect(await page.getByLabel('POP3').isChecked()).toBe(true);
    await page.getByLabel('Name').fill('Thunderbird on laptop');
    await page.getByLabel('Expires').selectOption({ label: '90 days' });
    const created = page.waitForResponse((r) => r.url().endsWith('/app-passwords') && r.request().method() === 'POST');
    await page.getByRole('button', { name: 'Create' }).click();
    expect((await created).headers()['cache-control']).toBe('no-store');
    expect(await heading(page)).toBe('Use this app password to sign in');
    const shown = await page.locator('#app-password').innerText();
    expect(shown).toMatch(/^[a-z]{4} [a-z]{4} [a-z]{4} [a-z]{4}$/);
    const settings = await page.locator('table.settings').innerText();
    expect(settings).toContain(String(gw.ports.imaps));
    expect(settings).toContain(String(gw.ports.pop3s));
    expect(settings).toContain('SSL/TLS');
    expect(settings).toContain('alice');
    // The Copy button (the page's only script, allowed by its CSP) puts it on the clipboard.
    await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: gw.url.replace(/\/$/, '') });
    await page.getByRole('button', { name: 'Copy' }).click();
    await expect.poll(() => page.getByRole('status').innerText()).toBe('Copied');
    expect(await page.evaluate('navigator.clipboard.readText()')).toBe(shown);
    await page.getByRole('link', { name: 'Done' }).click();

    // A real mail client logs in with it, as typed from the page (spaces and all).
    const loggedIn = await imaplibLogin('alice', shown);
    expect(loggedIn).toEqual({ ok: true, exists: 0 });
    await page.reload();
    const row = page.getByRole('row', { name: /Thunderbird on laptop/ });
    await expect.poll(() => row.innerText()).toMatch(/IMAP, POP3/);
    expect(await row.innerText()).toMatch(/from 127\.0\.0\.1 over IMAP/);
    const activity = await page.locator('ul.activity').innerText();
    expect(activity).toMatch(/App password "Thunderbird on laptop" created/);
    expect(activity).toMatch(/2-Step Verification turned on/);

    // Signing out, and in again: password, then a code from the app (the next one: codes work once).
    await page.getByRole('button', { name: 'Sign out' }).click();
    expect(await heading(page)).toBe('Sign in');
    await signIn(page, 'alice', 'alice-upstream-pw');
    expect(await heading(page)).toBe('2-Step Verification');
    const codeField = page.getByLabel('Code', { exact: true });
    expect(await codeField.getAttribute('autocomplete')).toBe('one-time-code');
    expect(await page.getByRole('link', { name: 'Use a recovery code' }).count()).toBe(1);
    await codeField.fill(clock.nextCode(secret));
    await page.getByRole('button', { name: 'Verify' }).click();
    expect(await heading(page)).toBe('Security');

    // An IDLE session of the app password is open when the user removes them all.
    const { c: idle, answer } = await imapsLogin(gw, 'alice', shown);
    expect(taggedLine(answer, 'L1')).toMatch(/^L1 OK /);
    expect(taggedLine(await idle.command('s', 'SELECT INBOX'), 's')).toMatch(/^s OK /);
    idle.send('i IDLE\r\n');
    expect(await idle.readLine()).toBe('+ idling\r\n');

    await page.getByRole('link', { name: 'Remove existing app passwords' }).click();
    expect(await heading(page)).toBe('Remove existing app passwords');
    expect(await page.locator('main').innerText()).toMatch(/Thunderbird on laptop/);
    expect(await page.locator('main').innerText()).toMatch(/must be given a new app password/);
    const since = Date.now();
    await page.getByRole('button', { name: 'Remove' }).click();
    const rest = await idle.waitClosed(6_000);
    expect(Date.now() - since).toBeLessThan(5_000);
    expect(rest).toMatch(/^\* BYE /);
    expect(await heading(page)).toBe('Security');
    expect(await page.getByRole('status').innerText()).toMatch(/1 app password is removed/);
    expect(await page.getByText('You have no app passwords.').count()).toBe(1);

    const after = await imaplibLogin('alice', shown);
    expect(after.ok).toBe(false);
    await context.close();
    assertNoInternalErrors(gw);
  });

  it('creating and removing app passwords works with JavaScript off', async () => {
    const { context, page } = await openPage(browser, gw.url, { javaScriptEnabled: false });
    await signIn(page, 'bob', 'bob-upstream-pw');
    expect(await heading(page)).toBe('Security');
    await page.getByRole('link', { name: 'Create a new app password' }).click();
    await page.getByLabel('Name').fill('Phone');
    await page.getByLabel('POP3').uncheck();
    await page.getByRole('button', { name: 'Create' }).click();
    expect(await heading(page)).toBe('Use this app password to sign in');
    const shown = await page.locator('#app-password').innerText();
    // Without the script, no Copy button is offered (it could not work).
    expect(await page.getByRole('button', { name: 'Copy' }).isVisible()).toBe(false);
    const settings = await page.locator('table.settings').innerText();
    expect(settings).not.toContain('POP3');
    expect(await imaplibLogin('bob', shown)).toEqual({ ok: true, exists: 0 });
    await page.getByRole('link', { name: 'Done' }).click();
    expect(await page.getByRole('row', { name: /Phone/ }).innerText()).toMatch(/\bIMAP\b/);

    await page.getByRole('link', { name: 'Remove existing app passwords' }).click();
    await page.getByRole('button', { name: 'Remove' }).click();
    expect(await page.getByText('You have no app passwords.').count()).toBe(1);
    expect((await imaplibLogin('bob', shown)).ok).toBe(false);
    await context.close();
    assertNoInternalErrors(gw);
  });
});
