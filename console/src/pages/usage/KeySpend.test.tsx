import { QueryClient, QueryClientProvider } from '@tanstack/react-query'
import { cleanup, fireEvent, render, screen, waitFor } from '@testing-library/react'
import { afterEach, describe, expect, it, vi } from 'vitest'
import { setSessionCache } from '../../api/client'
import { I18nProvider, useI18n } from '../../i18n'
import { thisMonthUtc } from '../../lib/dates'
import { KeySpendSection } from './KeySpend'

const row = (key: string | null, cost: string) => ({ key_id: key, requests: 1, prompt_tokens: 2, cached_tokens: 0, completion_tokens: 3, cost_usd: cost })

function Section({ onChoose }: { onChoose: (key: string | null | undefined) => void }) {
  const i18n = useI18n()
  return <KeySpendSection tenantId="ten_1" chosen={null} onChoose={(spend) => onChoose(spend.key_id)} i18n={i18n} />
}

describe('spend by key', () => {
  afterEach(() => {
    cleanup()
    vi.unstubAllGlobals()
  })

  it('asks for one month a page at a time, and for another month when chosen', async () => {
    const asked: URL[] = []
    vi.stubGlobal(
      'fetch',
      vi.fn(async (request: Request) => {
        const url = new URL(request.url)
        asked.push(url)
        const page = url.searchParams.get('after')
          ? { object: 'list', data: [row(null, '0.10')], has_more: false, next_cursor: null }
          : { object: 'list', data: [row('key_b', '2.00'), row('key_a', '1.00')], has_more: true, next_cursor: 'cur1' }
        return new Response(JSON.stringify(page), { status: 200, headers: { 'content-type': 'application/json' } })
      }),
    )
    const client = new QueryClient({ defaultOptions: { queries: { retry: false } } })
    setSessionCache(client)
    const chosen = vi.fn()
    render(
      <QueryClientProvider client={client}>
        <I18nProvider initial="en">
          <Section onChoose={chosen} />
        </I18nProvider>
      </QueryClientProvider>,
    )
    await screen.findByText('key_b')
    expect(asked).toHaveLength(1)
    expect(asked[0]?.pathname).toBe('/admin/v1/tenants/ten_1/usage/keys')
    expect(Object.fromEntries(asked[0]?.searchParams ?? [])).toEqual({ month: thisMonthUtc(), limit: '50' })
    const rows = screen.getAllByRole('row').slice(1).map((tr) => tr.textContent)
    expect(rows[0]).toContain('key_b')
    expect(rows[1]).toContain('key_a')

    fireEvent.click(screen.getByRole('button', { name: 'Load more' }))
    await screen.findByText('(no key)')
    expect(asked[1]?.searchParams.get('after')).toBe('cur1')
    expect(screen.queryByRole('button', { name: 'Load more' })).toBeNull()

    fireEvent.click(screen.getByRole('button', { name: 'Show only the usage of key_a' }))
    expect(chosen).toHaveBeenCalledWith('key_a')

    fireEvent.change(screen.getByLabelText('Month'), { target: { value: '2024-02' } })
    await waitFor(() => expect(asked.at(-1)?.searchParams.get('month')).toBe('2024-02'))
    expect(asked.at(-1)?.searchParams.get('after')).toBeNull()
    expect(screen.getByText(/Spend by key in February 2024/)).toBeTruthy()
  })
})
