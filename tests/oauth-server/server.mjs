// A real OAuth 2.0 / OpenID Connect authorization server (npm `oidc-provider`) for Switchboard's
// end-to-end tests. Binds 127.0.0.1 only. Started and stopped by
// `switchboard_testkit::oidc::OidcProvider`; can also be run by hand:
//
//   OIDC_CONFIG=clients.json node server.mjs --port 0
//
// Configuration (JSON), from `--config FILE`, env `OIDC_CONFIG` (a file path) or env
// `OIDC_CONFIG_JSON` (inline). Either an array of clients or an object:
//   {
//     "clients": [{ "client_id": "...", "client_secret": "...",
//                   "token_endpoint_auth_method": "client_secret_basic" | "client_secret_post" | "none",
//                   "redirect_uris": ["http://127.0.0.1:8080/connector/callback"],
//                   "grant_types": ["authorization_code", "refresh_token", "client_credentials"],
//                   "scope": "openid fhirUser offline_access patient/*.read" }],
//     "fhir_user": "Practitioner/123",            // fhirUser claim of every account
//     "patient": "pat-0001", "encounter": null,   // SMART launch context added to token responses
//     "access_token_ttl": 3600,
//     "extra_scopes": ["user/*.read"],
//     "clock_tolerance": 15,                      // seconds of skew accepted in client assertions
//     "token_path": "/token"                      // e.g. "/oauth2/token" for an Epic-like layout
//   }
// Clients authenticating with `private_key_jwt` (RS384/ES384 allowed) are registered at run time
// by the test (their `jwks_uri` is a URL known only once Switchboard runs):
//   POST /test/clients                  JSON client metadata (client_id, jwks_uri, ...) -> 201
//   POST /test/clients/{id}/jwks-stale  the cached JWK Set of the client counts as expired, as a
//                                       verifier's cache does once its max-age has passed -> 204
// When ready it prints ONE JSON line on stdout:
//   {"ready":true,"issuer":"http://127.0.0.1:PORT","authorization_endpoint":...,...}
// It exits when its standard input closes (the parent test process is gone).

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';

import Provider from 'oidc-provider';

function argValue(name) {
  const i = process.argv.indexOf(name);
  return i !== -1 ? process.argv[i + 1] : undefined;
}

function readConfig() {
  const file = argValue('--config') ?? process.env.OIDC_CONFIG;
  let raw;
  if (file) {
    raw = JSON.parse(fs.readFileSync(file, 'utf8'));
  } else if (process.env.OIDC_CONFIG_JSON) {
    raw = JSON.parse(process.env.OIDC_CONFIG_JSON);
  } else {
    raw = {};
  }
  return Array.isArray(raw) ? { clients: raw } : raw;
}

const settings = readConfig();
const port = Number(argValue('--port') ?? process.env.OIDC_PORT ?? 0);
const fhirUser = settings.fhir_user ?? 'Practitioner/prac-0001';
const launchPatient = settings.patient === undefined ? 'pat-0001' : settings.patient;
const launchEncounter = settings.encounter ?? null;
const accessTokenTtl = Number(settings.access_token_ttl ?? 3600);
const clockTolerance = Number(settings.clock_tolerance ?? 15);
const tokenPath = settings.token_path ?? '/token';

const clients = (settings.clients ?? []).map((c) => {
  const grantTypes = c.grant_types ?? ['authorization_code', 'refresh_token'];
  const usesCode = grantTypes.includes('authorization_code');
  const client = {
    client_id: c.client_id,
    token_endpoint_auth_method: c.token_endpoint_auth_method ?? 'client_secret_basic',
    grant_types: grantTypes,
    response_types: usesCode ? ['code'] : [],
    redirect_uris: usesCode ? (c.redirect_uris ?? []) : [],
    application_type: 'web',
  };
  if (client.token_endpoint_auth_method !== 'none') {
    client.client_secret = c.client_secret;
  }
  if (c.scope) client.scope = c.scope;
  return client;
});

// Every scope any client may ask for must be known to the provider, or it is silently dropped.
const scopes = new Set([
  'openid', 'offline_access', 'online_access', 'fhirUser', 'profile', 'launch', 'launch/patient',
  'launch/encounter', 'patient/*.read', 'patient/*.rs', 'patient/Patient.read', 'patient/Patient.rs',
  'user/*.read', 'user/*.rs', 'user/Patient.read', 'user/Patient.rs', 'system/*.read',
  'system/*.rs', 'system/Patient.read', 'system/Patient.rs',
]);
for (const c of clients) {
  for (const s of (c.scope ?? '').split(' ').filter(Boolean)) scopes.add(s);
}
for (const s of settings.extra_scopes ?? []) scopes.add(s);

// The key is generated as PEM and re-imported before the JWK export. Exporting the KeyObject that
// generateKeyPairSync returns can deadlock Node 20 at random (about 1 start in 120 here): a GC
// during the export destroys the finished keygen job, which locks the mutex of the very key
// being exported (gdb: ExportJWKRsaKey -> GC -> ~KeyGenJob -> uv_mutex_lock).
const { privateKey: privatePem } = crypto.generateKeyPairSync('rsa', {
  modulusLength: 2048,
  publicKeyEncoding: { type: 'spki', format: 'pem' },
  privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
});
const signingKey = {
  ...crypto.createPrivateKey(privatePem).export({ format: 'jwk' }),
  use: 'sig',
  alg: 'RS256',
  kid: 'test-key',
};

const configuration = {
  clients,
  scopes: [...scopes],
  claims: {
    openid: ['sub'],
    fhirUser: ['fhirUser'],
    profile: ['name', 'given_name', 'family_name'],
  },
  conformIdTokenClaims: false,
  allowOmittingSingleRegisteredRedirectUri: false,
  async findAccount(_ctx, id) {
    return {
      accountId: id,
      async claims() {
        return {
          sub: id,
          fhirUser,
          name: `Test User ${id}`,
          given_name: 'Test',
          family_name: 'User',
        };
      },
    };
  },
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    revocation: { enabled: true },
    introspection: { enabled: true },
  },
  pkce: { required: () => true },
  clockTolerance,
  // oidc-provider refuses to fetch from special-use addresses (its SSRF guard); the clients'
  // jwks_uri here is Switchboard on 127.0.0.1, so the test server fetches without the guard.
  fetch: (url, options) => {
    const { dispatcher: _guard, ...rest } = options;
    return globalThis.fetch(url, rest);
  },
  routes: { token: tokenPath },
  enabledJWA: {
    clientAuthSigningAlgValues: [
      'HS256', 'RS256', 'RS384', 'PS256', 'ES256', 'ES384', 'Ed25519', 'EdDSA',
    ],
  },
  rotateRefreshToken: true,
  // OIDC drops `offline_access` unless `prompt=consent` is sent; SMART clients rarely send it, so
  // every authorization_code grant of a client allowed to refresh gets a refresh token.
  async issueRefreshToken(_ctx, client, source) {
    return client.grantTypeAllowed('refresh_token')
      && (source.kind === 'AuthorizationCode' || source.kind === 'RefreshToken');
  },
  async expiresWithSession() {
    return false;
  },
  clientBasedCORS: () => true,
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  jwks: { keys: [signingKey] },
  ttl: {
    AccessToken: accessTokenTtl,
    AuthorizationCode: 300,
    ClientCredentials: accessTokenTtl,
    IdToken: 3600,
    Interaction: 3600,
    Session: 86400,
    Grant: 14 * 86400,
    RefreshToken: 14 * 86400,
  },
  renderError(ctx, out) {
    ctx.type = 'json';
    ctx.body = out;
  },
};

const server = http.createServer();

server.listen(port, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, configuration);

  // SMART launch context in token responses of user-facing grants.
  provider.use(async (ctx, next) => {
    await next();
    if (ctx.method !== 'POST' || ctx.path !== '/token' || ctx.status !== 200) return;
    const grantType = ctx.oidc?.params?.grant_type;
    if (grantType !== 'authorization_code' && grantType !== 'refresh_token') return;
    if (!ctx.body || typeof ctx.body !== 'object' || !ctx.body.access_token) return;
    const extra = {};
    if (launchPatient) extra.patient = launchPatient;
    if (launchEncounter) extra.encounter = launchEncounter;
    ctx.body = { ...ctx.body, ...extra };
  });

  const providerCallback = provider.callback();

  async function readJson(req) {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    return JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}');
  }

  // Test-only administration (see the header).
  async function testAdmin(req, res) {
    const reply = (status, body) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(body === undefined ? '' : JSON.stringify(body));
    };
    try {
      const stale = req.url.match(/^\/test\/clients\/([^/]+)\/jwks-stale$/);
      if (req.method === 'POST' && req.url === '/test/clients') {
        const metadata = await readJson(req);
        await provider.Client.validate(metadata);
        await provider.Client.adapter.upsert(metadata.client_id, metadata);
        return reply(201, { client_id: metadata.client_id });
      }
      if (req.method === 'POST' && stale) {
        const client = await provider.Client.find(decodeURIComponent(stale[1]));
        if (!client) return reply(404, { error: 'no such client' });
        client.asymmetricKeyStore.freshUntil = 0;
        return reply(204);
      }
      return reply(404, { error: 'no such test route' });
    } catch (err) {
      return reply(400, { error: String(err?.error_description ?? err?.message ?? err) });
    }
  }

  server.on('request', (req, res) => {
    if (req.url.startsWith('/test/')) {
      testAdmin(req, res);
    } else {
      providerCallback(req, res);
    }
  });

  process.stdout.write(`${JSON.stringify({
    ready: true,
    issuer,
    authorization_endpoint: `${issuer}/auth`,
    token_endpoint: `${issuer}${tokenPath}`,
    revocation_endpoint: `${issuer}/token/revocation`,
    introspection_endpoint: `${issuer}/token/introspection`,
    jwks_uri: `${issuer}/jwks`,
  })}\n`);
});

server.on('error', (err) => {
  process.stderr.write(`oauth-server: ${err.stack ?? err}\n`);
  process.exit(1);
});

// The parent closes our stdin when it goes away (also when it is killed): do not outlive it.
process.stdin.on('end', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));
process.stdin.resume();
