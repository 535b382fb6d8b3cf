// Single sign-on through a real OpenID Provider (npm `oidc-provider`, certified) on loopback:
// the console's "Sign in with SSO" link, the provider's login and consent pages (its dev
// interactions), the code + PKCE exchange done by ferry, and a session cookie at the end;
// the browser never sees a token. Ferry is configured by its `ferry.toml` ([auth.jwt] and
// [auth.jwt.console]) as it would be in production.

import { generateKeyPairSync } from 'node:crypto'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { Ferry } from './ferry'
import { expect, makeTenant, serveConsole, sessionStatus, test } from './fixtures'

const CLIENT_ID = 'ferry-console'

function ferryToml(issuer: string): string {
  return `[auth.jwt]
jwks_url = "${issuer}/jwks"
issuer = "${issuer}"
audience = "ferry-api"
tenant_claim = "ferry_tenant"
role_claim = "ferry_role"

[auth.jwt.console]
client_id = "${CLIENT_ID}"
`
}

test('a tenant admin signs in through the OpenID provider', async ({ page }) => {
  // The provider's address must be known before ferry starts, and ferry's before the
  // provider's client is made: listen first, mount the provider after.
  let handler: (request: IncomingMessage, response: ServerResponse) => void = (_, response) => response.writeHead(503).end()
  const server = createServer((request, response) => handler(request, response))
  await new Promise<void>((done) => server.listen(0, '127.0.0.1', done))
  const issuer = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  // The provider's dev pages import a web font; nothing here reaches the internet.
  await page.route(/^https:\/\/fonts\.(googleapis|gstatic)\.com\//, (route) => route.abort())

  const ferry = await new Ferry().start({ toml: ferryToml(issuer) })
  const served = await serveConsole(ferry)
  const origin = served.url
  try {
    const world = await makeTenant(ferry)
    // Loaded here, not at the top: it warns on Node 20 when merely imported.
    const { default: Provider } = await import('oidc-provider')
    const provider = new Provider(issuer, {
      clients: [
        {
          client_id: CLIENT_ID,
          redirect_uris: [`${origin}/admin/v1/session/oidc/callback`],
          response_types: ['code'],
          grant_types: ['authorization_code'],
          token_endpoint_auth_method: 'none',
        },
      ],
      pkce: { required: () => true },
      // The tenant and role go in the ID token itself (not only in userinfo).
      conformIdTokenClaims: false,
      claims: { openid: ['sub', 'ferry_tenant', 'ferry_role'], profile: ['name'] },
      cookies: { keys: ['console-e2e-cookie-key'] },
      // Its own signing key (an RS256 key made for this test), as a real provider has.
      jwks: { keys: [{ ...generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' }), kid: 'e2e', use: 'sig', alg: 'RS256' }] },
      ttl: { Interaction: 600, Session: 600, Grant: 600, AccessToken: 600, IdToken: 600, AuthorizationCode: 60 },
      findAccount: async (_, id) => ({
        accountId: id,
        claims: async () => ({ sub: id, name: 'Alice', ferry_tenant: world.tenantId, ferry_role: 'tenant-admin' }),
      }),
    })
    handler = provider.callback()
    expect((await (await fetch(`${ferry.url}/admin/v1/session/methods`)).json()).oidc).toBe(true)

    // A callback that no sign-in began (a forged or replayed link) signs no one in.
    await page.goto(`${origin}/admin/v1/session/oidc/callback?code=x&state=y`)
    await expect(page.getByRole('heading', { level: 1, name: 'Sign in' })).toBeVisible()
    await expect(page.getByRole('alert')).toContainText('Single sign-on did not complete')
    await expect(page.getByRole('alert')).toContainText('oidc_sign_in_failed')
    expect(new URL(page.url()).search).toBe('')
    expect(await sessionStatus(page)).toBe(401)

    await page.getByRole('link', { name: 'Sign in with SSO' }).click()
    await page.waitForURL(`${issuer}/**`)
    await page.locator('input[name="login"]').fill('alice@example.test')
    await page.locator('input[name="password"]').fill('anything')
    await page.getByRole('button', { name: 'Sign-in' }).click()
    await page.getByRole('button', { name: 'Continue' }).click()
    await page.waitForURL(`${origin}/console/**`)
    await expect(page.getByRole('heading', { level: 1, name: 'Overview' })).toBeVisible()
    await expect(page.getByText('alice@example.test')).toBeVisible()
    await expect(page.getByRole('alert')).toHaveCount(0)
    expect(await sessionStatus(page)).toBe(200)
    const session = await page.evaluate(async () => (await fetch('/admin/v1/session')).json())
    expect(session).toMatchObject({ role: 'tenant-admin', tenant_id: world.tenantId, key_id: null, subject: 'alice@example.test' })
    // No token reached the page: only the HttpOnly cookie.
    expect(await page.evaluate(() => document.cookie)).toBe('')
  } finally {
    await served.stop()
    await ferry.stop()
    server.closeAllConnections()
    server.close()
  }
})
