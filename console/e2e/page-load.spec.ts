// How long a console page takes to be usable from a cold browser cache: a measurement for
// BENCHMARKS.md, not a test of it (nothing is asserted of the times). Only when asked:
// FERRY_PAGE_LOAD=1 npx playwright test page-load (bench/console/run.sh does).

import { call, expect, test } from './fixtures'

test.skip(!process.env.FERRY_PAGE_LOAD, 'set FERRY_PAGE_LOAD=1 to time the console pages')

const ROUNDS = 5

test('each page is usable soon after a cold load', async ({ browser, ferry, world, consoleUrl }) => {
  for (let index = 0; index < 20; index++) await call(ferry, world.memberKey, `question ${index}`)
  const pages: [string, string, string][] = [
    [world.adminKey, '/console/', 'Overview'],
    [world.adminKey, '/console/usage', 'Usage'],
    [world.adminKey, '/console/keys', 'API keys'],
    [world.adminKey, '/console/billing', 'Billing'],
    [world.adminKey, '/console/playground', 'Playground'],
    [ferry.operatorKey, '/console/tenants', 'Tenants'],
    [ferry.operatorKey, '/console/models', 'Models'],
  ]
  const rows: string[] = []
  for (const [key, path, heading] of pages) {
    const times: number[] = []
    const shown: number[] = []
    for (let round = 0; round < ROUNDS; round++) {
      // A new context each round: an empty cache, no service worker, only the session cookie.
      const context = await browser.newContext({ baseURL: consoleUrl })
      const signedIn = await context.request.post('/admin/v1/session', { data: { key } })
      expect(signedIn.status()).toBe(200)
      const page = await context.newPage()
      const started = Date.now()
      await page.goto(path, { waitUntil: 'commit' })
      await expect(page.getByRole('heading', { level: 1, name: heading })).toBeVisible()
      shown.push(Date.now() - started)
      // Usable: the page's own data has arrived (no request in flight) and it has been drawn.
      await page.waitForLoadState('networkidle')
      times.push(Date.now() - started - 500) // networkidle waits 500 ms of quiet: not the page's
      await context.close()
    }
    const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]
    rows.push(`| ${path} | ${median(shown)} | ${median(times)} | ${Math.max(...times)} |`)
  }
  console.log(`\nconsole pages from a cold browser cache (${ROUNDS} loads each, ms)\n\n| page | heading shown, median | data drawn, median | data drawn, worst |\n|---|---:|---:|---:|\n${rows.join('\n')}\n`)
})
