import AxeBuilder from '@axe-core/playwright'
import type { Page } from '@playwright/test'
import { call, expect, signIn, test } from './fixtures'

async function expectNoSeriousViolations(page: Page, what: string): Promise<void> {
  const results = await new AxeBuilder({ page }).withTags(['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']).analyze()
  const serious = results.violations.filter((violation) => violation.impact === 'serious' || violation.impact === 'critical')
  expect(
    serious.map((violation) => `${violation.id}: ${violation.help} (${violation.nodes.map((node) => node.target.join(' ')).join(', ')})`),
    `${what} has serious accessibility violations`,
  ).toEqual([])
}

async function visit(page: Page, path: string, heading: string | RegExp): Promise<void> {
  await page.goto(path)
  await expect(page.getByRole('heading', { level: 1, name: heading })).toBeVisible()
  await expect(page.getByRole('status').filter({ hasText: 'Loading' })).toHaveCount(0)
}

for (const theme of ['light', 'dark'] as const) {
  test.describe(`in the ${theme} theme`, () => {
    test.use({ colorScheme: theme })

    test('the sign-in page has no serious accessibility violations', async ({ page }) => {
      await page.goto('/console/')
      await expect(page.getByRole('heading', { level: 1, name: 'Sign in' })).toBeVisible()
      await expectNoSeriousViolations(page, 'sign-in')
    })

    test('every tenant page has none', async ({ page, ferry, world }) => {
      await call(ferry, world.memberKey, 'something to chart')
      await signIn(page, world.adminKey)
      for (const [path, heading] of [
        ['/console/', 'Overview'],
        ['/console/usage', 'Usage'],
        ['/console/keys', 'API keys'],
        ['/console/billing', 'Billing'],
        ['/console/playground', 'Playground'],
      ] as const) {
        await visit(page, path, heading)
        await expectNoSeriousViolations(page, path)
      }
      await page.goto('/console/keys')
      await page.getByRole('button', { name: 'Create key' }).first().click()
      await expect(page.getByRole('dialog', { name: 'Create key' })).toBeVisible()
      await expectNoSeriousViolations(page, 'the create-key dialog')
    })

    test('every operator page has none', async ({ page, ferry, world, echoModel }) => {
      await signIn(page, ferry.operatorKey)
      for (const [path, heading] of [
        ['/console/tenants', 'Tenants'],
        [`/console/tenants/${world.tenantId}`, `${world.tenantName}: Overview`],
        [`/console/tenants/${world.tenantId}/usage`, `${world.tenantName}: Usage`],
        [`/console/tenants/${world.tenantId}/keys`, `${world.tenantName}: API keys`],
        [`/console/tenants/${world.tenantId}/billing`, `${world.tenantName}: Billing`],
        ['/console/models', 'Models'],
        [`/console/models/${echoModel}`, echoModel],
        ['/console/pool', 'GPU pool'],
        ['/console/health', 'Health'],
        ['/console/playground', 'Playground'],
      ] as const) {
        await visit(page, path, heading)
        await expectNoSeriousViolations(page, path)
      }
      await page.goto(`/console/tenants/${world.tenantId}`)
      await page.getByRole('button', { name: 'Top up' }).click()
      await expectNoSeriousViolations(page, 'the top-up dialog')
    })
  })
}

test('the keyboard reaches the content first and the dialogs hold focus', async ({ page, world }) => {
  await signIn(page, world.adminKey, '/console/keys')
  await page.keyboard.press('Tab')
  const skip = page.getByRole('link', { name: 'Skip to content' })
  await expect(skip).toBeFocused()
  await page.keyboard.press('Enter')
  await expect(page.locator('main')).toBeFocused()
  const opener = page.getByRole('button', { name: 'Create key' }).first()
  await opener.focus()
  await page.keyboard.press('Enter')
  const dialog = page.getByRole('dialog', { name: 'Create key' })
  await expect(dialog).toBeVisible()
  await page.keyboard.press('Escape')
  await expect(dialog).toHaveCount(0)
  await expect(opener).toBeFocused()
})
