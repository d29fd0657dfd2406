// A web page on another origin uses the relay from a real browser (tests/cors.rs): Debian's
// headless Chromium, driven by playwright-core, loads a page from a tiny static server on one
// port (an origin the relay allows) and another (an origin it does not), and runs the page's
// own fetch() calls there, so every CORS rule is the browser's, preflights included.
//
//   node cors.mjs '<json>'      prints one JSON line and exits 0, or 1 with {"error": ...}
//
// Input:
//   relay          the relay's base URL (one listener: /api/... and /callback)
//   allowed_port   the port of the page whose origin the relay allows (http://127.0.0.1:PORT)
//   other_port     the port of a page whose origin it does not allow
//   state          the OAuth state the page registers
//   signin_url     where the person's tab goes once the page waits for the code (the
//                  provider's redirect to the relay's /callback, or an authorization URL)
//   chromium       the browser binary (default: `chromium` on PATH)
// Output:
//   registered     {status, body} of the allowed page's POST /api/states (JSON, retrieval_hash)
//   retrieved      {status, body} of its long-poll GET /api/callback/{state} with
//                  X-Retrieval-Secret (the page cannot see the CORS headers themselves: the
//                  browser keeps them to itself, and reading the body at all is the proof)
//   signin_status  the HTTP status of the person's tab
//   other          what the page of the other origin got: {register, retrieve}, each
//                  {blocked: true, error} when the browser refused, or {blocked: false, status}

import { accessSync, constants } from 'node:fs';
import http from 'node:http';
import { delimiter, join } from 'node:path';

import { chromium } from 'playwright-core';

const input = JSON.parse(process.argv[2]);
const result = {};
let browser;
const servers = [];

// The page itself is empty: what it does, it does in page.evaluate below, in its own origin.
function serve(port) {
  return new Promise((resolve, reject) => {
    const server = http.createServer((req, res) => {
      const body = '<!doctype html><meta charset="utf-8"><title>client</title><p>client</p>';
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    });
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve(server));
    servers.push(server);
  });
}

try {
  await serve(input.allowed_port);
  await serve(input.other_port);
  browser = await chromium.launch({
    executablePath: input.chromium ?? onPath('chromium'),
    headless: true,
    chromiumSandbox: false,
    args: [
      '--disable-gpu',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1',
    ],
  });
  const context = await browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(60_000); // bounds a hang; not a timing assertion
  await page.goto(`http://127.0.0.1:${input.allowed_port}/`);

  // Register the state with the hash of a secret made here (WebCrypto: 127.0.0.1 is a secure
  // context). The JSON body makes this a request that needs a preflight.
  const registered = await page.evaluate(async ({ relay, state }) => {
    const b64url = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes)))
      .replaceAll('+', '-').replaceAll('/', '_').replaceAll('=', '');
    const secret = b64url(crypto.getRandomValues(new Uint8Array(32)));
    const hash = b64url(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(secret)));
    window.retrievalSecret = secret;
    const r = await fetch(`${relay}/api/states`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ state, ttl_secs: 300, retrieval_hash: hash }),
    });
    return { status: r.status, body: await r.json() };
  }, input);
  result.registered = registered;

  // Wait for the code with the secret in a custom header (another preflight)...
  const retrieval = page.evaluate(async ({ relay, state }) => {
    const r = await fetch(`${relay}/api/callback/${encodeURIComponent(state)}?wait=60`, {
      headers: { 'X-Retrieval-Secret': window.retrievalSecret },
    });
    return { status: r.status, body: await r.json() };
  }, input);
  // ...while the person signs in in another tab, which ends at the relay's /callback.
  const person = await context.newPage();
  const signin = await person.goto(input.signin_url);
  result.signin_status = signin ? signin.status() : null;
  result.retrieved = await retrieval;

  // A page of an origin the relay does not list: the browser must refuse both requests.
  const other = await context.newPage();
  await other.goto(`http://127.0.0.1:${input.other_port}/`);
  result.other = await other.evaluate(async ({ relay, state }) => {
    const attempt = async (url, init) => {
      try {
        const r = await fetch(url, init);
        return { blocked: false, status: r.status };
      } catch (error) {
        return { blocked: true, error: String(error) };
      }
    };
    return {
      register: await attempt(`${relay}/api/states`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ state: `${state}-other`, retrieval_hash: 'A'.repeat(43) }),
      }),
      retrieve: await attempt(`${relay}/api/callback/${encodeURIComponent(state)}`, {
        headers: { 'X-Retrieval-Secret': 'not-the-secret' },
      }),
    };
  }, input);

  process.stdout.write(`${JSON.stringify(result)}\n`);
  await browser.close();
} catch (error) {
  process.stdout.write(`${JSON.stringify({ ...result, error: String(error?.stack ?? error) })}\n`);
  await browser?.close().catch(() => {});
  process.exitCode = 1;
} finally {
  for (const server of servers) server.close();
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
