// Loading, errors and notices, announced to assistive technology.

import type { ReactNode } from 'react'
import { ApiError } from '../api/errors'
import { useI18n, type I18n } from '../i18n'
import { Button } from './Button'

export function Loading({ label }: { label?: string }) {
  const { t } = useI18n()
  return (
    <p role="status" className="loading">
      {label ?? t('common.loading')}
    </p>
  )
}

/** What went wrong, in the reader's language; the server's own (English) words below. */
export function describeError(error: unknown, { t }: Pick<I18n, 't'>): string {
  if (!(error instanceof ApiError)) return t('error.network')
  const { status, message } = error
  if (status === 400 || status === 422) return t('error.400', { message })
  if (status === 401) return t('error.401')
  if (status === 402) return t('error.402', { message })
  if (status === 403) return t('error.403')
  if (status === 404) return t('error.404')
  if (status === 409) return t('error.409', { message })
  if (status === 429) return t('error.429')
  if (status >= 500) return t('error.5xx', { status })
  return t('error.other', { status, message })
}

export function ErrorNotice({ error, onRetry }: { error: unknown; onRetry?: () => void }) {
  const i18n = useI18n()
  const serverMessage = error instanceof ApiError && ![400, 402, 409, 422].includes(error.status) ? error.message : null
  return (
    <div role="alert" className="notice notice-error">
      <p>{describeError(error, i18n)}</p>
      {serverMessage ? (
        <p className="muted">
          {i18n.t('error.details')}: <span lang="en">{serverMessage}</span>
        </p>
      ) : null}
      {onRetry ? (
        <p>
          <Button small onClick={onRetry}>
            {i18n.t('common.retry')}
          </Button>
        </p>
      ) : null}
    </div>
  )
}

export function Notice({ tone = 'info', children }: { tone?: 'info' | 'ok' | 'warn'; children: ReactNode }) {
  return (
    <div role="status" className={`notice ${tone === 'info' ? '' : `notice-${tone}`}`}>
      {children}
    </div>
  )
}

export function Badge({ tone, children }: { tone?: 'ok' | 'danger' | 'warn'; children: ReactNode }) {
  return <span className={`badge ${tone ? `badge-${tone}` : ''}`}>{children}</span>
}
