import { QueryClient } from '@tanstack/react-query'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { api, CSRF_HEADER, rawFetch, sessionQueryKey, setSessionCache, unwrap } from './client'
import { ApiError } from './errors'

const json = (status: number, body: unknown) =>
  new Response(status === 204 ? null : JSON.stringify(body), { status, headers: { 'content-type': 'application/json' } })

describe('the API client', () => {
  let cache: QueryClient
  let seen: Request[]

  beforeEach(() => {
    cache = new QueryClient()
    setSessionCache(cache)
    cache.setQueryData(sessionQueryKey, { csrf_token: 'token-1', role: 'tenant-admin' })
    seen = []
    vi.stubGlobal(
      'fetch',
      vi.fn(async (input: RequestInfo, init?: RequestInit) => {
        const request = input instanceof Request ? input : new Request(new URL(String(input), location.origin), init)
        seen.push(request)
        if (request.url.endsWith('/expired')) return json(401, { error: { message: 'no session' } })
        return json(200, { object: 'list', data: [], has_more: false, next_cursor: null })
      }),
    )
  })

  afterEach(() => vi.unstubAllGlobals())

  it('sends the CSRF token and JSON with every call that changes something', async () => {
    await api.POST('/admin/v1/tenants/{id}/keys', { params: { path: { id: 't' } }, body: { name: 'k', role: 'member' } })
    await api.DELETE('/admin/v1/keys/{id}', { params: { path: { id: 'key_x' } } })
    await api.PATCH('/admin/v1/tenants/{id}', { params: { path: { id: 't' } }, body: { limits: { rpm: 1 } } })
    for (const request of seen) expect(request.headers.get(CSRF_HEADER), request.method).toBe('token-1')
    expect(seen[0]?.headers.get('content-type')).toBe('application/json')
    expect(seen.every((request) => request.credentials === 'same-origin')).toBe(true)
  })

  it('sends no token with a GET, and never an Authorization header', async () => {
    await api.GET('/admin/v1/tenants/{id}', { params: { path: { id: 't' } } })
    expect(seen[0]?.headers.get(CSRF_HEADER)).toBeNull()
    expect(seen[0]?.headers.get('authorization')).toBeNull()
  })

  it('does the same for calls outside the typed paths', async () => {
    await rawFetch('/v1/anything', { method: 'POST', body: '{}' })
    expect(seen[0]?.headers.get(CSRF_HEADER)).toBe('token-1')
    expect(seen[0]?.headers.get('content-type')).toBe('application/json')
  })

  it('takes a 401 as the end of the session', async () => {
    await rawFetch('/admin/v1/expired')
    expect(cache.getQueryData(sessionQueryKey)).toBeNull()
  })

  it('throws the API error of a failed answer', async () => {
    const failing = Promise.resolve({ error: { error: { message: 'nope', type: 'invalid_request_error', param: 'name', code: null } }, response: json(400, {}) })
    const error = await unwrap(failing).catch((caught: unknown) => caught)
    expect(error).toBeInstanceOf(ApiError)
    expect(error).toMatchObject({ status: 400, message: 'nope', param: 'name' })
  })
})
