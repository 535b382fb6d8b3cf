// Sign-in: a key, exchanged once for an HttpOnly session cookie (the key is cleared from the
// form at once and kept nowhere), or single sign-on through the OpenID provider (a
// navigation; a failure comes back as `?signin_error=<code>`, shown here in words).

import { useEffect, useRef, useState, type FormEvent } from 'react'
import { isStatus } from '../../api/errors'
import { useSignIn, useSignInMethods } from '../../api/session'
import { Button } from '../../components/Button'
import { TextField } from '../../components/Field'
import { Preferences } from '../../components/Preferences'
import { ErrorNotice } from '../../components/Status'
import { useI18n } from '../../i18n'
import { clearSignInError, readSignInError, showableCode, signInErrorKey } from './signinError'

/** Where the browser goes for single sign-on: a navigation, not a fetch. */
export const OIDC_PATH = '/admin/v1/session/oidc'

function SsoError({ code }: { code: string }) {
  const { t } = useI18n()
  const shown = showableCode(code)
  return (
    <div role="alert" className="notice notice-error">
      <p>{t(signInErrorKey(code))}</p>
      {shown ? (
        <p className="muted">
          {t('signin.errorCode')}: <code>{shown}</code>
        </p>
      ) : null}
    </div>
  )
}

export function SignInPage() {
  const { t } = useI18n()
  const methods = useSignInMethods()
  const signIn = useSignIn()
  const [missing, setMissing] = useState(false)
  const input = useRef<HTMLInputElement>(null)
  const [ssoError, setSsoError] = useState(readSignInError)

  useEffect(() => {
    document.title = `${t('signin.title')} · ${t('app.name')}`
  }, [t])

  const submit = (event: FormEvent<HTMLFormElement>) => {
    event.preventDefault()
    const field = input.current
    const key = field?.value.trim() ?? ''
    // The key leaves the form now: it lives only in this one request.
    if (field) field.value = ''
    if (!key) {
      setMissing(true)
      field?.focus()
      return
    }
    setMissing(false)
    clearSignInError()
    setSsoError(null)
    signIn.signIn(key, { onError: () => input.current?.focus() })
  }

  const badKey = signIn.isError && isStatus(signIn.error, 400, 401, 403)
  return (
    <main id="main" className="signin">
      <div className="signin-card">
        <div className="header-controls">
          <Preferences />
        </div>
        <h1>{t('signin.title')}</h1>
        <p className="muted">{t('signin.intro')}</p>
        {ssoError !== null ? <SsoError code={ssoError} /> : null}
        <form onSubmit={submit} noValidate>
          <TextField
            ref={input}
            label={t('signin.key')}
            hint={t('signin.keyHint')}
            error={missing ? t('signin.needKey') : badKey ? t('signin.badKey') : undefined}
            name="key"
            type="password"
            autoComplete="off"
            spellCheck={false}
            autoCapitalize="off"
            required
          />
          {signIn.isError && !badKey ? <ErrorNotice error={signIn.error} /> : null}
          <Button type="submit" variant="primary" busy={signIn.isPending}>
            {signIn.isPending ? t('signin.submitting') : t('signin.submit')}
          </Button>
        </form>
        {methods.data?.oidc ? (
          <>
            <p className="or">{t('signin.or')}</p>
            <p>
              <a className="btn" href={OIDC_PATH}>
                {t('signin.sso')}
              </a>
            </p>
          </>
        ) : null}
      </div>
    </main>
  )
}
