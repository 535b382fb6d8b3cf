import { useQuery } from '@tanstack/react-query'
import { api, unwrap } from '../../api/client'
import type { KeySpend, UsageRecord } from '../../api/types'
import { useCursorPages } from '../../lib/useCursorPages'

export type GroupBy = '' | 'day' | 'model' | 'key' | 'day,model' | 'day,key'

export interface Range {
  from: string
  to: string
}

/** Only one key's usage (`key_…`), or every key's the caller may see. */
export type KeyFilter = string | null

const onlyKey = (key: KeyFilter) => (key ? { key } : {})

/** The spend report: the server sums from its rollups; the console never adds up events. */
export function useUsageReport(tenantId: string, range: Range, groupBy: GroupBy, key: KeyFilter = null, enabled = true) {
  return useQuery({
    queryKey: ['usage', tenantId, range.from, range.to, groupBy, key],
    queryFn: ({ signal }) =>
      unwrap(
        api.GET('/admin/v1/tenants/{id}/usage', {
          params: {
            path: { id: tenantId },
            query: { from: range.from, to: range.to, ...(groupBy ? { group_by: groupBy } : {}), ...onlyKey(key) },
          },
          signal,
        }),
      ),
    enabled,
  })
}

/** The calls themselves, oldest first, a page at a time. */
export function useUsageEvents(tenantId: string, range: Range, key: KeyFilter = null) {
  return useCursorPages<UsageRecord>({
    queryKey: ['usage-events', tenantId, range.from, range.to, key],
    pageSize: 50,
    fetchPage: ({ limit, after, signal }) =>
      unwrap(
        api.GET('/admin/v1/tenants/{id}/usage/events', {
          params: { path: { id: tenantId }, query: { from: range.from, to: range.to, limit, ...(after ? { after } : {}), ...onlyKey(key) } },
          signal,
        }),
      ),
  })
}

/**
 * Spend by key over one UTC month (`YYYY-MM`), dearest first, a page at a time: the server
 * keeps it per month, so this stays quick however many keys a tenant has.
 */
export function useKeySpend(tenantId: string, month: string, enabled = true) {
  return useCursorPages<KeySpend>({
    queryKey: ['usage-keys', tenantId, month],
    pageSize: 50,
    enabled,
    fetchPage: ({ limit, after, signal }) =>
      unwrap(
        api.GET('/admin/v1/tenants/{id}/usage/keys', {
          params: { path: { id: tenantId }, query: { month, limit, ...(after ? { after } : {}) } },
          signal,
        }),
      ),
  })
}
