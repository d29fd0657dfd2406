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
//   then          further runs in the same browser (its cookies kept), one after the other, each
//                 with url (or resume: the index of an earlier run, to go back to the provider
//                 page where that run stopped), login, password, on_login, on_consent
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
//   cookies       the browser's cookies at the end: {name, value, domain, path, secure,
//                 httpOnly, sameSite, expires}
//   then          with then: each further run's {url, status, title, text, pages, navigations,
//                 outcome, cookies} (cookies as that run left them)
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
  const recordInto = (run) => (request) => {
    if (request.isNavigationRequest() && request.frame() === page.mainFrame()) {
      run.navigations.push(request.url());
    }
  };
  const recordFirst = recordInto(result);
  page.on('request', recordFirst);

  let response = await drive(page, input, result, input.url);

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

  await describe(page, response, result);
  result.cookies = await context.cookies();
  page.off('request', recordFirst);
  const runs = [result];
  for (const step of input.then ?? []) {
    const run = { pages: [], navigations: [] };
    const url = step.resume === undefined ? step.url : runs[step.resume].stopped_at;
    if (!url) {
      throw new Error(`run ${step.resume} did not stop on a provider page to resume`);
    }
    const record = recordInto(run);
    page.on('request', record);
    const stepResponse = await drive(page, step, run, url);
    page.off('request', record);
    await describe(page, stepResponse, run);
    delete run.html;
    run.cookies = await context.cookies();
    runs.push(run);
  }
  if (input.then) {
    result.then = runs.slice(1);
  }
  process.stdout.write(`${JSON.stringify(result)}\n`);
  await browser.close();
} catch (error) {
  process.stdout.write(`${JSON.stringify({ ...result, error: String(error?.stack ?? error) })}\n`);
  await browser?.close().catch(() => {});
  process.exitCode = 1;
}

// Opens url and acts on the provider's pages as opts says, recording them in run; resolves to
// the last navigation's response. A run that stops on a provider page records its URL
// (stopped_at), so a later run can go back to it.
async function drive(page, opts, run, url) {
  let response = await page.goto(url);
  for (;;) {
    const here = new URL(page.url());
    if (here.origin !== issuer || !here.pathname.startsWith('/interaction/')) {
      run.outcome = 'left_provider';
      return response;
    }
    const kind = (await page.locator('input[name="login"]').count()) ? 'login'
      : (await page.locator('input[name="prompt"][value="consent"]').count()) ? 'consent' : 'unknown';
    const loginError = (await page.locator('.login-error').count()) > 0;
    run.pages.push({ page: kind, url: page.url(), login_error: loginError });
    if (kind === 'unknown') {
      run.outcome = 'unknown_page';
      return response;
    }
    if (kind === 'login' && loginError) {
      run.outcome = 'login_failed';
      return response;
    }
    const action = kind === 'login' ? (opts.on_login ?? 'submit') : (opts.on_consent ?? 'accept');
    if (action === 'stop') {
      run.outcome = 'stopped';
      run.stopped_at = page.url();
      return response;
    }
    let click;
    if (action === 'cancel' || action === 'refuse') {
      click = 'a[href$="/abort"]';
    } else if (action === 'submit' && kind === 'login') {
      await page.fill('input[name="login"]', opts.login ?? '');
      await page.fill('input[name="password"]', opts.password ?? '');
      click = 'button[type="submit"]';
    } else if (action === 'accept' && kind === 'consent') {
      click = 'button[type="submit"]';
    } else {
      throw new Error(`no action ${JSON.stringify(action)} on the ${kind} page`);
    }
    [response] = await Promise.all([page.waitForNavigation(), page.click(click)]);
  }
}

// Where the page is and what it shows.
async function describe(page, response, run) {
  run.url = page.url();
  run.status = response ? response.status() : null;
  run.title = await page.title();
  run.text = await page.evaluate(() => document.body?.innerText ?? '');
  run.html = await page.content();
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
