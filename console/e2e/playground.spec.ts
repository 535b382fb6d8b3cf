import { Ferry, LOCAL_CHAT_MODEL, modelPulled, modelRequired, PULL_HINT } from './ferry'
import { ECHO_MODEL, expect, serveConsole, signIn, test } from './fixtures'

test('the playground streams an answer through the session and reports the call', async ({ page, world }) => {
  await signIn(page, world.adminKey, '/console/playground')
  await page.getByLabel('Model').selectOption(ECHO_MODEL)
  await page.getByLabel('Your message').fill('hello there streaming world')
  const streamed = page.waitForResponse((response) => response.url().endsWith('/v1/chat/completions'))
  await page.getByRole('button', { name: 'Send' }).click()
  const response = await streamed
  expect(response.request().headers()['x-ferry-csrf']).toBeTruthy()
  expect(response.request().headers()['authorization']).toBeUndefined()
  await expect(page.getByText('The answer is complete.')).toBeVisible()
  await expect(page.getByRole('list', { name: 'Conversation' })).toContainText('You said: hello there streaming world')
  const last = page.getByRole('region', { name: 'Last call' })
  await expect(last.getByText('Prompt tokens', { exact: true })).toBeVisible()
  await expect(last).toContainText('$0.0001')
  await expect(last).toContainText('Time to first token')
  await expect(last).toContainText(/Response cache(Hit|Miss|Not used)/)
})

// The real local model, pulled beforehand (`ferry models pull`, as CI does). Without it these
// are skipped, unless CI or FERRY_REQUIRE_MODEL=1 says the model must be there: then they fail.
test.describe('with the real local model', () => {
  test.skip(!modelPulled() && !modelRequired(), PULL_HINT)
  test.setTimeout(600_000)

  test('the playground streams tokens from SmolLM2 as they are generated', async ({ page }) => {
    expect(modelPulled(), PULL_HINT).toBe(true)
    const ferry = await new Ferry().start({ localModels: true, startTimeoutMs: 600_000 })
    const served = await serveConsole(ferry)
    try {
      await signIn(page, ferry.operatorKey, `${served.url}/console/playground`)
      await page.getByLabel('Model').selectOption(LOCAL_CHAT_MODEL)
      await page.getByLabel('Your message').fill('What is the capital of France?')
      // Every text the answer shows while it streams: a fast answer can be over before a
      // poll would see it, so the page itself records each step.
      await page.evaluate(() => {
        const seen: string[] = []
        Object.assign(window, { streamedTexts: seen })
        new MutationObserver(() => {
          const text = document.querySelector('[data-testid="streaming-answer"]')?.textContent ?? ''
          if (text && seen[seen.length - 1] !== text) seen.push(text)
        }).observe(document.body, { subtree: true, childList: true, characterData: true })
      })
      await page.getByRole('button', { name: 'Send' }).click()
      await expect(page.getByText('The answer is complete.')).toBeVisible({ timeout: 300_000 })
      // Tokens appeared one after another while the stream was open, not all at the end.
      const streamed = await page.evaluate(() => (window as unknown as { streamedTexts: string[] }).streamedTexts)
      expect(streamed.length, `the answer as it grew: ${JSON.stringify(streamed)}`).toBeGreaterThan(1)
      await expect(page.getByRole('list', { name: 'Conversation' })).toContainText('Paris')
      const last = page.getByRole('region', { name: 'Last call' })
      await expect(last).toContainText('Completion tokens')
    } finally {
      await served.stop()
      await ferry.stop()
    }
  })
})
