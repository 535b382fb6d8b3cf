// Why a single sign-on did not complete: the server sends the browser back to
// `/console/?signin_error=<code>`. The code is taken off the address at once (a reload or a
// shared link does not show it again) and kept here for the sign-in page.

import type { MessageKey } from '../../i18n'

const PARAM = 'signin_error'
let pending: string | null = null

/** Takes `?signin_error=` off the address, if there; the code the sign-in page should show. */
export function readSignInError(): string | null {
  if (typeof window === 'undefined') return pending
  const url = new URL(window.location.href)
  const code = url.searchParams.get(PARAM)
  if (code !== null) {
    pending = code
    url.searchParams.delete(PARAM)
    window.history.replaceState(window.history.state, '', `${url.pathname}${url.search}${url.hash}`)
  }
  return pending
}

/** Forgets it: a new sign-in began, or one succeeded. */
export function clearSignInError(): void {
  pending = null
}

const KNOWN: Record<string, MessageKey> = {
  oidc_declined: 'signin.error.oidc_declined',
  oidc_sign_in_failed: 'signin.error.oidc_sign_in_failed',
  invalid_token: 'signin.error.invalid_token',
  oidc_not_configured: 'signin.error.oidc_not_configured',
}

/** The message for a code; any code not known here gets the general one. */
export function signInErrorKey(code: string): MessageKey {
  return Object.hasOwn(KNOWN, code) ? (KNOWN[code] as MessageKey) : 'signin.error.other'
}

/** Only a code that looks like one is shown as it is (the address is anyone's to write). */
export function showableCode(code: string): string | null {
  return /^[a-z0-9_]{1,64}$/.test(code) ? code : null
}
