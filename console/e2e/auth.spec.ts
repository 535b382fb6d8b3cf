import { expect, sessionStatus, signIn, test } from './fixtures'

test('a tenant admin signs in with a key, and the key is kept nowhere', async ({ page, world }) => {
  await signIn(page, world.adminKey)
  await expect(page.getByRole('heading', { level: 1, name: 'Overview' })).toBeVisible()
  await expect(page.getByText(world.adminKeyId)).toBeVisible()
  // The form is empty, the session cookie is HttpOnly, and nothing is stored.
  await expect(page.getByLabel('API key')).toHaveCount(0)
  const stored = await page.evaluate(() => ({
    cookies: document.cookie,
    local: JSON.stringify({ ...localStorage }),
    session: JSON.stringify({ ...sessionStorage }),
  }))
  expect(stored.cookies).not.toContain('ferry_session')
  for (const place of Object.values(stored)) expect(place).not.toContain(world.adminKey.slice(3))
  const cookies = await page.context().cookies()
  const session = cookies.find((cookie) => cookie.name === 'ferry_session')
  expect(session?.httpOnly).toBe(true)
  expect(session?.sameSite).toBe('Strict')
})

test('a wrong key is refused and the form says so', async ({ page, world }) => {
  await page.goto('/console/')
  await page.getByLabel('API key').fill(`${world.adminKey.slice(0, -4)}aaaa`)
  await page.getByRole('button', { name: 'Sign in', exact: true }).click()
  await expect(page.getByText('That key was not accepted')).toBeVisible()
  await expect(page.getByLabel('API key')).toHaveValue('')
  expect(await sessionStatus(page)).toBe(401)
})

test('signing out ends the session on the server', async ({ page, world, ferry }) => {
  await signIn(page, world.adminKey)
  const cookie = (await page.context().cookies()).find((one) => one.name === 'ferry_session')
  expect(cookie).toBeDefined()
  expect(await sessionStatus(page)).toBe(200)
  await page.getByRole('button', { name: 'Sign out' }).click()
  await expect(page.getByRole('heading', { level: 1, name: 'Sign in' })).toBeVisible()
  expect(await sessionStatus(page)).toBe(401)
  // The old cookie, replayed by someone who kept it, opens nothing either.
  const replayed = await fetch(`${ferry.url}/admin/v1/session`, { headers: { cookie: `ferry_session=${cookie?.value}` } })
  expect(replayed.status).toBe(401)
})

test('an operator signs in and lands on the tenants', async ({ page, ferry, world }) => {
  await signIn(page, ferry.operatorKey)
  await expect(page.getByRole('heading', { level: 1, name: 'Tenants' })).toBeVisible()
  await page.getByLabel('Search tenants').fill(world.tenantName)
  await expect(page.getByRole('link', { name: world.tenantName })).toBeVisible()
})

test('a member sees only what a member may', async ({ page, world }) => {
  await signIn(page, world.memberKey)
  const nav = page.getByRole('navigation', { name: 'Main' })
  await expect(nav.getByRole('link', { name: 'Usage' })).toBeVisible()
  await expect(nav.getByRole('link', { name: 'API keys' })).toHaveCount(0)
  await expect(nav.getByRole('link', { name: 'Billing' })).toHaveCount(0)
  await page.goto('/console/keys')
  await expect(page.getByRole('heading', { level: 1, name: 'Page not found' })).toBeVisible()
})
