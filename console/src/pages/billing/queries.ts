import { useQuery } from '@tanstack/react-query'
import { api, unwrap } from '../../api/client'
import type { Transaction } from '../../api/types'
import { useCursorPages } from '../../lib/useCursorPages'

export function useInvoices(tenantId: string) {
  return useQuery({
    queryKey: ['invoices', tenantId],
    queryFn: ({ signal }) => unwrap(api.GET('/admin/v1/tenants/{id}/invoices', { params: { path: { id: tenantId } }, signal })),
  })
}

export const ledgerKey = (tenantId: string) => ['ledger', tenantId] as const

export function useLedger(tenantId: string) {
  return useCursorPages<Transaction>({
    queryKey: ledgerKey(tenantId),
    pageSize: 50,
    fetchPage: ({ limit, after, signal }) =>
      unwrap(
        api.GET('/admin/v1/tenants/{id}/ledger', {
          params: { path: { id: tenantId }, query: { limit, ...(after ? { after } : {}) } },
          signal,
        }),
      ),
  })
}
