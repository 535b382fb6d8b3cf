import { expect, signIn, test } from './fixtures'

test('an operator top-up shows in the tenant’s ledger and balance', async ({ page, browser, ferry, world }) => {
  await signIn(page, ferry.operatorKey, `/console/tenants/${world.tenantId}`)
  await expect(page.getByRole('heading', { level: 1, name: `${world.tenantName}: Overview` })).toBeVisible()
  await expect(page.getByText('$10.00').first()).toBeVisible()

  await page.getByRole('button', { name: 'Top up' }).click()
  const dialog = page.getByRole('dialog', { name: 'Top up credit' })
  const idempotencyKey = await dialog.getByLabel('Idempotency key').inputValue()
  expect(idempotencyKey).toMatch(/^console-/)
  await dialog.getByLabel('Amount (USD)').fill('12.345')
  await dialog.getByLabel('Memo (optional)').fill('welcome credit')
  await dialog.getByRole('button', { name: 'Post' }).click()
  await expect(page.getByText('Posted. The balance is now $22.345.')).toBeVisible()
  await expect(page.getByRole('definition').filter({ hasText: '$22.345' }).first()).toBeVisible()

  // A second dialog has a key of its own.
  await page.getByRole('button', { name: 'Top up' }).click()
  expect(await page.getByRole('dialog', { name: 'Top up credit' }).getByLabel('Idempotency key').inputValue()).not.toBe(idempotencyKey)
  await page.getByRole('dialog', { name: 'Top up credit' }).getByRole('button', { name: 'Cancel' }).click()

  // The tenant's own admin sees it in the ledger.
  const tenant = await browser.newContext()
  const tenantPage = await tenant.newPage()
  await signIn(tenantPage, world.adminKey, '/console/billing')
  const row = tenantPage.getByRole('row', { name: /welcome credit/ })
  await expect(row).toContainText('Top-up')
  await expect(row).toContainText('$12.345')
  await tenantPage.goto('/console/')
  await expect(tenantPage.getByText('$22.345').first()).toBeVisible()
  await tenant.close()
})

test('limits and budgets are saved with PATCH', async ({ page, ferry, world }) => {
  await signIn(page, ferry.operatorKey, `/console/tenants/${world.tenantId}`)
  const form = page.getByRole('region', { name: 'Limits and budgets' })
  await form.getByLabel('Requests per minute (optional)').fill('600')
  await form.getByLabel('Monthly budget (optional)').fill('50')
  await form.getByRole('button', { name: 'Save' }).click()
  await expect(form.getByText('Limits and budgets saved.')).toBeVisible()
  const tenant = await ferry.admin<{ limits: { rpm?: number }; budgets: { period: string; amount_usd: string }[] }>('GET', `/tenants/${world.tenantId}`)
  expect(tenant.body.limits.rpm).toBe(600)
  expect(tenant.body.budgets).toEqual([{ period: 'month', amount_usd: '50.00', enforcement: 'hard' }])
})
