import { expect, signIn, test } from './fixtures'

test.describe('in Chinese', () => {
  test.use({ locale: 'zh-CN' })

  test('the console follows the browser’s language, every page in Chinese', async ({ page, world }) => {
    await page.goto('/console/')
    await expect(page.getByRole('heading', { level: 1, name: '登录' })).toBeVisible()
    expect(await page.locator('html').getAttribute('lang')).toBe('zh-CN')
    await page.getByLabel('API 密钥').fill(world.adminKey)
    await page.getByRole('button', { name: '登录', exact: true }).click()
    await expect(page.getByRole('heading', { level: 1, name: '概览' })).toBeVisible()
    // Money and dates in the locale's format.
    await expect(page.getByText('US$10.00').first()).toBeVisible()
    for (const [link, heading] of [
      ['用量', '用量'],
      ['API 密钥', 'API 密钥'],
      ['账单', '账单'],
      ['调试台', '调试台'],
    ]) {
      await page.getByRole('navigation', { name: '主导航' }).getByRole('link', { name: link }).click()
      await expect(page.getByRole('heading', { level: 1, name: heading })).toBeVisible()
    }
    // No English word of the console's own is left on a page (model names and ids aside).
    await page.getByRole('navigation', { name: '主导航' }).getByRole('link', { name: 'API 密钥' }).click()
    const text = await page.locator('main').innerText()
    expect(text).not.toMatch(/\b(Create key|Load more|Name|Status|Revoke)\b/)
  })
})

test('the language can be switched and is remembered', async ({ page, world }) => {
  await signIn(page, world.adminKey)
  await page.getByLabel('Language').selectOption('zh-CN')
  await expect(page.getByRole('heading', { level: 1, name: '概览' })).toBeVisible()
  await page.reload()
  await expect(page.getByRole('heading', { level: 1, name: '概览' })).toBeVisible()
  expect(await page.evaluate(() => Object.keys(localStorage))).toEqual(['ferry.locale'])
  await page.getByLabel('语言').selectOption('en')
  await expect(page.getByRole('heading', { level: 1, name: 'Overview' })).toBeVisible()
})
