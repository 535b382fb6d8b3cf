import { useMutation, useQuery, useQueryClient } from '@tanstack/react-query'
import { api, unwrap } from '../../api/client'
import type { CreateKey, KeyView } from '../../api/types'
import { useCursorPages } from '../../lib/useCursorPages'

export const keysKey = (tenantId: string) => ['keys', tenantId] as const

export function useKeys(tenantId: string) {
  return useCursorPages<KeyView>({
    queryKey: keysKey(tenantId),
    pageSize: 50,
    fetchPage: ({ limit, after, signal }) =>
      unwrap(
        api.GET('/admin/v1/tenants/{id}/keys', {
          params: { path: { id: tenantId }, query: { limit, ...(after ? { after } : {}) } },
          signal,
        }),
      ),
  })
}

/** The models the signed-in caller may use (`GET /v1/models`): what a new key may be given. */
export function useCallableModels() {
  return useQuery({
    queryKey: ['v1-models'],
    queryFn: ({ signal }) => unwrap(api.GET('/v1/models', { signal })),
    staleTime: 60_000,
  })
}

/**
 * Creates a key. The answer holds the secret: it is handed to the caller once and the
 * mutation forgets it at once (`gcTime: 0`, and `reset()` by the caller).
 */
export function useCreateKey(tenantId: string) {
  const client = useQueryClient()
  return useMutation({
    mutationFn: (body: CreateKey) => unwrap(api.POST('/admin/v1/tenants/{id}/keys', { params: { path: { id: tenantId } }, body })),
    gcTime: 0,
    onSuccess: () => client.invalidateQueries({ queryKey: keysKey(tenantId) }),
  })
}

export function useRevokeKey(tenantId: string) {
  const client = useQueryClient()
  return useMutation({
    mutationFn: (keyId: string) => unwrap(api.DELETE('/admin/v1/keys/{id}', { params: { path: { id: keyId } } })),
    onSuccess: () => client.invalidateQueries({ queryKey: keysKey(tenantId) }),
  })
}
