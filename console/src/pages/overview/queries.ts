import { useQuery } from '@tanstack/react-query'
import { api, unwrap } from '../../api/client'

export const tenantKey = (tenantId: string) => ['tenant', tenantId] as const

export function useTenant(tenantId: string, enabled = true) {
  return useQuery({
    queryKey: tenantKey(tenantId),
    queryFn: ({ signal }) => unwrap(api.GET('/admin/v1/tenants/{id}', { params: { path: { id: tenantId } }, signal })),
    enabled,
  })
}

export function useAlerts(tenantId: string, enabled = true) {
  return useQuery({
    queryKey: ['alerts', tenantId],
    queryFn: ({ signal }) => unwrap(api.GET('/admin/v1/tenants/{id}/alerts', { params: { path: { id: tenantId } }, signal })),
    enabled,
  })
}
