// The README's pictures of the console, taken from a real ferry with real calls behind them.
// Only when asked: FERRY_SCREENSHOTS=<folder> npx playwright test screenshots.

import { call, expect, signIn, test } from './fixtures'

const folder = process.env.FERRY_SCREENSHOTS

test.skip(!folder, 'set FERRY_SCREENSHOTS to a folder to take the README screenshots')

test('the overview and the usage page, for the README', async ({ page, ferry, world }) => {
  for (let index = 0; index < 12; index++) {
    await call(ferry, world.memberKey, `a question of some length, number ${index}, `.repeat(1 + (index % 4)))
  }
  await page.setViewportSize({ width: 1280, height: 860 })
  await signIn(page, world.adminKey, '/console/')
  await expect(page.getByRole('heading', { level: 1 })).toBeVisible()
  await page.waitForLoadState('networkidle')
  await page.screenshot({ path: `${folder}/console-overview.png` })
  await page.goto(`${ferry.url}/console/usage`)
  await expect(page.getByRole('figure', { name: 'Cost by day' }).locator('canvas')).toHaveCount(1)
  await page.waitForLoadState('networkidle')
  await page.screenshot({ path: `${folder}/console-usage.png` })
})
