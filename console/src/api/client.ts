// The API client, typed from the server's own OpenAPI document (`npm run gen:api`). Every call
// goes through here: same origin, the session cookie, and for anything that is not a GET the
// session's CSRF token in `x-ferry-csrf`.

import createClient, { type Middleware } from 'openapi-fetch'
import type { QueryClient } from '@tanstack/react-query'
import { errorFrom } from './errors'
import type { paths } from './schema'
import { queryClient as defaultQueryClient } from './queryClient'

/** The server's paths, generated from its OpenAPI document. */
export type Paths = paths

export const CSRF_HEADER = 'x-ferry-csrf'
export const SESSION_PATH = '/admin/v1/session'
export const sessionQueryKey = ['session'] as const

const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS'])

let sessionCache: QueryClient = defaultQueryClient

/** For tests: the query client whose session the requests take their CSRF token from. */
export function setSessionCache(client: QueryClient): void {
  sessionCache = client
}

function csrfToken(): string | undefined {
  return sessionCache.getQueryData<{ csrf_token?: string } | null>(sessionQueryKey)?.csrf_token
}

/** Adds what the server wants of a browser call to `headers`. */
export function addSessionHeaders(method: string, headers: Headers): void {
  if (SAFE_METHODS.has(method.toUpperCase())) return
  const token = csrfToken()
  if (token) headers.set(CSRF_HEADER, token)
}

/** A 401 anywhere but the session call itself means the session ended: show the sign-in. */
function noticeSignOut(url: string, status: number): void {
  if (status !== 401) return
  if (new URL(url, window.location.href).pathname.startsWith(SESSION_PATH)) return
  sessionCache.setQueryData(sessionQueryKey, null)
}

const session: Middleware = {
  onRequest({ request }) {
    addSessionHeaders(request.method, request.headers)
    return request
  },
  onResponse({ request, response }) {
    noticeSignOut(request.url, response.status)
    return response
  },
}

export const api = createClient<Paths>({
  // Same origin always; an absolute base because Request (outside a page) needs one.
  baseUrl: typeof location === 'undefined' ? '' : location.origin,
  credentials: 'same-origin',
  // Looked up per call, not captured once (tests replace it).
  fetch: (request) => globalThis.fetch(request),
})
api.use(session)

/** A call outside the typed paths (`/metrics`, streams), with the same headers and handling. */
export async function rawFetch(path: string, init: RequestInit = {}): Promise<Response> {
  const headers = new Headers(init.headers)
  addSessionHeaders(init.method ?? 'GET', headers)
  if (init.body && !headers.has('content-type')) headers.set('content-type', 'application/json')
  const response = await fetch(path, { ...init, headers, credentials: 'same-origin' })
  noticeSignOut(path, response.status)
  return response
}

interface Answer<T> {
  data?: T
  error?: unknown
  response: Response
}

/** The answer's data, or its error thrown (TanStack Query then shows it). */
export async function unwrap<T>(call: Promise<Answer<T>>): Promise<T> {
  const { data, error, response } = await call
  if (!response.ok || error !== undefined) throw errorFrom(response.status, error)
  return data as T
}
