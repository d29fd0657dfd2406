// A person with a browser: Debian's headless Chromium, driven over the DevTools protocol by
// playwright-core, opens a link and goes through the OpenID Provider's login and consent pages
// (server.mjs, node-oidc-provider's development interactions) until it leaves them, as the
// redirect back to the client does. Used by tests/support/oidc.rs.
//
//   node browse.mjs '<json>'      prints one JSON line and exits 0, or 1 with {"error": ...}
//
// Input:
//   url           where to start (the broker's login link, or an authorization URL)
//   issuer        the provider's issuer URL: its /interaction/ pages are the ones acted on
//   login         typed into the login field (an account id or email); password: its password
//   on_login      "submit" (default), "cancel" (the page's [ Cancel ] link), "stop"
//   on_consent    "accept" (default: the Continue button), "refuse" ([ Cancel ]), "stop"
//   locale        the browser's language (Accept-Language), e.g. "pt-BR"
//   follow_link   once out of the provider, click the link whose text is exactly this (a person
//                 following "Back to ..." on the broker's page); the result is where it led
//   chromium      the browser binary (default: `chromium` on PATH)
// Output:
//   url, status   where the browser ended and the HTTP status of that page (null if none)
//   title, text, html   that page's title, visible text and DOM
//   pages         the provider pages seen, in order: {page: "login"|"consent"|"unknown", url,
//                 login_error: true when it says the login or password was wrong}
//   navigations   every top-level request URL, redirects included, in order
//   outcome       "left_provider" (it followed the redirect out), "login_failed" (the login page
//                 came back after a wrong password), "stopped" (on_login/on_consent "stop"),
//                 "unknown_page" (a provider page with neither form), "followed_link"
//   link_page     with follow_link: {url, status, text, html} of the page the link was on
//
// Only loopback is reachable: other host names do not resolve and other requests are aborted.

import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';

import { chromium } from 'playwright-core';

const input = JSON.parse(process.argv[2]);
const issuer = new URL(input.issuer).origin;
const result = { pages: [], navigations: [] };
let browser;

try {
  browser = await chromium.launch({
    executablePath: input.chromium ?? onPath('chromium'),
    headless: true,
    chromiumSandbox: false, // --no-sandbox; playwright gives it a fresh temporary --user-data-dir
    args: [
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1',
    ],
  });
  const context = await browser.newContext(input.locale ? { locale: input.locale } : {});
  await context.route(
    (url) => !['127.0.0.1', 'localhost', '[::1]'].includes(url.hostname),
    (route) => route.abort('blockedbyclient'),
  );
  const page = await context.newPage();
  page.setDefaultTimeout(60_000); // bounds a hang; not a timing assertion
  page.on('request', (request) => {
    if (request.isNavigationRequest() && request.frame() === page.mainFrame()) {
      result.navigations.push(request.url());
    }
  });

  let response = await page.goto(input.url);
  for (;;) {
    const here = new URL(page.url());
    if (here.origin !== issuer || !here.pathname.startsWith('/interaction/')) {
      result.outcome = 'left_provider';
      break;
    }
    const kind = (await page.locator('input[name="login"]').count()) ? 'login'
      : (await page.locator('input[name="prompt"][value="consent"]').count()) ? 'consent' : 'unknown';
    const loginError = (await page.locator('.login-error').count()) > 0;
    result.pages.push({ page: kind, url: page.url(), login_error: loginError });
    if (kind === 'unknown') {
      result.outcome = 'unknown_page';
      break;
    }
    if (kind === 'login' && loginError) {
      result.outcome = 'login_failed';
      break;
    }
    const action = kind === 'login' ? (input.on_login ?? 'submit') : (input.on_consent ?? 'accept');
    if (action === 'stop') {
      result.outcome = 'stopped';
      break;
    }
    let click;
    if (action === 'cancel' || action === 'refuse') {
      click = 'a[href$="/abort"]';
    } else if (action === 'submit' && kind === 'login') {
      await page.fill('input[name="login"]', input.login ?? '');
      await page.fill('input[name="password"]', input.password ?? '');
      click = 'button[type="submit"]';
    } else if (action === 'accept' && kind === 'consent') {
      click = 'button[type="submit"]';
    } else {
      throw new Error(`no action ${JSON.stringify(action)} on the ${kind} page`);
    }
    [response] = await Promise.all([page.waitForNavigation(), page.click(click)]);
  }

  if (input.follow_link !== undefined && result.outcome === 'left_provider') {
    result.link_page = {
      url: page.url(),
      status: response ? response.status() : null,
      text: await page.evaluate(() => document.body?.innerText ?? ''),
      html: await page.content(),
    };
    const link = page.getByRole('link', { name: input.follow_link, exact: true });
    [response] = await Promise.all([page.waitForNavigation(), link.click()]);
    result.outcome = 'followed_link';
  }

  result.url = page.url();
  result.status = response ? response.status() : null;
  result.title = await page.title();
  result.text = await page.evaluate(() => document.body?.innerText ?? '');
  result.html = await page.content();
  process.stdout.write(`${JSON.stringify(result)}\n`);
  await browser.close();
} catch (error) {
  process.stdout.write(`${JSON.stringify({ ...result, error: String(error?.stack ?? error) })}\n`);
  await browser?.close().catch(() => {});
  process.exitCode = 1;
}

function onPath(name) {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    try {
      accessSync(join(dir, name), constants.X_OK);
      return join(dir, name);
    } catch {
      // not in this directory
    }
  }
  throw new Error(`${name} is not installed: run scripts/test.sh, which installs it`);
}
