import { expect, signIn, test } from './fixtures'

test('a key made in the console is shown once, works, and stops working once revoked', async ({ page, world, ferry }) => {
  await signIn(page, world.adminKey, '/console/keys')
  await expect(page.getByRole('heading', { level: 1, name: 'API keys' })).toBeVisible()
  await page.getByRole('button', { name: 'Create key' }).first().click()
  const dialog = page.getByRole('dialog', { name: 'Create key' })
  await dialog.getByLabel('Name', { exact: true }).fill('from the console')
  await dialog.getByLabel('Requests per minute (optional)').fill('120')
  await dialog.getByLabel('Daily budget (optional)').fill('2.50')
  await dialog.getByRole('button', { name: 'Create key' }).click()

  const shown = page.getByRole('dialog', { name: 'Your new key' })
  await expect(shown).toBeVisible()
  const secret = (await shown.getByTestId('new-key-secret').textContent())?.trim() ?? ''
  expect(secret).toMatch(/^fy_[a-z2-7]{12}_[a-z2-7]{32}$/)
  await shown.getByRole('button', { name: 'I have copied it' }).click()
  await expect(shown).toHaveCount(0)
  await expect(page.getByText(secret)).toHaveCount(0)

  expect((await ferry.v1('GET', '/models', secret)).status).toBe(200)

  const row = page.getByRole('row', { name: /from the console/ })
  await expect(row).toContainText('120 rpm')
  await row.getByRole('button', { name: 'Revoke: from the console' }).click()
  const confirm = page.getByRole('dialog', { name: 'Revoke this key?' })
  await confirm.getByRole('button', { name: 'Revoke the key' }).click()
  await expect(page.getByText('The key from the console was revoked.')).toBeVisible()
  await expect(row).toContainText('Revoked')
  expect((await ferry.v1('GET', '/models', secret)).status).toBe(401)
})

test('the key list comes a page at a time', async ({ page, world, ferry }) => {
  for (let index = 0; index < 55; index++) {
    expect((await ferry.admin('POST', `/tenants/${world.tenantId}/keys`, { name: `bulk ${index}`, role: 'member' })).status).toBe(201)
  }
  const pages: string[] = []
  page.on('request', (request) => {
    if (request.url().includes(`/tenants/${world.tenantId}/keys`) && request.method() === 'GET') pages.push(request.url())
  })
  await signIn(page, world.adminKey, '/console/keys')
  await expect(page.getByText('Showing 50; more to load')).toBeVisible()
  expect(pages).toHaveLength(1)
  await page.getByRole('button', { name: 'Load more' }).click()
  await expect(page.getByText('Showing 57')).toBeVisible()
  expect(pages).toHaveLength(2)
  expect(new URL(pages[1] ?? '').searchParams.get('after')).toBeTruthy()
})
