import { useMutation, useQueryClient } from '@tanstack/react-query'
import { api, unwrap } from '../../api/client'
import type { CreateTenant, CreditRequest, Tenant, UpdateTenant } from '../../api/types'
import { useCursorPages } from '../../lib/useCursorPages'
import { ledgerKey } from '../billing/queries'
import { tenantKey } from '../overview/queries'

export function useTenants(search: string) {
  return useCursorPages<Tenant>({
    queryKey: ['tenants', search],
    pageSize: 50,
    fetchPage: ({ limit, after, signal }) =>
      unwrap(
        api.GET('/admin/v1/tenants', {
          params: { query: { limit, ...(search ? { q: search } : {}), ...(after ? { after } : {}) } },
          signal,
        }),
      ),
  })
}

export function useCreateTenant() {
  const client = useQueryClient()
  return useMutation({
    mutationFn: (body: CreateTenant) => unwrap(api.POST('/admin/v1/tenants', { body })),
    onSuccess: () => client.invalidateQueries({ queryKey: ['tenants'] }),
  })
}

export function useUpdateTenant(tenantId: string) {
  const client = useQueryClient()
  return useMutation({
    mutationFn: (body: UpdateTenant) => unwrap(api.PATCH('/admin/v1/tenants/{id}', { params: { path: { id: tenantId } }, body })),
    onSuccess: (tenant) => client.setQueryData(tenantKey(tenantId), tenant),
  })
}

export type PostingKind = 'top_up' | 'refund' | 'adjustment'

const postingPath = {
  top_up: '/admin/v1/tenants/{id}/credits',
  refund: '/admin/v1/tenants/{id}/refunds',
  adjustment: '/admin/v1/tenants/{id}/adjustments',
} as const

export function usePosting(tenantId: string, kind: PostingKind) {
  const client = useQueryClient()
  return useMutation({
    mutationFn: (body: CreditRequest) => unwrap(api.POST(postingPath[kind], { params: { path: { id: tenantId } }, body })),
    onSuccess: () => {
      void client.invalidateQueries({ queryKey: tenantKey(tenantId) })
      void client.invalidateQueries({ queryKey: ledgerKey(tenantId) })
    },
  })
}
