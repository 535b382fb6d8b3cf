// The browser tests' fixtures: one real `ferry serve` and one mock upstream per worker, a
// fresh tenant (with credit, a tenant-admin key and a member key) per test, and a check on
// every page that the browser reported no Content-Security-Policy violation.

import { test as base, expect, type Page } from '@playwright/test'
import { DistProxy } from './distProxy'
import { Ferry } from './ferry'
import { MockUpstream } from './mockUpstream'

export const ECHO_MODEL = 'echo'

export interface World {
  tenantId: string
  tenantName: string
  adminKey: string
  adminKeyId: string
  memberKey: string
  memberKeyId: string
}

interface WorkerFixtures {
  ferry: Ferry
  /** Where the browser opens the console (see `serveConsole`). */
  consoleUrl: string
  upstream: MockUpstream
  echoModel: string
}

interface TestFixtures {
  world: World
  cspViolations: string[]
}

let tenants = 0

export interface ServedConsole {
  url: string
  stop: () => Promise<void>
}

/**
 * Where the browser opens a ferry's console: ferry itself (the console embedded in the
 * binary), or with FERRY_E2E_DIST=1 a proxy that serves a fresh `console/dist` in front of it
 * (a development aid, for iterating without relinking ferry).
 */
export async function serveConsole(ferry: Ferry): Promise<ServedConsole> {
  if (process.env.FERRY_E2E_DIST !== '1') return { url: ferry.url, stop: async () => {} }
  const proxy = await new DistProxy(ferry.url).start()
  return { url: proxy.url, stop: () => proxy.stop() }
}

/** A tenant with $10 of credit and two keys, made through the admin API. */
export async function makeTenant(ferry: Ferry, name = `tenant-${process.pid}-${++tenants}`): Promise<World> {
  const tenant = await ferry.admin<{ id: string }>('POST', '/tenants', { name })
  expect(tenant.status).toBe(201)
  const tenantId = tenant.body.id
  expect((await ferry.admin('POST', `/tenants/${tenantId}/credits`, { amount_usd: '10.00', idempotency_key: `seed-${tenantId}` })).status).toBe(201)
  const key = async (role: string) => {
    const made = await ferry.admin<{ id: string; key: string }>('POST', `/tenants/${tenantId}/keys`, { name: `${role} key`, role })
    expect(made.status).toBe(201)
    return made.body
  }
  const admin = await key('tenant-admin')
  const member = await key('member')
  return { tenantId, tenantName: name, adminKey: admin.key, adminKeyId: admin.id, memberKey: member.key, memberKeyId: member.id }
}

export const test = base.extend<TestFixtures, WorkerFixtures>({
  ferry: [
    async ({}, use) => {
      const ferry = await new Ferry().start()
      await use(ferry)
      await ferry.stop()
    },
    { scope: 'worker' },
  ],
  consoleUrl: [
    async ({ ferry }, use) => {
      const served = await serveConsole(ferry)
      await use(served.url)
      await served.stop()
    },
    { scope: 'worker' },
  ],
  upstream: [
    async ({}, use) => {
      const upstream = await new MockUpstream().start()
      await use(upstream)
      await upstream.stop()
    },
    { scope: 'worker' },
  ],
  echoModel: [
    async ({ ferry, upstream }, use) => {
      const registered = await ferry.admin('POST', '/models', {
        id: ECHO_MODEL,
        deployments: [{ id: 'mock', upstream: { url: upstream.baseUrl, model: 'echo' } }],
        price: { input_per_mtok_usd: '1.00', output_per_mtok_usd: '2.00', per_call_usd: '0.0001' },
      })
      expect(registered.status).toBe(200)
      await use(ECHO_MODEL)
    },
    { scope: 'worker' },
  ],
  baseURL: async ({ consoleUrl }, use) => use(consoleUrl),
  world: async ({ ferry, echoModel }, use) => {
    expect(echoModel).toBe(ECHO_MODEL)
    await use(await makeTenant(ferry))
  },
  cspViolations: [
    async ({ page }, use) => {
      const violations: string[] = []
      page.on('console', (message) => {
        if (/Content Security Policy|Refused to (load|execute|apply)/i.test(message.text())) violations.push(message.text())
      })
      page.on('pageerror', (error) => {
        if (/Content Security Policy/i.test(error.message)) violations.push(error.message)
      })
      await use(violations)
      expect(violations, 'the page broke its Content-Security-Policy').toEqual([])
    },
    { auto: true },
  ],
})

export { expect }

/** Signs in through the console's form and waits for the signed-in frame. */
export async function signIn(page: Page, key: string, path = '/console/'): Promise<void> {
  await page.goto(path)
  await page.getByLabel('API key').fill(key)
  await page.getByRole('button', { name: 'Sign in', exact: true }).click()
  await expect(page.getByRole('button', { name: 'Sign out' })).toBeVisible()
}

/** The console's session as the browser's own fetch sees it (cookies and all). */
export async function sessionStatus(page: Page): Promise<number> {
  return page.evaluate(async () => (await fetch('/admin/v1/session', { credentials: 'same-origin' })).status)
}

/** A streamed chat call with a key, read to its end: what makes usage. */
export async function call(ferry: Ferry, key: string, content: string, model = ECHO_MODEL): Promise<void> {
  const response = await ferry.v1('POST', '/chat/completions', key, {
    model,
    messages: [{ role: 'user', content }],
    max_tokens: 16,
  })
  expect(response.status, await response.clone().text()).toBe(200)
  await response.text()
}
