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
      await page.goto(path, { waitUntil: 'commit' })
      // Times in the page's own clock, from the start of the navigation: when the page's
      // heading was first drawn (checked every frame), and when its last request (scripts,
      // styles, the API calls for its data) had been answered.
      const headingAt = await page.waitForFunction(
        (name) => (document.querySelector('h1')?.textContent === name ? performance.now() : null),
        heading,
        { polling: 'raf' },
      )
      shown.push(Math.round(Number(await headingAt.jsonValue())))
      await page.waitForLoadState('networkidle')
      const settled = await page.evaluate(() =>
        Math.max(...performance.getEntriesByType('resource').map((entry) => (entry as PerformanceResourceTiming).responseEnd)),
      )
      times.push(Math.round(settled))
      await context.close()
    }
    const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]
    rows.push(`| ${path} | ${median(shown)} | ${median(times)} | ${Math.max(...times)} |`)
  }
  console.log(`\nconsole pages from a cold browser cache (${ROUNDS} loads each, ms)\n\n| page | heading drawn, median | last answer in, median | last answer in, worst |\n|---|---:|---:|---:|\n${rows.join('\n')}\n`)
})
