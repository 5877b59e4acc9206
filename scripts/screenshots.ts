/**
 * `npm run screenshots`: the self-service page's screenshots for
 * docs/self-service.md, taken in Debian's chromium from a real gateway in
 * front of a throwaway Dovecot (the test harness's, on loopback ports), so
 * the guide shows exactly what users see. Needs what the tests need
 * (scripts/install-test-deps.sh). Writes docs/screenshots/*.png.
 */
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Page } from 'playwright-core';
import { startDovecot } from '../test/support/dovecot.js';
import { imapsLogin } from '../test/support/attack.js';
import { launchChromium, openPage, secretOnPage, signIn, startPageGateway, SteppingClock } from '../test/support/web.js';

const OUT = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'docs', 'screenshots');

async function shot(page: Page, name: string, options: { fullPage?: boolean } = {}): Promise<void> {
  await page.screenshot({ path: path.join(OUT, `${name}.png`), fullPage: options.fullPage ?? true, animations: 'disabled', caret: 'hide' });
  console.log(`docs/screenshots/${name}.png`);
}

async function main(): Promise<void> {
  mkdirSync(OUT, { recursive: true });
  const clock = new SteppingClock();
  const dc = await startDovecot({ users: [{ name: 'alice', password: 'alice-upstream-pw' }] });
  const gw = await startPageGateway(dc, { now: clock.now, config: { policy: { help_url: '' } } });
  const browser = await launchChromium();
  try {
    const { context, page } = await openPage(browser, gw.url);
    await page.setViewportSize({ width: 900, height: 640 });
    await shot(page, '01-sign-in');
    await signIn(page, 'alice', 'alice-upstream-pw');
    await shot(page, '02-security');

    await page.getByRole('button', { name: 'Turn on 2-Step Verification' }).click();
    await shot(page, '03-turn-on-2-step-verification');
    const secret = await secretOnPage(page);
    await page.getByLabel('Code', { exact: true }).fill(clock.nextCode(secret));
    await page.getByRole('button', { name: 'Turn on' }).click();
    await shot(page, '04-recovery-codes');
    await page.getByRole('link', { name: 'Done' }).click();

    await page.getByRole('link', { name: 'Create a new app password' }).click();
    await page.getByLabel('Name').fill('Thunderbird on laptop');
    await shot(page, '05-create-app-password');
    await page.getByRole('button', { name: 'Create' }).click();
    await shot(page, '06-use-this-app-password');
    const laptop = await page.locator('#app-password').innerText();
    await page.getByRole('link', { name: 'Done' }).click();
    // Used once by a mail program, so the table shows "last used".
    const { c } = await imapsLogin(gw, 'alice', laptop);
    c.destroy();
    await page.getByRole('link', { name: 'Create a new app password' }).click();
    await page.getByLabel('Name').fill('Phone');
    await page.getByLabel('POP3').uncheck();
    await page.getByLabel('Expires').selectOption({ label: '1 year' });
    await page.getByRole('button', { name: 'Create' }).click();
    await page.getByRole('link', { name: 'Done' }).click();
    await shot(page, '07-security-with-app-passwords');

    await page.getByRole('link', { name: 'Revoke Phone' }).click();
    await shot(page, '08-revoke');
    await page.goto(`${gw.url}app-passwords/remove`);
    await shot(page, '09-remove-existing-app-passwords');
    await page.goto(`${gw.url}two-step/turn-off`);
    await shot(page, '10-turn-off');
    clock.advance(11 * 60_000);
    await page.goto(`${gw.url}app-passwords/new`);
    await shot(page, '11-confirm-its-you');
    await page.goto(gw.url);
    await page.getByRole('button', { name: 'Sign out' }).click();
    await signIn(page, 'alice', 'alice-upstream-pw');
    await shot(page, '12-code');

    await page.setViewportSize({ width: 390, height: 760 });
    await page.getByLabel('Code', { exact: true }).fill(clock.nextCode(secret));
    await page.getByRole('button', { name: 'Verify' }).click();
    await shot(page, '13-phone-security');
    await context.close();
  } finally {
    await browser.close();
    await gw.stop();
    await dc.stop();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
