/**
 * Every page of the self-service page, checked in a real Chromium with
 * axe-core (injected through the DevTools protocol, so the page's strict CSP
 * stays as users get it): no serious or critical violation, on a desktop
 * and on a phone-sized screen. Also: no page breaks its own CSP (no inline
 * script or style), and the create flow works with the keyboard alone.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { launchChromium, openPage, secretOnPage, signIn, startPageGateway, SteppingClock, type PageGateway } from '../support/web.js';

const AXE = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');

let dc: DovecotHandle;
let gw: PageGateway;
let browser: Browser;
const clock = new SteppingClock();

beforeAll(async () => {
  dc = await startDovecot({ users: ['alice', 'bob', 'carol'].map((name) => ({ name, password: `${name}-upstream-pw` })) });
  gw = await startPageGateway(dc, { now: clock.now });
  browser = await launchChromium();
});

afterAll(async () => {
  await browser?.close();
  await gw?.stop();
  await dc?.stop();
});

interface Violation {
  id: string;
  impact: string | null;
  help: string;
  nodes: string[];
}

/** axe-core's serious and critical violations on the page as it is now. */
async function seriousViolations(page: Page): Promise<Violation[]> {
  if (!(await page.evaluate('typeof axe !== "undefined"'))) await page.evaluate(AXE);
  const violations = (await page.evaluate(
    `axe.run(document, { resultTypes: ['violations'] }).then((r) => r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map((n) => n.target.join(' ')) })))`,
  )) as Violation[];
  return violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
}

/**
 * Watches a page for what the browser complains about: CSP refusals, script
 * errors, and any of the page's resources (style, script, icon) that failed
 * (pages answered 4xx on purpose are not complaints).
 */
function complaints(page: Page): string[] {
  const seen: string[] = [];
  page.on('console', (message) => {
    if (message.type() === 'error' && !/^Failed to load resource/.test(message.text())) seen.push(message.text());
  });
  page.on('pageerror', (err) => seen.push(err.message));
  page.on('response', (response) => {
    if (response.status() >= 400 && response.request().resourceType() !== 'document') seen.push(`${response.status()} ${response.url()}`);
  });
  return seen;
}

describe('accessibility of every page', () => {
  for (const viewport of [
    { name: 'desktop', width: 1000, height: 800 },
    { name: 'phone', width: 375, height: 740 },
  ]) {
    it(`no serious or critical axe-core violation on any page (${viewport.name}); no CSP complaint`, async () => {
      const user = viewport.name === 'desktop' ? 'alice' : 'bob';
      const { context, page } = await openPage(browser, gw.url);
      await page.setViewportSize({ width: viewport.width, height: viewport.height });
      const seen = complaints(page);
      const checked: Record<string, Violation[]> = {};
      const check = async (name: string) => {
        expect(await page.getByRole('heading', { level: 1 }).count(), name).toBe(1);
        checked[name] = await seriousViolations(page);
      };

      await page.reload();
      await check('sign-in');
      await page.getByLabel('Username').fill(user);
      await page.getByLabel('Password', { exact: true }).fill('wrong');
      await page.getByRole('button', { name: 'Sign in' }).click();
      await check('sign-in with an error');
      await signIn(page, user, `${user}-upstream-pw`);
      await check('security, 2-step verification off, no app passwords');

      await page.getByRole('button', { name: 'Turn on 2-Step Verification' }).click();
      await check('two-step set-up');
      const secret = await secretOnPage(page);
      await page.getByLabel('Code', { exact: true }).fill('000000');
      await page.getByRole('button', { name: 'Turn on' }).click();
      await check('two-step set-up with an error');
      await page.getByLabel('Code', { exact: true }).fill(clock.nextCode(secret));
      await page.getByRole('button', { name: 'Turn on' }).click();
      await check('recovery codes');
      await page.getByRole('link', { name: 'Done' }).click();

      await page.getByRole('link', { name: 'Create a new app password' }).click();
      await check('create');
      await page.getByLabel('Name').fill('Phone');
      await page.getByLabel('IMAP').uncheck();
      await page.getByLabel('POP3').uncheck();
      await page.getByRole('button', { name: 'Create' }).click();
      await check('create with an error');
      await page.getByLabel('IMAP').check();
      await page.getByRole('button', { name: 'Create' }).click();
      await check('created');
      await page.getByRole('link', { name: 'Done' }).click();
      await check('security, 2-step verification on, an app password, activity');

      await page.getByRole('link', { name: 'Revoke Phone' }).click();
      await check('revoke');
      await page.goto(`${gw.url}app-passwords/remove`);
      await check('remove all');
      await page.goto(`${gw.url}two-step/recovery-codes`);
      await check('new recovery codes');
      await page.goto(`${gw.url}two-step/turn-off`);
      await check('turn off');
      clock.advance(11 * 60_000);
      await page.goto(`${gw.url}app-passwords/new`);
      expect(await page.getByRole('heading', { level: 1 }).innerText()).toBe("Confirm it's you");
      await check('confirm it is you');
      await page.goto(`${gw.url}no-such-page`);
      await check('not found');

      await page.getByRole('link', { name: 'Back to the start' }).click();
      await page.getByRole('button', { name: 'Sign out' }).click();
      await signIn(page, user, `${user}-upstream-pw`);
      await check('code');
      await page.getByRole('link', { name: 'Use a recovery code' }).click();
      await check('recovery code');

      expect(Object.entries(checked).filter(([, v]) => v.length > 0)).toEqual([]);
      expect(Object.keys(checked)).toHaveLength(18);
      expect(seen).toEqual([]);
      await context.close();
    });
  }

  it('the create flow works with the keyboard alone, with a visible focus', async () => {
    const { context, page } = await openPage(browser, gw.url);
    await tabTo(page, 'username');
    await page.keyboard.type('carol');
    await page.keyboard.press('Tab');
    expect(await focused(page)).toBe('password');
    await page.keyboard.type('carol-upstream-pw');
    await pressAndLoad(page, 'Enter');
    expect(await page.getByRole('heading', { level: 1 }).innerText()).toBe('Security');

    await tabTo(page, 'Create a new app password');
    await pressAndLoad(page, 'Enter');
    expect(await page.getByRole('heading', { level: 1 }).innerText()).toBe('Create a new app password');
    await tabTo(page, 'name');
    await page.keyboard.type('Keyboard only');
    await page.keyboard.press('Tab');
    await page.keyboard.press('Tab');
    // Space unticks POP3, as on any checkbox.
    await page.keyboard.press('Space');
    await page.keyboard.press('Tab');
    expect(await focused(page)).toBe('expires');
    await page.keyboard.press('ArrowDown');
    await tabTo(page, 'Create');
    // The focused button shows it: the outline of :focus-visible.
    expect(await page.evaluate('getComputedStyle(document.activeElement).outlineStyle')).toBe('solid');
    expect(await page.evaluate('getComputedStyle(document.activeElement).outlineWidth')).toBe('3px');
    await pressAndLoad(page, 'Enter');
    expect(await page.getByRole('heading', { level: 1 }).innerText()).toBe('Use this app password to sign in');
    await tabTo(page, 'Done');
    await pressAndLoad(page, 'Enter');
    const row = await page.getByRole('row', { name: /Keyboard only/ }).innerText();
    expect(row).toMatch(/\bIMAP\b/);
    expect(row).not.toMatch(/POP3/);
    expect(row).not.toMatch(/Never\s+Never/);
    const info = gw.store.appPasswords.list('carol')[0]!;
    expect(info.scopes).toEqual(['imap']);
    expect(info.expiresAt).not.toBeNull();
    await context.close();
  });
});

/** Presses a key that leaves the page, and waits for the next one. */
async function pressAndLoad(page: Page, key: string): Promise<void> {
  const navigated = page.waitForEvent('framenavigated', (frame) => frame === page.mainFrame());
  await page.keyboard.press(key);
  await navigated;
  await page.waitForLoadState();
}

/** What has the focus: an input's id, else a control's text or label. */
function focused(page: Page): Promise<string> {
  return page.evaluate(`(() => {
    const el = document.activeElement;
    if (!el || el === document.body) return '';
    if (el.id && (el.tagName === 'INPUT' || el.tagName === 'SELECT')) return el.id;
    return (el.getAttribute('aria-label') || el.textContent || '').trim();
  })()`) as Promise<string>;
}

/** Presses Tab until `target` has the focus (at most 40 times). */
async function tabTo(page: Page, target: string): Promise<void> {
  const passed: string[] = [];
  for (let i = 0; i < 40; i++) {
    await page.keyboard.press('Tab');
    const now = await focused(page);
    if (now === target) return;
    passed.push(now);
  }
  throw new Error(`Tab never reached "${target}"; it went through ${JSON.stringify(passed)}`);
}
