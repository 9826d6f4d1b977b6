// A real OpenID Connect provider (npm `oidc-provider`, OpenID certified) for Workbench's tests.
//
//   node server.mjs CONFIG.json      (or: node server.mjs --port 0)
//
// CONFIG.json (every key optional but `port`):
//   port            loopback port to listen on (0 = any free port)
//   issuer          the `iss` it signs with (default http://127.0.0.1:<port>); may name another
//                   provider's URL, to play an attacker who copies a trusted issuer string
//   audience        the resource indicator whose access tokens are JWTs (our node's audience)
//   other_audiences more resource indicators it issues JWT access tokens for (wrong-audience tests)
//   jwks            {"keys": [private JWKs]}; default: one fresh RSA key. Restart with another set
//                   to rotate keys.
//   short_ttl_s     access-token lifetime of the "wb-short-svc" client (default 2)
//   ttl_s           access-token lifetime of every other client (default 300)
//   client_groups   {client_id: [groups]} for client-credentials tokens
//   account_groups  {account_id: [groups]} for device-flow (user) tokens
//   client_claims   {client_id: {claim: value}} more claims in client-credentials tokens (country, ...)
//   par             false: no pushed authorization requests (wb.login's interactive flow then uses the device flow)
//   fapi            true: the FAPI 2.0 Security Profile (features.fapi profile '2.0': PKCE required, ...)
//                   with DPoP (RFC 9449) on, and `wb-dpop-svc` / `wb-notebook` demanding DPoP-bound tokens
//
// Clients (test secrets, loopback only):
//   wb-analyst-svc / wb-auditor-svc / wb-owner-svc / wb-nogroup-svc / wb-short-svc  client_credentials
//   wb-hs256-svc   client_credentials, but its access tokens are HS256-signed with the provider's
//                  RSA *public* key (PEM) as the HMAC secret and the RSA key's kid: the classic
//                  algorithm-confusion forgery, produced by the real provider
//   wb-es256-svc   client_credentials, ES256-signed (needs an EC P-256 key in `jwks`)
//   wb-device      public client for the device authorization grant (RFC 8628)
//   wb-dpop-svc    client_credentials; its access tokens must be DPoP-bound (dpop_bound_access_tokens)
//   wb-notebook    public native client: authorization code + PKCE + PAR (required), loopback
//                  redirect http://127.0.0.1:<any port>/callback, DPoP-bound tokens
// The device flow's login/consent pages are oidc-provider's built-in development interactions
// (any login name, any password). Everything is in memory: for tests only.
//
// Prints one line `listening <url>` on stdout when ready.

import { createPublicKey, generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';

import Provider from 'oidc-provider';

function loadConfig(argv) {
  if (argv[2] && argv[2] !== '--port') return JSON.parse(readFileSync(argv[2], 'utf8'));
  return { port: Number(argv[3] ?? process.env.OIDC_PORT ?? 0) };
}

const cfg = loadConfig(process.argv);
const secrets = {
  'wb-analyst-svc': 'analyst-secret',
  'wb-auditor-svc': 'auditor-secret',
  'wb-owner-svc': 'owner-secret',
  'wb-nogroup-svc': 'nogroup-secret',
  'wb-short-svc': 'short-secret',
  'wb-hs256-svc': 'hs256-secret',
  'wb-es256-svc': 'es256-secret',
  'wb-dpop-svc': 'dpop-secret',
};
const clientGroups = cfg.client_groups ?? {
  'wb-analyst-svc': ['wb-analysts', 'study-diabetes'],
  'wb-auditor-svc': ['wb-auditors'],
  'wb-owner-svc': ['wb-owners'],
  'wb-nogroup-svc': [],
  'wb-short-svc': ['wb-analysts'],
  'wb-hs256-svc': ['wb-owners'],
  'wb-es256-svc': ['wb-analysts'],
  'wb-dpop-svc': ['wb-analysts', 'study-diabetes'],
};
const accountGroups = cfg.account_groups ?? { alice: ['wb-analysts'] };
const audience = cfg.audience ?? 'urn:workbench:test';
const audiences = new Set([audience, ...(cfg.other_audiences ?? ['urn:other-api'])]);
const shortTtl = cfg.short_ttl_s ?? 2;
const ttl = cfg.ttl_s ?? 300;

function freshRsaJwk() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: `gen-${randomBytes(6).toString('hex')}`, use: 'sig', alg: 'RS256' };
}
const jwks = cfg.jwks ?? { keys: [freshRsaJwk()] };
const rsaKey = jwks.keys.find((k) => k.kty === 'RSA');
const { d, p, q, dp, dq, qi, ...rsaPublicJwk } = rsaKey;
const publicPem = createPublicKey({ key: rsaPublicJwk, format: 'jwk' }).export({ type: 'spki', format: 'pem' });

const server = createServer();
await new Promise((resolve) => { server.listen(cfg.port ?? 0, '127.0.0.1', resolve); });
const url = `http://127.0.0.1:${server.address().port}`;
const issuer = cfg.issuer ?? url;

const ccClients = Object.entries(secrets).map(([clientId, secret]) => ({
  client_id: clientId,
  client_secret: secret,
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  scope: 'workbench',
  ...(clientId === 'wb-dpop-svc' ? { dpop_bound_access_tokens: true } : {}),
}));

const provider = new Provider(issuer, {
  clients: [
    ...ccClients,
    {
      client_id: 'wb-device',
      token_endpoint_auth_method: 'none',
      grant_types: ['urn:ietf:params:oauth:grant-type:device_code'],
      response_types: [],
      redirect_uris: [],
      scope: 'openid workbench',
    },
    {
      client_id: 'wb-notebook',
      application_type: 'native',
      token_endpoint_auth_method: 'none',
      grant_types: ['authorization_code'],
      response_types: ['code'],
      redirect_uris: ['http://127.0.0.1/callback'],
      require_pushed_authorization_requests: true,
      dpop_bound_access_tokens: true,
      scope: 'openid workbench',
    },
  ],
  jwks,
  features: {
    clientCredentials: { enabled: true },
    deviceFlow: { enabled: true },
    devInteractions: { enabled: true },
    introspection: { enabled: false },
    revocation: { enabled: false },
    dPoP: { enabled: true },
    pushedAuthorizationRequests: { enabled: cfg.par ?? true },
    ...(cfg.fapi ? { fapi: { enabled: true, profile: '2.0' } } : {}),
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => audience,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (ctx, resourceIndicator, client) => {
        if (!audiences.has(resourceIndicator)) throw new Provider.errors.InvalidTarget();
        let sign = { alg: 'RS256' };
        if (client.clientId === 'wb-hs256-svc') sign = { alg: 'HS256', key: Buffer.from(publicPem), kid: rsaKey.kid };
        if (client.clientId === 'wb-es256-svc') sign = { alg: 'ES256' };
        return {
          scope: 'workbench',
          audience: resourceIndicator,
          accessTokenTTL: client.clientId === 'wb-short-svc' ? shortTtl : ttl,
          accessTokenFormat: 'jwt',
          jwt: { sign },
        };
      },
    },
  },
  scopes: ['openid', 'workbench'],
  extraTokenClaims: async (ctx, token) => {
    const groups = token.accountId ? accountGroups[token.accountId] : clientGroups[token.clientId];
    const extra = token.accountId ? {} : (cfg.client_claims ?? {})[token.clientId];
    return { groups: groups ?? [], ...(extra ?? {}) };
  },
  async findAccount(ctx, sub) {
    return { accountId: sub, async claims() { return { sub, groups: accountGroups[sub] ?? [] }; } };
  },
  claims: { openid: ['sub'], groups: ['groups'] },
  ttl: {
    ClientCredentials: (ctx, token, client) => (client.clientId === 'wb-short-svc' ? shortTtl : ttl),
    AccessToken: (ctx, token, client) => (client.clientId === 'wb-short-svc' ? shortTtl : ttl),
    DeviceCode: 600,
    Interaction: 600,
    Session: 3600,
    Grant: 3600,
    IdToken: 300,
  },
  pkce: { required: () => false },
  renderError: async (ctx, out) => {
    ctx.type = 'json';
    ctx.body = out;
  },
});
provider.proxy = false;

server.on('request', provider.callback());
process.stdout.write(`listening ${url} issuer ${issuer}\n`);

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => { server.close(); process.exit(0); });
}
