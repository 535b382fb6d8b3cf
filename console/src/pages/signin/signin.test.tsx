import { QueryClient, QueryClientProvider } from '@tanstack/react-query'
import { cleanup, fireEvent, render, screen, waitFor } from '@testing-library/react'
import { afterEach, describe, expect, it, vi } from 'vitest'
import { setSessionCache } from '../../api/client'
import { I18nProvider } from '../../i18n'
import { SignInPage } from './index'
import { clearSignInError } from './signinError'

const KEY = 'fy_aaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb'

describe('the sign-in page', () => {
  afterEach(() => {
    cleanup()
    clearSignInError()
    window.history.replaceState(null, '', '/')
    vi.unstubAllGlobals()
    localStorage.clear()
  })

  it('sends the key once, then keeps it nowhere', async () => {
    const bodies: string[] = []
    vi.stubGlobal(
      'fetch',
      vi.fn(async (request: Request) => {
        if (request.method === 'POST') bodies.push(await request.text())
        const path = new URL(request.url).pathname
        const body = path.endsWith('/methods') ? { key: true, oidc: true } : { error: { message: 'bad key', type: 'authentication_error' } }
        return new Response(JSON.stringify(body), { status: path.endsWith('/methods') ? 200 : 401, headers: { 'content-type': 'application/json' } })
      }),
    )
    const client = new QueryClient({ defaultOptions: { queries: { retry: false } } })
    setSessionCache(client)
    render(
      <QueryClientProvider client={client}>
        <I18nProvider initial="en">
          <SignInPage />
        </I18nProvider>
      </QueryClientProvider>,
    )
    const input = screen.getByLabelText<HTMLInputElement>('API key')
    fireEvent.change(input, { target: { value: KEY } })
    fireEvent.click(screen.getByRole('button', { name: 'Sign in' }))
    expect(input.value).toBe('')
    await screen.findByText(/That key was not accepted/)
    expect(bodies).toEqual([JSON.stringify({ key: KEY })])
    expect(await screen.findByRole('link', { name: 'Sign in with SSO' })).toHaveProperty('href', `${location.origin}/admin/v1/session/oidc`)
    // Nothing the client holds still has the key.
    const held = JSON.stringify([client.getQueryCache().getAll().map((query) => query.state), client.getMutationCache().getAll().map((mutation) => mutation.state)])
    expect(held).not.toContain(KEY.slice(3))
    expect(JSON.stringify({ ...localStorage })).not.toContain(KEY.slice(3))
    await waitFor(() => expect(document.activeElement).toBe(input))
  })

  function renderPage() {
    vi.stubGlobal(
      'fetch',
      vi.fn(async () => new Response(JSON.stringify({ key: true, oidc: true }), { status: 200, headers: { 'content-type': 'application/json' } })),
    )
    const client = new QueryClient({ defaultOptions: { queries: { retry: false } } })
    setSessionCache(client)
    render(
      <QueryClientProvider client={client}>
        <I18nProvider initial="en">
          <SignInPage />
        </I18nProvider>
      </QueryClientProvider>,
    )
  }

  it('shows why single sign-on failed, and takes the code off the address', () => {
    window.history.replaceState(null, '', '/console/?signin_error=oidc_declined&keep=1')
    renderPage()
    expect(screen.getByRole('alert').textContent).toContain('Single sign-on was cancelled at your identity provider.')
    expect(screen.getByRole('alert').textContent).toContain('oidc_declined')
    expect(`${location.pathname}${location.search}`).toBe('/console/?keep=1')
  })

  it('gives a general message for a code it does not know, and shows no text from the address', () => {
    window.history.replaceState(null, '', '/console/?signin_error=Call+555-0100+to+unlock')
    renderPage()
    const alert = screen.getByRole('alert')
    expect(alert.textContent).toContain('Single sign-on did not complete. Try again, or sign in with an API key.')
    expect(alert.textContent).not.toContain('555')
    expect(location.search).toBe('')
  })

  it('drops the message once a key sign-in begins', async () => {
    window.history.replaceState(null, '', '/console/?signin_error=something_new')
    renderPage()
    expect(screen.getByRole('alert').textContent).toContain('something_new')
    fireEvent.change(screen.getByLabelText('API key'), { target: { value: KEY } })
    fireEvent.click(screen.getByRole('button', { name: 'Sign in' }))
    await waitFor(() => expect(screen.queryByText(/Single sign-on did not complete/)).toBeNull())
  })
})
