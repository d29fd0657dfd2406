// A real OpenID Provider for the tests: node-oidc-provider (panva) on plain HTTP on loopback,
// with its built-in development login and consent pages, a fixed set of accounts with passwords,
// one confidential client, PKCE (S256) required, RS256 signing keys that can be rotated at run
// time, and a loopback admin port. Started by tests/support/oidc.rs; not for production.
//
//   node server.mjs [config.json]      (or the JSON itself in $OIDC_PROVIDER_CONFIG)
//
// Config (every field optional):
//   port, admin_port        0 (the default) picks a free port
//   client                  { client_id, client_secret, redirect_uris, token_endpoint_auth_method }
//   accounts                [{ id, email, email_verified, password }]; `id` is the `sub`, and the
//                           login form takes the id or the email
//   id_token_claims         true (default): scope claims (email) go into the id_token, as Google
//                           and Entra ID do; false: only in userinfo (oidc-provider's default)
//   strict_offline_access   false (default): offline_access without a prompt parameter is asked
//                           for on the consent page and yields a refresh token, as with Entra ID;
//                           true: OpenID Connect Core's rule (oidc-provider's default, Google's
//                           too) that drops offline_access unless prompt includes consent
//   ttl                     seconds by artifact, over the defaults below (e.g. {"AccessToken": 5})
//   resource_servers        RFC 8707 resource indicators the provider issues access tokens for, as
//                           {"<resource URL>": {"scope": "space-separated scopes"}}: a request
//                           naming one gets a JWT access token (RFC 9068, RS256, `aud` the URL)
//                           carrying those of its scopes that were granted; any other `resource`
//                           is refused (invalid_target), as before
//   rotate_refresh_tokens   false (default): oidc-provider's own rule (for this confidential
//                           client, rotation only once 70% of a refresh token's life is gone);
//                           true: `rotateRefreshToken: true`, a new refresh token on every use,
//                           and a used one presented again revokes the whole grant (below)
//
// When both ports listen it prints one line to stdout:
//   {"event":"listening","issuer":"http://127.0.0.1:PORT","admin":"http://127.0.0.1:PORT2"}
// and exits when its stdin closes (the test that started it is gone).
//
// Admin port (plain JSON, no authentication: loopback test harness only):
//   POST /rotate          a new RS256 key signs from now on; the old ones stay in the JWKS
//   POST /drop-old-keys   the JWKS keeps only the signing key
//   GET  /stats           request counts by endpoint, logins, failed logins, keys, refresh
//                         grants served and refused, grants revoked, and how many times each
//                         refresh token was presented (refresh_presentations, keyed by the first
//                         16 hex digits of its SHA-256)
//   POST /reset-stats     zeroes the counts and lists
//
// Reuse detection under rotation is oidc-provider's own (9.x, lib/actions/grants/refresh_token.js):
// a rotated token is kept, marked consumed; presenting it again destroys it and calls
// lib/helpers/revoke.js on its grant, which deletes every access token, refresh token and
// authorization code of the grant and, as revokeGrantPolicy allows it outside the revocation
// endpoint, the grant itself (event grant.revoked); the answer is invalid_grant ("refresh token
// already used" in the log). The token that replaced it then answers invalid_grant too ("refresh
// token not found"): the legitimate client must sign in again (RFC 9700 4.14.2).
//
// The keys of a Provider are fixed when it is constructed, so a rotation builds a new Provider
// with the new key set and swaps it in; all instances share one in-memory store (sessions,
// grants, codes, refresh tokens) and one cookie key, so nothing else changes for clients.

import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import * as querystring from 'node:querystring';

import Provider, { errors } from 'oidc-provider';
// The package's own in-memory adapter, created once so every Provider instance shares it.
import { createMemoryAdapter } from 'oidc-provider/lib/adapters/memory_adapter.js';

const config = JSON.parse(
  process.argv[2] ? readFileSync(process.argv[2], 'utf8') : (process.env.OIDC_PROVIDER_CONFIG ?? '{}'),
);
const client = {
  client_id: 'test-client',
  client_secret: 'test-client-secret',
  redirect_uris: ['http://127.0.0.1/callback'],
  token_endpoint_auth_method: 'client_secret_basic', // client_secret_post is accepted too
  ...config.client,
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
};
const accounts = config.accounts ?? [
  { id: 'ana', email: 'ana.silva@example.com', email_verified: true, password: 'ana-password' },
];

const adapter = createMemoryAdapter();
const cookieKeys = [randomBytes(32).toString('base64url')];
let keyCount = 0;
let keys = [newKey()]; // keys[0] signs; the others are published for verification only

const stats = newStats();
function newStats() {
  return {
    requests: {}, // endpoint name -> count
    logins: [], // account ids that signed in, in order
    failed_logins: [], // what was typed in the login field when the password was wrong
    refresh_grants: 0, // grant_type=refresh_token answered with tokens
    refresh_grant_errors: 0, // grant_type=refresh_token refused (any error)
    grants_revoked: 0, // grants revoked: a reused refresh token, a code used twice
    refresh_presentations: {}, // sha256(refresh token), 16 hex digits -> times presented
  };
}

function newKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  keyCount += 1;
  return { ...privateKey.export({ format: 'jwk' }), kid: `rsa-${keyCount}`, alg: 'RS256', use: 'sig' };
}

async function findAccount(ctx, id) {
  const account = accounts.find((a) => a.id === id);
  if (!account) return undefined;
  return {
    accountId: account.id,
    async claims() {
      return { sub: account.id, email: account.email, email_verified: account.email_verified };
    },
  };
}

function buildProvider() {
  const provider = new Provider(issuer, {
    adapter,
    clients: [client],
    jwks: { keys },
    cookies: { keys: cookieKeys },
    findAccount,
    scopes: ['openid', 'email', 'offline_access'],
    claims: { openid: ['sub'], email: ['email', 'email_verified'] },
    conformIdTokenClaims: config.id_token_claims === false,
    pkce: { required: () => true }, // and S256 is the only method oidc-provider supports
    ttl: {
      AuthorizationCode: 60,
      AccessToken: 3600,
      IdToken: 3600,
      RefreshToken: 14 * 24 * 3600,
      Interaction: 3600,
      Session: 14 * 24 * 3600,
      Grant: 14 * 24 * 3600,
      ...config.ttl,
    },
    // A refresh token whenever offline_access was granted (see offlineAccess).
    issueRefreshToken: async (ctx, c, code) => c.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access'),
    ...(config.rotate_refresh_tokens ? { rotateRefreshToken: true } : {}),
    features: {
      devInteractions: { enabled: true },
      resourceIndicators: {
        enabled: true,
        // An access token for the resource the client named, within the scopes it was granted.
        useGrantedResource: async () => true,
        getResourceServerInfo: async (ctx, resource) => {
          const server = config.resource_servers?.[resource];
          if (!server) throw new errors.InvalidTarget();
          return {
            scope: server.scope, audience: resource, accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
  });
  if (!config.strict_offline_access) provider.use(offlineAccess);
  provider.use(checkPassword);
  provider.use(offlinePages);
  for (const event of ['server_error', 'authorization.error', 'grant.error', 'userinfo.error']) {
    provider.on(event, (ctx, err) => log({ event, error: err?.message, detail: err?.error_detail ?? err?.error_description }));
  }
  provider.on('grant.success', (ctx) => countRefresh(ctx, 'refresh_grants'));
  provider.on('grant.error', (ctx) => countRefresh(ctx, 'refresh_grant_errors'));
  provider.on('grant.revoked', () => { stats.grants_revoked += 1; });
  return provider;
}

// oidc-provider drops offline_access from a request without prompt=consent (OpenID Connect Core
// 11). Entra ID does not, so by default a request for offline_access without any prompt is
// treated as prompt=consent: the consent page (shown anyway in a fresh session) asks for it.
async function offlineAccess(ctx, next) {
  if (ctx.method === 'GET' && ctx.path === '/auth' && ctx.query.prompt === undefined
    && String(ctx.query.scope ?? '').split(' ').includes('offline_access')) {
    ctx.query = { ...ctx.query, prompt: 'consent' };
  }
  return next();
}

// devInteractions accept any login and password; this checks them against the accounts first.
// A wrong one goes back to the login page with a message; a right one goes on with the login
// field set to the account id (the devInteractions take it as the account id).
async function checkPassword(ctx, next) {
  const uid = ctx.method === 'POST' && ctx.path.match(/^\/interaction\/([^/]+)$/)?.[1];
  if (!uid || !ctx.is('application/x-www-form-urlencoded')) return next();
  const chunks = [];
  for await (const chunk of ctx.req) chunks.push(chunk);
  const body = querystring.parse(Buffer.concat(chunks).toString('utf8'));
  // The stream is consumed: oidc-provider reads an already parsed body from here.
  ctx.req.body = body;
  if (body.prompt === 'login') {
    const account = accounts.find((a) => a.id === body.login || a.email === body.login);
    if (!account || account.password !== body.password) {
      stats.failed_logins.push(String(body.login));
      ctx.status = 303;
      ctx.redirect(`/interaction/${uid}?login_error=1`);
      return undefined;
    }
    body.login = account.id;
    stats.logins.push(account.id);
  }
  return next();
}

// The built-in pages load a web font from the internet; the tests have none (and must not try).
// Also shows the wrong-password message.
async function offlinePages(ctx, next) {
  await next();
  if (typeof ctx.body !== 'string' || !ctx.response.is('html')) return;
  ctx.body = ctx.body.replace(/@import url\([^)]*\);/g, '');
  if (ctx.query.login_error) {
    ctx.body = ctx.body.replace('<form', '<p class="login-error">Invalid login or password.</p><form');
  }
}

// A refresh-token request, by its outcome, and the token it presented.
function countRefresh(ctx, outcome) {
  const params = ctx.oidc?.params ?? {};
  if (params.grant_type !== 'refresh_token') return;
  stats[outcome] += 1;
  if (params.refresh_token) {
    const key = createHash('sha256').update(String(params.refresh_token)).digest('hex').slice(0, 16);
    stats.refresh_presentations[key] = (stats.refresh_presentations[key] ?? 0) + 1;
  }
}

function count(url) {
  const path = new URL(url, 'http://x').pathname;
  const name = {
    '/.well-known/openid-configuration': 'discovery',
    '/jwks': 'jwks',
    '/auth': 'authorization',
    '/token': 'token',
    '/me': 'userinfo',
  }[path] ?? (path.startsWith('/interaction/') ? 'interaction' : 'other');
  stats.requests[name] = (stats.requests[name] ?? 0) + 1;
}

function log(object) {
  process.stderr.write(`${JSON.stringify(object)}\n`);
}

let issuer;
let handler;
function swap() {
  handler = buildProvider().callback();
}

const server = http.createServer((req, res) => {
  count(req.url);
  handler(req, res);
});

const admin = http.createServer((req, res) => {
  const route = `${req.method} ${new URL(req.url, 'http://x').pathname}`;
  let status = 200;
  if (route === 'POST /rotate') {
    keys = [newKey(), ...keys];
    swap();
  } else if (route === 'POST /drop-old-keys') {
    keys = [keys[0]];
    swap();
  } else if (route === 'POST /reset-stats') {
    Object.assign(stats, newStats());
  } else if (route !== 'GET /stats') {
    status = 404;
  }
  const body = JSON.stringify({ ...stats, signing_kid: keys[0].kid, kids: keys.map((k) => k.kid) });
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
});

server.listen(config.port ?? 0, '127.0.0.1', () => {
  issuer = `http://127.0.0.1:${server.address().port}`;
  swap();
  admin.listen(config.admin_port ?? 0, '127.0.0.1', () => {
    const line = { event: 'listening', issuer, admin: `http://127.0.0.1:${admin.address().port}` };
    process.stdout.write(`${JSON.stringify(line)}\n`);
  });
});

// The test that started us is gone (even if it was killed): stop.
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
