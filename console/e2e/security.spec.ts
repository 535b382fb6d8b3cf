import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { expect, signIn, test } from './fixtures'

const CSP =
  "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; connect-src 'self'; " +
  "frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'"

test('the console and its assets carry the security headers', async ({ page, ferry }) => {
  const response = await page.goto('/console/')
  expect(response?.status()).toBe(200)
  const headers = response?.headers() ?? {}
  expect(headers['content-security-policy']).toBe(CSP)
  expect(headers['x-content-type-options']).toBe('nosniff')
  expect(headers['referrer-policy']).toBeTruthy()
  expect(headers['cache-control']).toContain('no-store')

  const html = await (await fetch(`${ferry.url}/console/`)).text()
  expect(html).not.toMatch(/<script(?![^>]*\bsrc=)[^>]*>/)
  expect(html).not.toMatch(/<style|style="/)
  const asset = /src="(\/console\/assets\/[^"]+\.js)"/.exec(html)?.[1]
  expect(asset).toBeTruthy()
  const script = await fetch(`${ferry.url}${asset}`)
  expect(script.status).toBe(200)
  expect(script.headers.get('cache-control')).toContain('immutable')
  expect(script.headers.get('content-type')).toContain('javascript')
  expect((await fetch(`${ferry.url}/console/assets/nothing-here.js`)).status).toBe(404)
  // Any other path under /console/ is the console's own page.
  const deep = await fetch(`${ferry.url}/console/tenants/anything`)
  expect(deep.status).toBe(200)
  expect(await deep.text()).toBe(html)
})

test('a state-changing call without the CSRF token is refused', async ({ page, world }) => {
  await signIn(page, world.adminKey)
  const answer = await page.evaluate(async (tenantId) => {
    const response = await fetch(`/admin/v1/tenants/${tenantId}/keys`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'no csrf', role: 'member' }),
    })
    return response.status
  }, world.tenantId)
  expect(answer).toBe(403)
})

test('a cross-site form POST is refused', async ({ page, world, ferry }) => {
  await signIn(page, world.adminKey)
  const before = await ferry.admin<{ data: unknown[] }>('GET', `/tenants/${world.tenantId}/keys?limit=1000`)
  // Another site (localhost is not 127.0.0.1's site) posts a form at the admin API.
  const target = `${ferry.url}/admin/v1/tenants/${world.tenantId}/keys`
  const attacker = createServer((_, response) => {
    response.writeHead(200, { 'content-type': 'text/html' }).end(
      `<form id="f" method="POST" enctype="text/plain" action="${target}">` +
        `<input name='{"name":"csrf","role":"tenant-admin","x":"' value='"}'></form>` +
        `<script>document.getElementById('f').submit()</script>`,
    )
  })
  await new Promise<void>((resolve) => attacker.listen(0, '127.0.0.1', resolve))
  try {
    const port = (attacker.address() as AddressInfo).port
    const refused = page.waitForResponse((response) => response.url() === target)
    await page.goto(`http://localhost:${port}/`)
    expect([401, 403, 415]).toContain((await refused).status())
  } finally {
    attacker.close()
  }
  const after = await ferry.admin<{ data: unknown[] }>('GET', `/tenants/${world.tenantId}/keys?limit=1000`)
  expect(after.body.data.length).toBe(before.body.data.length)
})

test('no page breaks the Content-Security-Policy', async ({ page, ferry, world, cspViolations }) => {
  await signIn(page, ferry.operatorKey)
  for (const path of ['/console/tenants', `/console/tenants/${world.tenantId}/usage`, '/console/models', '/console/pool', '/console/health', '/console/playground']) {
    await page.goto(path)
    await expect(page.getByRole('heading', { level: 1 })).toBeVisible()
  }
  await page.goto(`/console/tenants/${world.tenantId}/usage`)
  await expect(page.getByRole('figure', { name: 'Cost by day' }).locator('canvas')).toHaveCount(1)
  expect(cspViolations).toEqual([])
})
