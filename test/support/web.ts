/**
 * The self-service page under test: a gateway with the page on a free
 * loopback port, a real headless Chromium (Debian's `chromium`, driven by
 * playwright-core: no browser download), and a plain HTTPS client for the
 * requests a browser would never send (cross-site POSTs, replayed cookies).
 */
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { generateSync } from 'otplib';
import type { DovecotHandle } from './dovecot.js';
import { startGateway, type GatewayHandle, type GatewayTestOptions } from './gateway.js';

/** Debian's chromium package; MAILGATE_CHROMIUM names another build. */
export const CHROMIUM = process.env.MAILGATE_CHROMIUM ?? '/usr/bin/chromium';

export interface PageGateway extends GatewayHandle {
  /** https://127.0.0.1:port/ (http:// with `web.tls = false`) */
  url: string;
}

/** Where a request goes: an in-process gateway's page, or a `mailgate serve` node's (its URL and the test CA). */
export type PageTarget = Pick<PageGateway, 'url' | 'caCert'>;

/** A gateway with the page on (a free loopback port), everything else as startGateway makes it. */
export async function startPageGateway(dc: DovecotHandle, options: GatewayTestOptions = {}): Promise<PageGateway> {
  const extra = options.config ?? {};
  const gw = await startGateway(dc, {
    ...options,
    config: { ...extra, web: { listen: '127.0.0.1:0', ...((extra.web as Record<string, unknown> | undefined) ?? {}) } },
  });
  const web = gw.gateway.web;
  if (!web) throw new Error('the page did not start');
  return Object.assign(gw, { url: `${gw.config.web.tls ? 'https' : 'http'}://127.0.0.1:${web.address.port}/` });
}

/**
 * A headless Chromium (playwright gives each launch a throwaway profile)
 * with nothing that phones home. The sandbox is off: CI runs as root, where
 * Chromium refuses to start with it.
 */
export function launchChromium(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-dev-shm-usage',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    timeout: 30_000,
  });
}

/**
 * A fresh browser profile (no cookies) on the page. The test CA is not in
 * Chromium's store, hence ignoreHTTPSErrors: the origin is still https, so
 * Secure and __Host- cookies behave as they do for users.
 */
export async function openPage(browser: Browser, url: string, options: { javaScriptEnabled?: boolean } = {}): Promise<{ context: BrowserContext; page: Page }> {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, javaScriptEnabled: options.javaScriptEnabled ?? true, viewport: { width: 1000, height: 800 } });
  const page = await context.newPage();
  page.setDefaultTimeout(15_000);
  await page.goto(url);
  return { context, page };
}

/** Types the username and password into the sign-in form and sends it. */
export async function signIn(page: Page, username: string, password: string): Promise<void> {
  await page.getByLabel('Username').fill(username);
  await page.getByLabel('Password', { exact: true }).fill(password);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForLoadState();
}

/**
 * The gateway's clock in a page test: real time plus an offset, so a test
 * that needs a second TOTP code (each is accepted once per 30 s step) moves
 * to the next step instead of waiting for it.
 */
export class SteppingClock {
  private offset = 0;
  readonly now = (): number => Date.now() + this.offset;

  /** The code an authenticator app shows now (by this clock). */
  code(secret: string): string {
    return generateSync({ secret, epoch: Math.floor(this.now() / 1000) });
  }

  /** Moves the clock on (session timeouts, re-authentication). */
  advance(ms: number): void {
    this.offset += ms;
  }

  /** Moves on one TOTP step and returns that step's code. */
  nextCode(secret: string): string {
    this.offset += 30_000;
    return this.code(secret);
  }
}

/** The key shown on the set-up page, without its spaces. */
export async function secretOnPage(page: Page): Promise<string> {
  return (await page.locator('#secret').innerText()).replace(/\s+/g, '');
}

export interface HttpAnswer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
  /** The Set-Cookie headers, as sent. */
  cookies: string[];
}

export interface RequestOptions {
  headers?: Record<string, string>;
  body?: string;
  /** The local address to connect from (127.0.0.x: another client as the penalties count). */
  from?: string;
}

/** One request to the page (HTTPS trusting the test CA, or HTTP); nothing is followed or remembered. */
export function request(gw: PageTarget, method: string, pathName: string, options: RequestOptions = {}): Promise<HttpAnswer> {
  const url = new URL(pathName, gw.url);
  return new Promise((resolve, reject) => {
    const tls = url.protocol === 'https:';
    const req = (tls ? https : http).request(
      url,
      {
        method,
        ...(tls ? { ca: readFileSync(gw.caCert), servername: 'localhost' } : {}),
        ...(options.from ? { localAddress: options.from } : {}),
        agent: false,
        headers: { ...(options.body !== undefined ? { 'content-type': 'application/x-www-form-urlencoded', 'content-length': String(Buffer.byteLength(options.body)) } : {}), ...options.headers },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8'), cookies: res.headers['set-cookie'] ?? [] }),
        );
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.setTimeout(15_000, () => req.destroy(new Error(`${method} ${pathName}: no answer in 15 s`)));
    req.end(options.body);
  });
}

/**
 * A scripted visitor of the page without a browser: keeps the session
 * cookie and the CSRF token of the last page, and says what a browser says
 * about its own form posts (Sec-Fetch-Site: same-origin). For attacks a
 * browser would never make, and for the many attempts of penalty tests.
 */
export class PageClient {
  cookie: string | null = null;
  csrf: string | null = null;

  constructor(
    private readonly gw: PageTarget,
    private readonly from?: string,
  ) {}

  async get(pathName: string, headers: Record<string, string> = {}): Promise<HttpAnswer> {
    return this.remember(await request(this.gw, 'GET', pathName, { headers: { ...this.cookieHeader(), ...headers }, ...(this.from ? { from: this.from } : {}) }));
  }

  /** Posts `fields` (plus the last page's CSRF token unless `csrf` says otherwise). */
  async post(pathName: string, fields: Record<string, string>, options: { headers?: Record<string, string>; csrf?: string | null } = {}): Promise<HttpAnswer> {
    const token = options.csrf === undefined ? this.csrf : options.csrf;
    const body = new URLSearchParams({ ...fields, ...(token !== null ? { _csrf: token } : {}) }).toString();
    const answer = await request(this.gw, 'POST', pathName, {
      body,
      headers: { 'sec-fetch-site': 'same-origin', ...this.cookieHeader(), ...options.headers },
      ...(this.from ? { from: this.from } : {}),
    });
    return this.remember(answer);
  }

  /** Signs in with the password (and `code`, when the account asks for one); the page reached. */
  async signIn(username: string, password: string, code?: string): Promise<HttpAnswer> {
    await this.get('/');
    let answer = await this.followed(await this.post('/sign-in', { username, password }));
    if (code !== undefined && /action="\/verify"/.test(answer.body)) answer = await this.followed(await this.post('/verify', { code }));
    return answer;
  }

  /** After a 303, the page it points to. */
  async followed(answer: HttpAnswer): Promise<HttpAnswer> {
    const location = answer.headers.location;
    return answer.status === 303 && typeof location === 'string' ? this.get(location) : answer;
  }

  private cookieHeader(): Record<string, string> {
    return this.cookie ? { cookie: this.cookie } : {};
  }

  private remember(answer: HttpAnswer): HttpAnswer {
    const set = answer.cookies.find((c) => /^(__Host-)?mailgate=/.test(c));
    if (set) this.cookie = set.split(';')[0]!;
    const token = /name="_csrf" value="([^"]+)"/.exec(answer.body)?.[1];
    if (token) this.csrf = token;
    return answer;
  }
}

const ENTITIES: Record<string, string> = { '&amp;': '&', '&lt;': '<', '&gt;': '>', '&quot;': '"', '&#39;': "'" };

/** Text as it was before the template escaped it. */
export function unescapeHtml(text: string): string {
  return text.replace(/&(amp|lt|gt|quot|#39);/g, (entity) => ENTITIES[entity]!);
}

/** The h1 of an HTML answer. */
export function h1(answer: HttpAnswer): string {
  return unescapeHtml(/<h1>([^<]*)<\/h1>/.exec(answer.body)?.[1] ?? '');
}

/** The error line of an HTML answer (role="alert"). */
export function pageError(answer: HttpAnswer): string {
  return unescapeHtml(/<p class="error" role="alert" id="form-error">([^<]*)<\/p>/.exec(answer.body)?.[1] ?? '');
}

/** The session cookie (name=value) of a browser context, for replaying it with request(). */
export async function sessionCookie(context: BrowserContext): Promise<string> {
  const cookie = (await context.cookies()).find((c) => c.name.startsWith('__Host-mailgate') || c.name === 'mailgate');
  if (!cookie) throw new Error('no session cookie in the browser');
  return `${cookie.name}=${cookie.value}`;
}

/** The CSRF token in the page's forms. */
export async function csrfToken(page: Page): Promise<string> {
  const token = await page.locator('input[name="_csrf"]').first().getAttribute('value');
  if (!token) throw new Error('no CSRF token on the page');
  return token;
}
