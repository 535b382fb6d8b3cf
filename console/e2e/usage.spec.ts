import { readFile } from 'node:fs/promises'
import { call, ECHO_MODEL, expect, signIn, test } from './fixtures'

/** The UTC month (`YYYY-MM`) `back` months before this one. */
function monthBefore(back: number): string {
  const now = new Date()
  const month = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - back, 1))
  return month.toISOString().slice(0, 7)
}

test('calls made with a key show in the usage charts, tables and CSV', async ({ page, ferry, world }) => {
  for (const word of ['one', 'two', 'three']) await call(ferry, world.memberKey, `count ${word}`)
  await signIn(page, world.adminKey, '/console/usage')
  await expect(page.getByRole('heading', { level: 1, name: 'Usage' })).toBeVisible()

  const byModel = page.getByRole('region', { name: 'By model' })
  const row = byModel.getByRole('row', { name: new RegExp(ECHO_MODEL) })
  await expect(row).toContainText('3')
  const byKey = page.getByRole('region', { name: 'By key' })
  await expect(byKey.getByRole('row', { name: new RegExp(world.memberKeyId) })).toContainText('3')

  // The chart is drawn, and its numbers are in a table under it.
  const costChart = page.getByRole('figure', { name: 'Cost by day' })
  await expect(costChart.locator('canvas')).toHaveCount(1)
  await expect(costChart.getByRole('table')).toBeVisible()
  expect(await costChart.getByRole('table').locator('tbody tr').count()).toBe(30)

  // The calls themselves, a page at a time.
  const calls = page.getByRole('region', { name: 'Calls' })
  await expect(calls.getByRole('row')).toHaveCount(4)

  const download = page.waitForEvent('download')
  await byModel.getByRole('button', { name: 'Download CSV' }).click()
  const csv = await readFile((await (await download).path()) ?? '', 'utf8')
  const [header, line] = csv.trim().split('\r\n')
  expect(header).toBe('model,requests,prompt_tokens,cached_tokens,completion_tokens,cost_usd')
  expect(line).toMatch(new RegExp(`^${ECHO_MODEL},3,\\d+,0,\\d+,\\d+\\.\\d+$`))
})

test('spend by key comes per month, dearest first, and narrows the page to one key', async ({ page, ferry, world }) => {
  for (const word of ['one', 'two', 'three']) await call(ferry, world.memberKey, `a somewhat longer prompt, number ${word}`)
  await call(ferry, world.adminKey, 'x')
  const asked: URL[] = []
  page.on('request', (request) => {
    if (request.url().includes('/usage')) asked.push(new URL(request.url()))
  })
  await signIn(page, world.adminKey, '/console/usage')

  const byKey = page.getByRole('region', { name: 'By key' })
  const rows = byKey.getByRole('row')
  await expect(rows).toHaveCount(3)
  await expect(rows.nth(1)).toContainText(world.memberKeyId)
  await expect(rows.nth(2)).toContainText(world.adminKeyId)
  await expect(byKey.getByLabel('Month')).toHaveValue(monthBefore(0))
  // The by-key table comes from the monthly endpoint, never from a report grouped by key.
  expect(asked.some((url) => url.pathname.endsWith('/usage/keys') && url.searchParams.get('month') === monthBefore(0))).toBe(true)
  expect(asked.some((url) => url.searchParams.get('group_by')?.includes('key'))).toBe(false)

  const calls = page.getByRole('region', { name: 'Calls' })
  await expect(calls.getByRole('row')).toHaveCount(5)
  await byKey.getByRole('button', { name: `Show only the usage of ${world.adminKeyId}` }).click()
  await expect(page.getByText('Showing the usage of one key only:')).toContainText(world.adminKeyId)
  await expect(calls.getByRole('row')).toHaveCount(2)
  await expect(page.getByRole('region', { name: 'By model' }).getByRole('row', { name: new RegExp(ECHO_MODEL) })).toContainText('1')
  expect(asked.some((url) => url.pathname.endsWith('/usage/events') && url.searchParams.get('key') === world.adminKeyId)).toBe(true)
  await page.getByRole('button', { name: 'Show every key' }).click()
  await expect(calls.getByRole('row')).toHaveCount(5)

  // An earlier month had none of it.
  await byKey.getByLabel('Month').fill(monthBefore(1))
  await expect(byKey.getByText('No key was used in this month.')).toBeVisible()

  const download = page.waitForEvent('download')
  await byKey.getByLabel('Month').fill(monthBefore(0))
  await expect(rows).toHaveCount(3)
  await byKey.getByRole('button', { name: 'Download CSV' }).click()
  const csv = await readFile((await (await download).path()) ?? '', 'utf8')
  const lines = csv.trim().split('\r\n')
  expect(lines[0]).toBe('month,key_id,requests,prompt_tokens,cached_tokens,completion_tokens,cost_usd')
  expect(lines[1]).toMatch(new RegExp(`^${monthBefore(0)},${world.memberKeyId},3,`))
  expect(lines).toHaveLength(3)
})

test('a member sees its own key’s usage only', async ({ page, ferry, world }) => {
  await call(ferry, world.memberKey, 'mine')
  await call(ferry, world.adminKey, 'not mine')
  await signIn(page, world.memberKey, '/console/usage')
  await expect(page.getByText('You see the usage of the key you signed in with.')).toBeVisible()
  await expect(page.getByRole('region', { name: 'By model' }).getByRole('row', { name: new RegExp(ECHO_MODEL) })).toContainText('1')
  await expect(page.getByRole('region', { name: 'By key' })).toHaveCount(0)
  // Neither may it ask for another key's usage, nor for spend by key.
  const other = await page.evaluate(
    async ({ tenantId, keyId }) => (await fetch(`/admin/v1/tenants/${tenantId}/usage?key=${keyId}`)).status,
    { tenantId: world.tenantId, keyId: world.adminKeyId },
  )
  expect(other).toBe(403)
  const spend = await page.evaluate(async (tenantId) => (await fetch(`/admin/v1/tenants/${tenantId}/usage/keys`)).status, world.tenantId)
  expect(spend).toBe(403)
})
