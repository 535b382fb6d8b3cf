// One read of `/metrics` (OpenMetrics text) with the session, as the health and pool pages
// poll it.

import { rawFetch } from '../api/client'
import { errorFrom } from '../api/errors'
import { parseMetrics, type Scrape } from './metrics'

export async function scrapeMetrics(signal: AbortSignal): Promise<Scrape> {
  const response = await rawFetch('/metrics', { signal, headers: { accept: 'application/openmetrics-text, text/plain' } })
  const text = await response.text()
  if (!response.ok) {
    let body: unknown = text
    try {
      body = JSON.parse(text)
    } catch {
      // Not JSON: the text itself says what went wrong.
    }
    throw errorFrom(response.status, body)
  }
  return { atMs: Date.now(), samples: parseMetrics(text) }
}
