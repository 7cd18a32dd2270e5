// A real OpenID Connect provider for Proxima's OIDC tests (tests/oidc.rs): the certified
// `oidc-provider` package, on loopback, with keys it generates at start.
//
// Staff clients are registered by the test through the provider's own dynamic client
// registration (RFC 7591, with the initial access token printed at start) and carry a
// `roles` property; the client credentials grant then issues them JWT access tokens for
// the resource `urn:proxima:sql` (audience `proxima`, RS256) whose `roles` claim is the
// client's roles. Deleting a client through its registration (RFC 7592) revokes it: no
// new token is issued to it.
//
// Prints `issuer <URL>` and `initial-access-token <TOKEN>` once listening.
import crypto from 'node:crypto';
import http from 'node:http';

import Provider, { errors } from 'oidc-provider';

const RESOURCE = 'urn:proxima:sql';
const AUDIENCE = process.env.PROXIMA_AUDIENCE ?? 'proxima';
const TOKEN_TTL = Number(process.env.TOKEN_TTL ?? 300);

function signingKey(type, options, alg) {
  const { privateKey } = crypto.generateKeyPairSync(type, options);
  return { ...privateKey.export({ format: 'jwk' }), kid: `${alg}-${crypto.randomUUID()}`, alg, use: 'sig' };
}

const server = http.createServer();
await new Promise((resolve) => { server.listen(0, '127.0.0.1', resolve); });
const issuer = `http://127.0.0.1:${server.address().port}`;
const initialAccessToken = crypto.randomBytes(24).toString('base64url');

const provider = new Provider(issuer, {
  jwks: {
    keys: [
      signingKey('rsa', { modulusLength: 2048 }, 'RS256'),
      signingKey('ec', { namedCurve: 'P-256' }, 'ES256'),
    ],
  },
  clients: [],
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
  extraClientMetadata: {
    properties: ['roles'],
    validator(ctx, key, value) {
      if (key === 'roles' && value !== undefined
          && !(Array.isArray(value) && value.every((role) => typeof role === 'string'))) {
        throw new errors.InvalidClientMetadata('roles must be an array of strings');
      }
    },
  },
  async extraTokenClaims(ctx, token) {
    const client = ctx.oidc.client ?? await ctx.oidc.provider.Client.find(token.clientId);
    return { roles: client?.roles ?? [] };
  },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    registration: { enabled: true, initialAccessToken },
    registrationManagement: { enabled: true, rotateRegistrationAccessToken: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => RESOURCE,
      useGrantedResource: () => true,
      getResourceServerInfo(ctx, resourceIndicator) {
        if (resourceIndicator !== RESOURCE) throw new errors.InvalidTarget();
        return {
          scope: 'sql',
          audience: AUDIENCE,
          accessTokenTTL: TOKEN_TTL,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
});
provider.on('server_error', (ctx, error) => { console.error('server_error', error); });

server.on('request', provider.callback());
console.log(`issuer ${issuer}`);
console.log(`initial-access-token ${initialAccessToken}`);
