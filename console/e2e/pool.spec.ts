// The operator's GPU pool page: a Ferry without local models has no pool (a plain note); one
// with the real local model shows its deployment, the replica a call started (a cold start,
// read from /metrics) and takes a pre-warm.

import AxeBuilder from '@axe-core/playwright'
import { Ferry, LOCAL_CHAT_MODEL, modelPulled, modelRequired, PULL_HINT } from './ferry'
import { expect, serveConsole, signIn, test } from './fixtures'

test('a Ferry without local models says it has no pool', async ({ page, ferry }) => {
  const answer = await ferry.admin<{ error: { code: string } }>('GET', '/pool')
  expect(answer.status).toBe(404)
  expect(answer.body.error.code).toBe('no_pool')
  await signIn(page, ferry.operatorKey, '/console/pool')
  await expect(page.getByRole('heading', { level: 1, name: 'GPU pool' })).toBeVisible()
  await expect(page.getByText('This Ferry runs no GPU pool')).toBeVisible()
  await expect(page.getByRole('alert')).toHaveCount(0)
})

test.describe('with the real local model', () => {
  test.skip(!modelPulled() && !modelRequired(), PULL_HINT)
  test.setTimeout(600_000)

  test('the pool shows the replica a call started, its cold start, and takes a pre-warm', async ({ page }) => {
    expect(modelPulled(), PULL_HINT).toBe(true)
    const ferry = await new Ferry().start({ localModels: true, startTimeoutMs: 600_000 })
    const served = await serveConsole(ferry)
    try {
      // The first call finds no replica and waits for one: a cold start.
      const answer = await ferry.v1('POST', '/chat/completions', ferry.operatorKey, {
        model: LOCAL_CHAT_MODEL,
        messages: [{ role: 'user', content: 'Say hello.' }],
        max_tokens: 4,
      })
      expect(answer.status, await answer.clone().text()).toBe(200)
      await answer.text()

      await signIn(page, ferry.operatorKey, `${served.url}/console/pool`)
      const deployments = page.getByRole('region', { name: 'Deployments' })
      const local = deployments.getByRole('row', { name: /^local/ })
      await expect(local).toContainText('1 ready')
      // Cold starts, then the mean cold start: a count and a duration.
      await expect(local.getByRole('cell').nth(3)).toHaveText('1')
      await expect(local.getByRole('cell').nth(4)).toHaveText(/\d+(\.\d+)? m?s/)
      const replicas = page.getByRole('region', { name: 'Replicas of local' })
      await expect(replicas.getByRole('row')).toHaveCount(2)
      await expect(replicas.getByRole('row').nth(1)).toContainText('ready')
      await expect(replicas.getByRole('row').nth(1)).toContainText('http://127.0.0.1:')
      const axe = await new AxeBuilder({ page }).withTags(['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']).analyze()
      expect(axe.violations.filter((violation) => violation.impact === 'serious' || violation.impact === 'critical').map((violation) => violation.id)).toEqual([])

      await local.getByRole('button', { name: 'Pre-warm local' }).click()
      const dialog = page.getByRole('dialog', { name: 'Pre-warm local' })
      await dialog.getByLabel('Replicas to keep ready').fill('0')
      await dialog.getByRole('button', { name: 'Pre-warm' }).click()
      await expect(dialog.getByText('Enter a whole number from 1 to 1,000.')).toBeVisible()
      await dialog.getByLabel('Replicas to keep ready').fill('1')
      await dialog.getByLabel('For how long (seconds)').fill('60')
      const sent = page.waitForRequest((request) => request.url().endsWith('/admin/v1/pool/local/prewarm'))
      await dialog.getByRole('button', { name: 'Pre-warm' }).click()
      const request = await sent
      expect(request.postDataJSON()).toEqual({ replicas: 1, seconds: 60 })
      expect(request.headers()['x-ferry-csrf']).toBeTruthy()
      expect((await request.response())?.status()).toBe(202)
      await expect(deployments.getByText('Asked local to keep 1 ready for 60 s.')).toBeVisible()
      await expect(dialog).toHaveCount(0)
    } finally {
      await served.stop()
      await ferry.stop()
    }
  })
})
