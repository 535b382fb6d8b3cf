import { expect, makeTenant, signIn, test } from './fixtures'

test('a tenant admin of A learns nothing of tenant B through the console’s calls', async ({ page, ferry, world }) => {
  const other = await makeTenant(ferry)
  await signIn(page, world.adminKey)
  const csrf = await page.evaluate(async () => ((await (await fetch('/admin/v1/session')).json()) as { csrf_token: string }).csrf_token)

  // The same calls the console makes, with A's session cookie and CSRF token, at B's ids.
  const calls: [string, string, unknown?][] = [
    ['GET', `/admin/v1/tenants/${other.tenantId}`],
    ['GET', `/admin/v1/tenants/${other.tenantId}/keys`],
    ['GET', `/admin/v1/tenants/${other.tenantId}/ledger`],
    ['GET', `/admin/v1/tenants/${other.tenantId}/usage?group_by=day`],
    ['GET', `/admin/v1/tenants/${other.tenantId}/usage/events`],
    ['GET', `/admin/v1/tenants/${other.tenantId}/invoices`],
    ['GET', `/admin/v1/tenants/${other.tenantId}/alerts`],
    ['POST', `/admin/v1/tenants/${other.tenantId}/keys`, { name: 'intruder', role: 'tenant-admin' }],
    ['DELETE', `/admin/v1/keys/${other.adminKeyId}`],
    ['PATCH', `/admin/v1/tenants/${other.tenantId}`, { limits: { rpm: 1 } }],
    ['POST', `/admin/v1/tenants/${other.tenantId}/credits`, { amount_usd: '1000' }],
    ['GET', '/admin/v1/tenants'],
    ['GET', '/admin/v1/models'],
  ]
  for (const [method, path, body] of calls) {
    const answer = await page.evaluate(
      async ({ method, path, body, csrf }) => {
        const response = await fetch(path, {
          method,
          credentials: 'same-origin',
          headers: { 'x-ferry-csrf': csrf, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
          body: body === undefined ? undefined : JSON.stringify(body),
        })
        return { status: response.status, text: await response.text() }
      },
      { method, path, body, csrf },
    )
    expect([403, 404], `${method} ${path} answered ${answer.status}: ${answer.text}`).toContain(answer.status)
    expect(answer.text).not.toContain(other.tenantName)
    expect(answer.text).not.toContain(other.adminKeyId)
  }

  // B's key still works: nothing was revoked.
  expect((await ferry.v1('GET', '/models', other.adminKey)).status).toBe(200)

  // The console's own routes give A no way in either.
  await page.goto(`/console/tenants/${other.tenantId}`)
  await expect(page.getByRole('heading', { level: 1, name: 'Page not found' })).toBeVisible()
  await expect(page.getByText(other.tenantName)).toHaveCount(0)
})
