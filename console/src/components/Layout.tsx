// The frame of every signed-in page: a skip link, the header (language, theme, who is signed
// in, sign out), the side navigation for the role, and the main landmark.

import { useEffect, useRef, type ReactNode } from 'react'
import { identityOf, isOperator, mayAdministerTenant, useSignOut } from '../api/session'
import type { Session } from '../api/types'
import { useI18n, type MessageKey } from '../i18n'
import { Link, useLocation } from '../lib/router'
import { Button } from './Button'
import { Preferences } from './Preferences'
import { ErrorNotice } from './Status'

interface NavItem {
  to: string
  label: MessageKey
}

function navFor(session: Session): { section: MessageKey; items: NavItem[] }[] {
  const tenant: NavItem[] = [
    { to: '/', label: 'nav.overview' },
    { to: '/usage', label: 'nav.usage' },
    ...(mayAdministerTenant(session)
      ? ([
          { to: '/keys', label: 'nav.keys' },
          { to: '/billing', label: 'nav.billing' },
        ] satisfies NavItem[])
      : []),
    { to: '/playground', label: 'nav.playground' },
  ]
  if (!isOperator(session)) return [{ section: 'layout.tenantSection', items: tenant }]
  return [
    {
      section: 'layout.operatorSection',
      items: [
        { to: '/tenants', label: 'nav.tenants' },
        { to: '/models', label: 'nav.models' },
        { to: '/pool', label: 'nav.pool' },
        { to: '/health', label: 'nav.health' },
        { to: '/playground', label: 'nav.playground' },
      ],
    },
  ]
}

function isCurrent(to: string, path: string): boolean {
  return to === '/' ? path === '/' : path === to || path.startsWith(`${to}/`)
}

export function Layout({ session, children }: { session: Session; children: ReactNode }) {
  const { t } = useI18n()
  const { path } = useLocation()
  const signOut = useSignOut()
  const main = useRef<HTMLElement>(null)
  const firstRender = useRef(true)

  // After a navigation (not on the first load), move focus to the new page's content.
  useEffect(() => {
    if (firstRender.current) {
      firstRender.current = false
      return
    }
    main.current?.focus()
  }, [path])

  const who = `${identityOf(session)} (${t(`role.${session.role}` as MessageKey)})`
  return (
    <div className="app">
      <a className="skip-link" href="#main">
        {t('layout.skip')}
      </a>
      <header className="app-header">
        <Link to="/" className="brand">
          {t('app.name')}
        </Link>
        <div className="header-controls">
          <Preferences />
          <span className="identity">{t('layout.signedInAs', { who })}</span>
          <Button onClick={() => signOut.mutate()} busy={signOut.isPending}>
            {signOut.isPending ? t('layout.signingOut') : t('layout.signOut')}
          </Button>
        </div>
      </header>
      <nav className="app-nav" aria-label={t('layout.mainNav')}>
        {navFor(session).map((group) => (
          <div key={group.section}>
            <p className="nav-group" aria-hidden="true">
              {t(group.section)}
            </p>
            <ul>
              {group.items.map((item) => (
                <li key={item.to}>
                  <Link to={item.to} aria-current={isCurrent(item.to, path) ? 'page' : undefined}>
                    {t(item.label)}
                  </Link>
                </li>
              ))}
            </ul>
          </div>
        ))}
      </nav>
      <main id="main" ref={main} tabIndex={-1}>
        {signOut.isError ? <ErrorNotice error={signOut.error} /> : null}
        {children}
      </main>
    </div>
  )
}
