import { QueryClient, QueryClientProvider } from '@tanstack/react-query'
import { act, renderHook, waitFor } from '@testing-library/react'
import type { ReactNode } from 'react'
import { describe, expect, it, vi } from 'vitest'
import { useCursorPages, type CursorPage, type PageRequest } from './useCursorPages'

/** A server with `total` items, paged by an opaque cursor. */
function server(total: number) {
  const items = Array.from({ length: total }, (_, index) => `item-${index}`)
  return vi.fn(async ({ limit, after }: PageRequest): Promise<CursorPage<string>> => {
    const start = after ? Number(after.replace('c', '')) : 0
    const data = items.slice(start, start + limit)
    const next = start + limit
    return { data, has_more: next < total, next_cursor: next < total ? `c${next}` : null }
  })
}

function wrapper() {
  const client = new QueryClient({ defaultOptions: { queries: { retry: false } } })
  return ({ children }: { children: ReactNode }) => <QueryClientProvider client={client}>{children}</QueryClientProvider>
}

describe('useCursorPages', () => {
  it('fetches the first page only, then one page per loadMore, following the cursor', async () => {
    const fetchPage = server(5)
    const { result } = renderHook(() => useCursorPages({ queryKey: ['things'], fetchPage, pageSize: 2 }), { wrapper: wrapper() })
    await waitFor(() => expect(result.current.items).toEqual(['item-0', 'item-1']))
    expect(fetchPage).toHaveBeenCalledTimes(1)
    expect(fetchPage.mock.calls[0]?.[0]).toMatchObject({ limit: 2 })
    expect(fetchPage.mock.calls[0]?.[0].after).toBeUndefined()
    expect(result.current.hasMore).toBe(true)

    act(() => result.current.loadMore())
    await waitFor(() => expect(result.current.items).toHaveLength(4))
    expect(fetchPage.mock.calls[1]?.[0]).toMatchObject({ limit: 2, after: 'c2' })

    act(() => result.current.loadMore())
    await waitFor(() => expect(result.current.items).toHaveLength(5))
    expect(result.current.hasMore).toBe(false)
    expect(fetchPage).toHaveBeenCalledTimes(3)

    act(() => result.current.loadMore())
    await new Promise((resolve) => setTimeout(resolve, 20))
    expect(fetchPage).toHaveBeenCalledTimes(3)
  })

  it('stops on has_more false even with a cursor, and on a missing cursor', async () => {
    const fetchPage = vi.fn(async (): Promise<CursorPage<number>> => ({ data: [1], has_more: false, next_cursor: 'x' }))
    const { result } = renderHook(() => useCursorPages({ queryKey: ['one'], fetchPage }), { wrapper: wrapper() })
    await waitFor(() => expect(result.current.items).toEqual([1]))
    expect(result.current.hasMore).toBe(false)
    const noCursor = vi.fn(async (): Promise<CursorPage<number>> => ({ data: [1], has_more: true, next_cursor: null }))
    const second = renderHook(() => useCursorPages({ queryKey: ['two'], fetchPage: noCursor }), { wrapper: wrapper() })
    await waitFor(() => expect(second.result.current.items).toEqual([1]))
    expect(second.result.current.hasMore).toBe(false)
  })

  it('starts over from the first page when its key changes (a new search)', async () => {
    const fetchPage = server(3)
    const { result, rerender } = renderHook(({ q }) => useCursorPages({ queryKey: ['search', q], fetchPage, pageSize: 1 }), {
      wrapper: wrapper(),
      initialProps: { q: 'a' },
    })
    await waitFor(() => expect(result.current.items).toHaveLength(1))
    act(() => result.current.loadMore())
    await waitFor(() => expect(result.current.items).toHaveLength(2))
    rerender({ q: 'b' })
    await waitFor(() => expect(result.current.items).toEqual(['item-0']))
    expect(fetchPage.mock.calls.at(-1)?.[0].after).toBeUndefined()
  })

  it('does not fetch while disabled', async () => {
    const fetchPage = server(3)
    renderHook(() => useCursorPages({ queryKey: ['off'], fetchPage, enabled: false }), { wrapper: wrapper() })
    await new Promise((resolve) => setTimeout(resolve, 20))
    expect(fetchPage).not.toHaveBeenCalled()
  })
})
