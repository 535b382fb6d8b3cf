// The console's session: a cookie the browser holds (HttpOnly, never readable here) and the
// session's description, kept in the query cache like all server state.

import { useMutation, useQuery, useQueryClient, type QueryClient } from '@tanstack/react-query'
import { useRef } from 'react'
import { api, sessionQueryKey, unwrap } from './client'
import { errorFrom, isStatus } from './errors'
import type { Session } from './types'

export type Role = Session['role']

export function useSession() {
  return useQuery({
    queryKey: sessionQueryKey,
    queryFn: async ({ signal }): Promise<Session | null> => {
      const { data, error, response } = await api.GET('/admin/v1/session', { signal })
      if (response.status === 401) return null
      if (!response.ok || !data) throw errorFrom(response.status, error)
      return data
    },
    staleTime: 60_000,
  })
}

export function useSignInMethods() {
  return useQuery({
    queryKey: ['session', 'methods'],
    queryFn: ({ signal }) => unwrap(api.GET('/admin/v1/session/methods', { signal })),
    staleTime: Number.POSITIVE_INFINITY,
  })
}

/** Drops every cached answer but the session's: they were someone else's to see. */
function forgetServerState(client: QueryClient): void {
  client.removeQueries({ predicate: (query) => query.queryKey[0] !== sessionQueryKey[0] })
}

/**
 * Exchanges a key for a session. The key goes in this one request body and nowhere else: not
 * in the mutation's variables (which the query cache would keep), not in any state.
 */
export function useSignIn() {
  const client = useQueryClient()
  const handed = useRef<string | null>(null)
  const mutation = useMutation({
    mutationFn: () => {
      const key = handed.current ?? ''
      handed.current = null
      return unwrap(api.POST('/admin/v1/session', { body: { key } }))
    },
    gcTime: 0,
    onSuccess: (session) => {
      forgetServerState(client)
      client.setQueryData(sessionQueryKey, session)
    },
  })
  const signIn = (key: string, options?: { onError?: () => void }) => {
    handed.current = key
    mutation.mutate(undefined, options)
  }
  return { ...mutation, signIn }
}

function signedOut(client: QueryClient): void {
  forgetServerState(client)
  client.setQueryData(sessionQueryKey, null)
}

export function useSignOut() {
  const client = useQueryClient()
  return useMutation({
    mutationFn: () => unwrap(api.DELETE('/admin/v1/session')),
    onSuccess: () => signedOut(client),
    // A session that had already ended is as good as signed out.
    onError: (error) => {
      if (isStatus(error, 401)) signedOut(client)
    },
  })
}

export const isOperator = (session: Session) => session.role === 'operator'
export const mayAdministerTenant = (session: Session) => session.role === 'operator' || session.role === 'tenant-admin'

/** Who is signed in, in a few words: the subject for OIDC, else the key id. */
export function identityOf(session: Session): string {
  return session.subject ?? session.key_id ?? session.tenant_id ?? session.role
}
