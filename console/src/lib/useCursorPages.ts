// Cursor-paginated lists (`?limit=&after=` → `{data, has_more, next_cursor}`): the first page
// at once, each next page only when asked for. Never every page.

import { useInfiniteQuery, type QueryKey } from '@tanstack/react-query'
import { useMemo } from 'react'

export interface CursorPage<Item> {
  data: Item[]
  has_more: boolean
  next_cursor?: string | null
}

export interface PageRequest {
  limit: number
  after?: string
  signal: AbortSignal
}

export interface CursorPagesOptions<Item> {
  queryKey: QueryKey
  fetchPage: (request: PageRequest) => Promise<CursorPage<Item>>
  pageSize?: number
  enabled?: boolean
}

export function useCursorPages<Item>({ queryKey, fetchPage, pageSize = 50, enabled = true }: CursorPagesOptions<Item>) {
  const query = useInfiniteQuery({
    queryKey: [...queryKey, { pageSize }],
    queryFn: ({ pageParam, signal }) =>
      fetchPage({ limit: pageSize, signal, ...(pageParam ? { after: pageParam } : {}) }),
    initialPageParam: null as string | null,
    getNextPageParam: (last: CursorPage<Item>) => (last.has_more && last.next_cursor ? last.next_cursor : undefined),
    enabled,
  })
  const items = useMemo(() => query.data?.pages.flatMap((page) => page.data) ?? [], [query.data])
  const { hasNextPage, isFetchingNextPage, fetchNextPage } = query
  return {
    query,
    items,
    hasMore: hasNextPage,
    loadingMore: isFetchingNextPage,
    loadMore: () => {
      if (hasNextPage && !isFetchingNextPage) void fetchNextPage()
    },
  }
}
