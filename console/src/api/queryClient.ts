// The one TanStack Query client: all server state lives in its cache, nowhere else.

import { QueryClient } from '@tanstack/react-query'
import { ApiError } from './errors'

/** A failure worth retrying: the network, or the server's own trouble. */
function transient(error: unknown): boolean {
  return !(error instanceof ApiError) || error.status >= 500 || error.status === 429
}

export function makeQueryClient(): QueryClient {
  return new QueryClient({
    defaultOptions: {
      queries: {
        staleTime: 15_000,
        retry: (failures, error) => failures < 2 && transient(error),
        refetchOnWindowFocus: true,
      },
      mutations: { retry: false },
    },
  })
}

export const queryClient = makeQueryClient()
